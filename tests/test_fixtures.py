"""The committed checkpoint fixtures are exactly what fixtures/make_fixtures.py writes.

Also checks that each fixture model class loads its own committed state dict
with strict=True, and the cross-file relations the other tests rely on.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
SCRIPT = FIXTURES / "make_fixtures.py"
NOT_GENERATED = {"make_fixtures.py"}


def _load_script_module():
    spec = importlib.util.spec_from_file_location("_ckptsurgeon_make_fixtures", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    old = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # keep fixtures/ free of __pycache__
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.dont_write_bytecode = old
    return mod


mf = _load_script_module()


def _list_files(root: Path) -> list[str]:
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_dir() or "__pycache__" in rel.parts or p.suffix == ".pyc":
            continue
        out.append(rel.as_posix())
    return sorted(out)


COMMITTED = [f for f in _list_files(FIXTURES) if f not in NOT_GENERATED]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fixtures_regen")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _load_pt(path) -> object:
    return torch.load(path, map_location="cpu", weights_only=True)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Raw bytes of a tensor's logical contents (NaN-safe, -0.0-aware)."""
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def _assert_tensor_identical(a: torch.Tensor, b: torch.Tensor, where: str):
    assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} != {b.dtype}"
    assert a.shape == b.shape, f"{where}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert a.stride() == b.stride(), f"{where}: stride {a.stride()} != {b.stride()}"
    assert a.storage_offset() == b.storage_offset(), f"{where}: storage offset"
    assert a.requires_grad == b.requires_grad, f"{where}: requires_grad"
    assert torch.equal(_bits(a), _bits(b)), f"{where}: values differ"


def _assert_identical(a, b, where="<root>"):
    """Recursive, order-sensitive, bit-exact comparison of loaded .pth objects."""
    assert type(a) is type(b), f"{where}: type {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        _assert_tensor_identical(a, b, where)
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), f"{where}: keys/key order differ"
        assert getattr(a, "_metadata", None) == getattr(b, "_metadata", None), f"{where}: _metadata"
        for k in a:
            _assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert (a == b) or (math.isnan(a) and math.isnan(b)), f"{where}: {a!r} != {b!r}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _tensors(obj, where="<root>"):
    if isinstance(obj, torch.Tensor):
        yield where, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{where}[{i}]")


def _sharing_groups(obj) -> list[list[str]]:
    """Partition of tensor paths by shared storage (only groups of 2+)."""
    groups: dict[int, list[str]] = {}
    for where, t in _tensors(obj):
        if t.untyped_storage().nbytes() == 0:
            continue
        groups.setdefault(t.untyped_storage().data_ptr(), []).append(where)
    return sorted(g for g in groups.values() if len(g) > 1)


def _st_header(path: Path) -> dict:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n])


def _load_sd(rel: str) -> dict:
    path = FIXTURES / rel
    if rel.endswith(".safetensors"):
        return load_file(path)
    return _load_pt(path)


def _merged_shards() -> dict:
    index = json.loads((FIXTURES / "sharded" / "model.safetensors.index.json").read_text())
    sd = {}
    for shard in sorted(set(index["weight_map"].values())):
        sd.update(load_file(FIXTURES / "sharded" / shard))
    return sd


# ---------------------------------------------------------------------------
# committed == regenerated
# ---------------------------------------------------------------------------


def test_file_list_matches_script_output(regenerated):
    assert COMMITTED, "no committed fixtures found"
    assert _list_files(regenerated) == COMMITTED, "stale or missing fixture files; rerun make_fixtures.py"


@pytest.mark.parametrize("rel", COMMITTED)
def test_committed_matches_regenerated(rel, regenerated):
    ours, fresh = FIXTURES / rel, regenerated / rel
    assert fresh.exists(), f"{rel} is not written by make_fixtures.py"
    if rel.endswith(".safetensors"):
        # Semantic check first (readable failure), then bytes: the writer is deterministic.
        assert _st_header(ours) == _st_header(fresh), f"{rel}: header differs"
        with safe_open(ours, "pt") as fa, safe_open(fresh, "pt") as fb:
            assert fa.metadata() == fb.metadata()
            keys = list(fa.keys())
            assert keys == list(fb.keys())
            for k in keys:
                _assert_tensor_identical(fa.get_tensor(k), fb.get_tensor(k), f"{rel}:{k}")
        assert ours.read_bytes() == fresh.read_bytes(), f"{rel}: bytes differ"
    elif rel.endswith(".pth"):
        a, b = _load_pt(ours), _load_pt(fresh)
        _assert_identical(a, b, rel)
        assert _sharing_groups(a) == _sharing_groups(b), f"{rel}: storage sharing differs"
    else:
        assert ours.read_bytes() == fresh.read_bytes(), f"{rel}: bytes differ"


def test_script_is_deterministic_in_process(tmp_path):
    """Writing twice from the same process gives byte-identical files."""
    a = mf.write_all(tmp_path / "a")
    b = mf.write_all(tmp_path / "b")
    assert a == b == _list_files(tmp_path / "a")
    for rel in a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


# ---------------------------------------------------------------------------
# the fixture models load their own state dicts
# ---------------------------------------------------------------------------

NUM_CLASSES_OF = {"resnet_1001": 1001}

STRICT_CASES = [
    ("resnet.pth", "ResNetLike", {}),
    ("resnet.safetensors", "ResNetLike", {}),
    ("resnet_fp16.pth", "ResNetLike", {}),
    ("resnet_fp16.safetensors", "ResNetLike", {}),
    ("resnet_1001.pth", "ResNetLike", {"num_classes": 1001}),
    ("resnet_1001.safetensors", "ResNetLike", {"num_classes": 1001}),
    ("vit.pth", "ViTLike", {}),
    ("vit.safetensors", "ViTLike", {}),
    ("deit.pth", "DeiTLike", {}),
    ("deit.safetensors", "DeiTLike", {}),
    ("effnet.pth", "EffNetLike", {}),
    ("effnet.safetensors", "EffNetLike", {}),
]


@pytest.mark.parametrize("rel,cls_name,kwargs", STRICT_CASES, ids=[c[0] for c in STRICT_CASES])
def test_model_loads_committed_state_dict_strict(rel, cls_name, kwargs):
    sd = _load_sd(rel)
    model = getattr(mf, cls_name)(**kwargs)
    if "fp16" in rel:
        model = model.half()
    model.load_state_dict(sd, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(_bits(v), _bits(sd[k])), k
    if "fp16" not in rel:  # half conv is not implemented on every CPU build
        model.eval()
        with torch.no_grad():
            out = model(torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
        assert out.shape == (2, kwargs.get("num_classes", 10))
        assert torch.isfinite(out).all()


def test_models_accept_num_classes_and_in_chans():
    for name in ("ResNetLike", "ViTLike", "DeiTLike", "EffNetLike"):
        model = getattr(mf, name)(num_classes=7, in_chans=1).eval()
        with torch.no_grad():
            assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 7)


def test_ddp_loads_after_stripping_prefix():
    sd = _load_pt(FIXTURES / "ddp.pth")
    assert all(k.startswith("module.") for k in sd)
    mf.ResNetLike().load_state_dict({k[len("module.") :]: v for k, v in sd.items()}, strict=True)
    mf.DDPWrapper(mf.ResNetLike()).load_state_dict(sd, strict=True)


def test_train_checkpoint():
    ckpt = _load_pt(FIXTURES / "train.pth")
    assert list(ckpt) == ["epoch", "arch", "state_dict", "state_dict_ema", "optimizer", "args"]
    assert ckpt["epoch"] == 90 and ckpt["arch"] == "resnet_like"
    assert type(ckpt["args"]) is dict and ckpt["args"]["lr"] == ckpt["optimizer"]["param_groups"][0]["lr"]
    for key in ("state_dict", "state_dict_ema"):
        mf.ResNetLike().load_state_dict(ckpt[key], strict=True)
    sd, ema = ckpt["state_dict"], ckpt["state_dict_ema"]
    assert list(sd) == list(ema)
    for k in sd:
        if sd[k].is_floating_point():
            assert not torch.equal(sd[k], ema[k]), f"ema equals model for {k}"
    opt = ckpt["optimizer"]
    n_params = len(list(mf.ResNetLike().parameters()))
    assert sorted(i for g in opt["param_groups"] for i in g["params"]) == list(range(n_params))
    assert [g["weight_decay"] for g in opt["param_groups"]] == [0.0, ckpt["args"]["weight_decay"]]
    assert len(opt["state"]) == n_params
    assert all(isinstance(s["momentum_buffer"], torch.Tensor) for s in opt["state"].values())
    # the state dict really is "after one step" of the resnet in the same file's lineage
    assert int(sd["bn1.num_batches_tracked"]) == mf.NUM_BATCHES_TRACKED + 1


def test_tied_shares_storage():
    path = FIXTURES / "tied.pth"
    sd = _load_pt(path)
    assert list(sd) == ["embed.weight", "norm.weight", "lm_head.weight", "lm_head.bias"]
    ptr = {k: v.untyped_storage().data_ptr() for k, v in sd.items()}
    assert ptr["embed.weight"] == ptr["lm_head.weight"]
    assert len(set(ptr.values())) == 3
    with zipfile.ZipFile(path) as z:
        records = [n for n in z.namelist() if "/data/" in n and not n.endswith("/")]
    assert len(records) == 3, records
    model = mf.TiedLM()
    model.load_state_dict(sd, strict=True)
    assert model.lm_head.weight is model.embed.weight


def test_mixed_contents():
    pt = _load_pt(FIXTURES / "mixed.pth")
    st = load_file(FIXTURES / "mixed.safetensors")
    assert set(pt) == set(st)
    dtypes = {v.dtype for v in pt.values()}
    assert {
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.int8,
        torch.uint8,
        torch.bool,
    } <= dtypes
    assert any(v.dim() == 0 for v in pt.values())
    assert pt["empty"].shape == (0, 3)
    assert not pt["transposed"].is_contiguous() and st["transposed"].is_contiguous()
    for name in ("float32", "float16", "bfloat16", "float64"):
        v = pt[name].double()
        finfo = torch.finfo(pt[name].dtype)
        assert v.isnan().any() and (v == math.inf).any() and (v == -math.inf).any(), name
        assert ((v == 0) & torch.signbit(v)).any(), f"{name}: no -0.0"
        sub = (v != 0) & (v.abs() < finfo.smallest_normal)
        assert sub.any(), f"{name}: no subnormal"
    for k in pt:
        _assert_tensor_identical(pt[k].contiguous(), st[k], f"mixed:{k}")


def test_pth_and_safetensors_hold_same_tensors():
    for stem in ("resnet", "vit", "deit", "effnet", "resnet_fp16", "resnet_1001"):
        pt, st = _load_pt(FIXTURES / f"{stem}.pth"), load_file(FIXTURES / f"{stem}.safetensors")
        assert set(pt) == set(st), stem
        for k in pt:
            _assert_tensor_identical(pt[k], st[k], f"{stem}:{k}")
        with safe_open(FIXTURES / f"{stem}.safetensors", "pt") as f:
            assert f.metadata() == {"format": "pt"}


def test_derived_fixtures():
    resnet = _load_pt(FIXTURES / "resnet.pth")
    ddp = _load_pt(FIXTURES / "ddp.pth")
    assert list(ddp) == ["module." + k for k in resnet]
    for k in resnet:
        _assert_tensor_identical(ddp["module." + k], resnet[k], k)
    fp16 = _load_pt(FIXTURES / "resnet_fp16.pth")
    assert list(fp16) == list(resnet)
    for k, v in resnet.items():
        if v.is_floating_point():
            assert fp16[k].dtype == torch.float16
            assert torch.equal(fp16[k].float(), v), f"{k}: fp16 copy is not exact"
        else:
            assert fp16[k].dtype == torch.int64 and torch.equal(fp16[k], v)
    r1001 = _load_pt(FIXTURES / "resnet_1001.pth")
    assert r1001["fc.weight"].shape == (1001, 32) and r1001["fc.bias"].shape == (1001,)


def test_sharded_index():
    d = FIXTURES / "sharded"
    text = (d / "model.safetensors.index.json").read_text()
    index = json.loads(text)
    assert text == json.dumps(index, indent=2, sort_keys=True) + "\n"
    assert set(index) == {"metadata", "weight_map"}
    assert set(index["metadata"]) == {"total_size"}
    shards = sorted(set(index["weight_map"].values()))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    total = 0
    for shard in shards:
        with safe_open(d / shard, "pt") as f:
            assert f.metadata() == {"format": "pt"}
            keys = set(f.keys())
            assert keys == {k for k, s in index["weight_map"].items() if s == shard}
            for k in keys:
                t = f.get_tensor(k)
                total += t.numel() * t.element_size()
    assert index["metadata"]["total_size"] == total
    merged, vit = _merged_shards(), load_file(FIXTURES / "vit.safetensors")
    assert set(merged) == set(vit)
    for k in vit:
        _assert_tensor_identical(merged[k], vit[k], k)
    mf.ViTLike().load_state_dict(merged, strict=True)


HEAD_KEYS = {
    "resnet": {"fc.weight", "fc.bias"},
    "vit": {"head.weight", "head.bias"},
    "deit": {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"},
    "effnet": {"classifier.weight", "classifier.bias"},
}


@pytest.mark.parametrize("stem", sorted(HEAD_KEYS))
def test_class_dim_is_unambiguous(stem):
    sd = _load_pt(FIXTURES / f"{stem}.pth")
    with_10 = {k for k, v in sd.items() if 10 in v.shape}
    assert with_10 == HEAD_KEYS[stem]


def test_effnet_has_grouped_conv_with_three_input_channels_per_group():
    sd = _load_pt(FIXTURES / "effnet.pth")
    three_in = [k for k, v in sd.items() if v.dim() == 4 and v.shape[1] == 3]
    assert three_in == ["conv_stem.weight", "blocks.1.0.conv_dw.weight"]
    assert sd["blocks.1.0.conv_dw.weight"].shape == (24, 3, 3, 3)
    assert sd["blocks.0.0.conv_dw.weight"].shape == (8, 1, 3, 3)
