"""adapt-head: timm's drop rule, the background row, reinit / extend / keep-classes, detection, errors.

Most cases run the real command in-process (``main(argv)``, the console script's entry point) to
stay fast; a few go through a subprocess as a user's shell would. Expected tensors are computed
here with plain torch ops on the fixture files.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ckptsurgeon import Pipeline
from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.formats import open_checkpoint
from ckptsurgeon.transforms.head import AdaptHead, parse_class_file, parse_class_spec
from tests.conftest import FIXTURES, assert_one_line_error, fixture_models, run_cli
from tests.tensors import assert_rest_bit_exact, assert_same, load

mf = fixture_models()


def stream(seed: int, prefix: str) -> torch.Generator:
    """The documented per-head stream: sha256 of '{seed}:{prefix}', first 8 bytes little-endian, >> 1."""
    s = int.from_bytes(hashlib.sha256(f"{seed}:{prefix}".encode()).digest()[:8], "little") >> 1
    return torch.Generator().manual_seed(s)


def torch_default_rows(seed: int, prefix: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """What nn.Linear/nn.Conv2d.reset_parameters draw, from the head's stream: weight, then bias."""
    g = stream(seed, prefix)
    w = torch.empty(shape)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)
    bound = 1 / math.sqrt(math.prod(shape[1:]))
    b = torch.empty(shape[0]).uniform_(-bound, bound, generator=g)
    return w, b


RESNET_HEAD = {"fc.weight", "fc.bias"}
DEIT_HEADS = {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}


class SqueezeLike(nn.Module):
    """SqueezeNet's layout: the classifier is a 1x1 conv at ``classifier.1`` (weight [N, C, 1, 1])."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(), nn.Conv2d(16, 24, 3), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(), nn.Conv2d(24, num_classes, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))


@pytest.fixture(scope="module")
def squeeze(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("squeeze") / "squeeze.safetensors"
    save_file({k: v.contiguous() for k, v in SqueezeLike(10).state_dict().items()}, path)
    return path


# --- drop: timm parity ------------------------------------------------------------------------------


def test_drop_removes_head_keeps_everything_else_bit_exact(run, tmp_path):
    dst = tmp_path / "r7.safetensors"
    res = run("adapt-head", FIXTURES / "resnet.safetensors", dst, "--num-classes", 7, "--json")
    assert res.code == 0, res.err
    src, out = load(FIXTURES / "resnet.safetensors"), load(dst)
    assert RESNET_HEAD.isdisjoint(out)
    assert_rest_bit_exact(src, out, RESNET_HEAD)
    result = mf.ResNetLike(num_classes=7).load_state_dict(out, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    doc = res.json()
    assert {k["name"]: k["action"] for k in doc["keys"] if k["action"] != "kept"} == {
        "fc.weight": "dropped",
        "fc.bias": "dropped",
    }
    (head,) = doc["steps"][-1]["facts"]["heads"]
    assert (head["prefix"], head["kind"], head["old_classes"], head["new_classes"], head["mode"]) == (
        "fc",
        "linear",
        10,
        7,
        "drop",
    )
    assert head["reason"] and head["source_rows"] is None


def test_drop_two_heads_pth_to_pt(run, tmp_path):
    dst = tmp_path / "d7.pt"
    res = run("adapt-head", FIXTURES / "deit.pth", dst, "-n", 7)
    assert res.code == 0, res.err
    src, out = load(FIXTURES / "deit.pth"), load(dst)
    assert DEIT_HEADS.isdisjoint(out)
    assert_rest_bit_exact(src, out, DEIT_HEADS)
    result = mf.DeiTLike(num_classes=7).load_state_dict(out, strict=False)
    assert sorted(result.missing_keys) == sorted(DEIT_HEADS) and not result.unexpected_keys


def test_background_row_removed_1001_to_1000(tmp_path):
    dst = tmp_path / "r1000.safetensors"
    res = run_cli("adapt-head", FIXTURES / "resnet_1001.safetensors", dst, "--num-classes", "1000")
    assert res.code == 0, res.err
    src, out = load(FIXTURES / "resnet_1001.safetensors"), load(dst)
    assert_same(out["fc.weight"], src["fc.weight"][1:].contiguous())
    assert_same(out["fc.bias"], src["fc.bias"][1:].contiguous())
    assert_rest_bit_exact(src, out, RESNET_HEAD)
    mf.ResNetLike(num_classes=1000).load_state_dict(out, strict=True)
    assert "1001 → 1000 classes" in res.out and "background row 0 removed" in res.out
    assert "reshaped" in res.out


def test_label_offset_picks_rows(run, tmp_path):
    src = load(FIXTURES / "resnet_1001.safetensors")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert run("adapt-head", FIXTURES / "resnet_1001.safetensors", a, "-n", 500, "--label-offset", 1).code == 0
    assert run("adapt-head", FIXTURES / "resnet_1001.safetensors", b, "-n", 1000, "--label-offset", 0).code == 0
    assert_same(load(a)["fc.weight"], src["fc.weight"][1:501].contiguous())
    assert_same(load(a)["fc.bias"], src["fc.bias"][1:501].contiguous())
    assert_same(load(b)["fc.weight"], src["fc.weight"][:1000].contiguous())
    assert_same(load(b)["fc.bias"], src["fc.bias"][:1000].contiguous())


def test_same_count_says_nothing_to_change_and_still_writes(tmp_path):
    dst = tmp_path / "same.safetensors"
    res = run_cli("adapt-head", FIXTURES / "resnet.safetensors", dst, "--num-classes", "10")
    assert res.code == 0, res.err
    assert "nothing to change" in res.out
    src, out = load(FIXTURES / "resnet.safetensors"), load(dst)
    assert_rest_bit_exact(src, out, set())


def test_dry_run_writes_nothing(run, tmp_path):
    dst = tmp_path / "never.safetensors"
    res = run("adapt-head", FIXTURES / "resnet.safetensors", dst, "-n", 10, "--dry-run", "--json")
    assert res.code == 0 and not dst.exists()
    assert res.json()["steps"][-1]["facts"]["changed"] is False


def test_untouched_tensors_are_not_decoded():
    ckpt = open_checkpoint(str(FIXTURES / "resnet.safetensors"))
    state, _ = Pipeline([AdaptHead(10, mode="reinit")]).apply(ckpt)
    for name, ref in ckpt.tensors.items():
        if name not in RESNET_HEAD:
            assert state.tensors[name] is ref, name


# --- reinit -----------------------------------------------------------------------------------------


def test_reinit_torch_default_loads_strict_with_expected_values(run, tmp_path):
    dst = tmp_path / "v7.safetensors"
    res = run("adapt-head", FIXTURES / "vit.safetensors", dst, "-n", 7, "--mode", "reinit", "--seed", 3)
    assert res.code == 0, res.err
    src, out = load(FIXTURES / "vit.safetensors"), load(dst)
    w, b = torch_default_rows(3, "head", (7, 24))
    assert_same(out["head.weight"], w)
    assert_same(out["head.bias"], b)
    assert out["head.weight"].abs().max() <= 1 / math.sqrt(24)
    assert_rest_bit_exact(src, out, {"head.weight", "head.bias"})
    mf.ViTLike(num_classes=7).load_state_dict(out, strict=True)


def test_reinit_same_seed_same_bits_heads_get_own_streams(run, tmp_path):
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for p, seed in zip(paths, (5, 5, 6), strict=True):
        assert (
            run("adapt-head", FIXTURES / "deit.safetensors", p, "-n", 4, "--mode", "reinit", "--seed", seed).code == 0
        )
    a, b, c = (load(p) for p in paths)
    for k in DEIT_HEADS:
        assert_same(a[k], b[k], k)
        assert not torch.equal(a[k], c[k]), k
    assert not torch.equal(a["head.weight"], a["head_dist.weight"])
    mf.DeiTLike(num_classes=4).load_state_dict(a, strict=True)


def test_reinit_keeps_fp16_dtype(run, tmp_path):
    dst = tmp_path / "h.pt"
    assert run("adapt-head", FIXTURES / "resnet_fp16.pth", dst, "-n", 3, "--mode", "reinit").code == 0
    out = load(dst)
    w, b = torch_default_rows(0, "fc", (3, 32))
    assert_same(out["fc.weight"], w.half())
    assert_same(out["fc.bias"], b.half())
    mf.ResNetLike(num_classes=3).half().load_state_dict(out, strict=True)


@pytest.mark.parametrize(
    ("init", "std", "check"),
    [
        ("zeros", None, lambda w: bool((w == 0).all())),
        ("normal", 0.5, lambda w: abs(w.std().item() - 0.5) < 0.025 and w.abs().max() > 1.0),
        ("normal", None, lambda w: abs(w.std().item() - 0.01) < 0.0005),
        ("trunc-normal", None, lambda w: w.abs().max() <= 0.04 and w.abs().max() > 0.038),
        ("trunc-normal", 1.0, lambda w: w.abs().max() <= 2.0 and abs(w.std().item() - 0.88) < 0.03),
    ],
)
def test_extend_inits(run, tmp_path, init, std, check):
    """New rows per --init (400 new rows x 32); biases of new rows are zero except with torch-default."""
    dst = tmp_path / "e.safetensors"
    args = ["--std", std] if std is not None else []
    res = run("adapt-head", FIXTURES / "resnet.safetensors", dst, "-n", 410, "--mode", "extend", "--init", init, *args)
    assert res.code == 0, res.err
    src, out = load(FIXTURES / "resnet.safetensors"), load(dst)
    assert_same(out["fc.weight"][:10], src["fc.weight"])
    assert_same(out["fc.bias"][:10], src["fc.bias"])
    assert check(out["fc.weight"][10:])
    assert bool((out["fc.bias"][10:] == 0).all())
    mf.ResNetLike(num_classes=410).load_state_dict(out, strict=True)


# --- extend -----------------------------------------------------------------------------------------


def test_extend_appends_torch_default_rows(run, tmp_path):
    dst = tmp_path / "e12.safetensors"
    res = run("adapt-head", FIXTURES / "effnet.safetensors", dst, "-n", 12, "--mode", "extend", "--json")
    assert res.code == 0, res.err
    src, out = load(FIXTURES / "effnet.safetensors"), load(dst)
    w, b = torch_default_rows(0, "classifier", (2, 48))
    assert_same(out["classifier.weight"], torch.cat([src["classifier.weight"], w]))
    assert_same(out["classifier.bias"], torch.cat([src["classifier.bias"], b]))
    assert_rest_bit_exact(src, out, {"classifier.weight", "classifier.bias"})
    mf.EffNetLike(num_classes=12).load_state_dict(out, strict=True)
    (head,) = res.json()["steps"][-1]["facts"]["heads"]
    assert head["source_rows"] == list(range(10)) + [None, None]
    assert head["rows"] == "all 10 pretrained rows kept + 2 new rows (torch-default, seed 0)"


def test_extend_with_label_offset_skips_background(run, tmp_path):
    dst = tmp_path / "e.safetensors"
    res = run(
        "adapt-head",
        FIXTURES / "resnet_1001.safetensors",
        dst,
        "-n",
        1003,
        "--mode",
        "extend",
        "--label-offset",
        1,
        "--init",
        "zeros",
    )
    assert res.code == 0, res.err
    src, out = load(FIXTURES / "resnet_1001.safetensors"), load(dst)
    assert_same(out["fc.weight"], torch.cat([src["fc.weight"][1:], torch.zeros(3, 32)]))
    assert_same(out["fc.bias"], torch.cat([src["fc.bias"][1:], torch.zeros(3)]))


# --- keep-classes -----------------------------------------------------------------------------------


def test_keep_classes_in_given_order(run, tmp_path):
    dst = tmp_path / "k.safetensors"
    res = run("adapt-head", FIXTURES / "resnet.safetensors", dst, "--keep-classes", "9,0,3-5", "--json")
    assert res.code == 0, res.err
    src, out = load(FIXTURES / "resnet.safetensors"), load(dst)
    idx = [9, 0, 3, 4, 5]
    assert_same(out["fc.weight"], src["fc.weight"][idx])
    assert_same(out["fc.bias"], src["fc.bias"][idx])
    assert_rest_bit_exact(src, out, RESNET_HEAD)
    mf.ResNetLike(num_classes=5).load_state_dict(out, strict=True)
    (head,) = res.json()["steps"][-1]["facts"]["heads"]
    assert (head["mode"], head["new_classes"], head["source_rows"]) == ("keep-classes", 5, idx)


def test_keep_classes_file_names_go_to_safetensors_metadata(run, tmp_path):
    spec = tmp_path / "classes.txt"
    spec.write_text("# mine\n7 tench fish\n\n2\tgoldfish\n", encoding="utf-8")
    dst = tmp_path / "k.safetensors"
    res = run("adapt-head", FIXTURES / "deit.pth", dst, "--keep-classes", f"@{spec}", "-n", 2)
    assert res.code == 0, res.err
    out = load(dst)
    with safe_open(dst, "pt") as f:
        assert json.loads(f.metadata()["class_names"]) == ["tench fish", "goldfish"]
    src = load(FIXTURES / "deit.pth")
    for p in ("head", "head_dist"):
        assert_same(out[f"{p}.weight"], src[f"{p}.weight"][[7, 2]])
    mf.DeiTLike(num_classes=2).load_state_dict(out, strict=True)
    assert "2 class names go to the output metadata as 'class_names' (.safetensors outputs only)" in " ".join(
        res.out.split()
    )


def test_keep_classes_names_to_pt_says_they_are_not_stored(run, tmp_path):
    spec = tmp_path / "c.txt"
    spec.write_text("1 a\n2 b\n", encoding="utf-8")
    res = run("adapt-head", FIXTURES / "resnet.pth", tmp_path / "k.pt", "--keep-classes", f"@{spec}")
    assert res.code == 0
    assert "class names were not stored" in res.err and ".pt output holds tensors only" in res.err
    assert set(load(tmp_path / "k.pt")) == set(load(FIXTURES / "resnet.pth"))


def test_keep_classes_with_label_offset_and_extend(run, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    src = load(FIXTURES / "resnet_1001.safetensors")
    assert (
        run("adapt-head", FIXTURES / "resnet_1001.safetensors", a, "--keep-classes", "0,999", "--label-offset", 1).code
        == 0
    )
    assert_same(load(a)["fc.weight"], src["fc.weight"][[1, 1000]])
    res = run(
        "adapt-head",
        FIXTURES / "resnet.safetensors",
        b,
        "--keep-classes",
        "3,1",
        "-n",
        4,
        "--mode",
        "extend",
        "--init",
        "zeros",
    )
    assert res.code == 0, res.err
    r = load(FIXTURES / "resnet.safetensors")
    assert_same(load(b)["fc.weight"], torch.cat([r["fc.weight"][[3, 1]], torch.zeros(2, 32)]))
    mf.ResNetLike(num_classes=4).load_state_dict(load(b), strict=True)


def test_class_names_metadata_follows_later_row_selection(run, tmp_path):
    spec = tmp_path / "c.txt"
    spec.write_text("5 five\n6 six\n7 seven\n8 eight\n", encoding="utf-8")
    first, second, third = (tmp_path / f"{i}.safetensors" for i in range(3))
    assert run("adapt-head", FIXTURES / "resnet.safetensors", first, "--keep-classes", f"@{spec}").code == 0
    assert run("adapt-head", first, second, "--keep-classes", "2,0").code == 0
    assert run("adapt-head", first, third, "-n", 5).code == 0
    with safe_open(second, "pt") as f:
        assert json.loads(f.metadata()["class_names"]) == ["seven", "five"]
    with safe_open(third, "pt") as f:
        assert "class_names" not in f.metadata()


# --- detection and --head ---------------------------------------------------------------------------


def test_conv1x1_head_squeezenet(run, squeeze, tmp_path):
    src = load(squeeze)
    keep, reinit = tmp_path / "k.safetensors", tmp_path / "r.safetensors"
    res = run("adapt-head", squeeze, keep, "--keep-classes", "4,2", "--json")
    assert res.code == 0, res.err
    (head,) = res.json()["steps"][-1]["facts"]["heads"]
    assert (head["prefix"], head["kind"]) == ("classifier.1", "conv1x1")
    assert_same(load(keep)["classifier.1.weight"], src["classifier.1.weight"][[4, 2]])
    assert run("adapt-head", squeeze, reinit, "-n", 3, "--mode", "reinit").code == 0
    out = load(reinit)
    w, b = torch_default_rows(0, "classifier.1", (3, 24, 1, 1))
    assert_same(out["classifier.1.weight"], w)
    assert_same(out["classifier.1.bias"], b)
    assert_rest_bit_exact(src, out, {"classifier.1.weight", "classifier.1.bias"})
    SqueezeLike(3).load_state_dict(out, strict=True)


@pytest.mark.parametrize(
    ("fixture", "heads"),
    [
        ("resnet.safetensors", ["fc"]),
        ("vit.safetensors", ["head"]),
        ("deit.safetensors", ["head", "head_dist"]),
        ("effnet.safetensors", ["classifier"]),  # not conv_head [48, 16, 1, 1], not the SE 1x1 convs
        ("sharded", ["head"]),
    ],
)
def test_detects_each_head_kind_and_only_it(run, tmp_path, fixture, heads):
    res = run("adapt-head", FIXTURES / fixture, tmp_path / "o.safetensors", "-n", 3, "--dry-run", "--json")
    assert res.code == 0, res.err
    doc = res.json()
    assert [h["prefix"] for h in doc["steps"][-1]["facts"]["heads"]] == heads
    dropped = sorted(k["name"] for k in doc["keys"] if k["action"] == "dropped")
    assert dropped == sorted(f"{h}.{p}" for h in heads for p in ("weight", "bias"))


def test_human_report_names_heads_and_why(tmp_path):
    res = run_cli("adapt-head", FIXTURES / "deit.safetensors", tmp_path / "o.safetensors", "-n", 5, "--dry-run")
    assert res.code == 0, res.err
    assert "found head (linear, weight [10, 24])" in res.out
    assert "found head_dist (linear, weight [10, 24])" in res.out
    assert "head_dist: 10 → 5 classes, mode drop: removed; the model's own init fills it" in res.out


def test_head_option_adapts_only_that_head(run, tmp_path):
    dst = tmp_path / "o.safetensors"
    res = run("adapt-head", FIXTURES / "deit.safetensors", dst, "-n", 2, "--head", "head_dist", "--mode", "reinit")
    assert res.code == 0, res.err
    src, out = load(FIXTURES / "deit.safetensors"), load(dst)
    w, b = torch_default_rows(0, "head_dist", (2, 24))
    assert_same(out["head_dist.weight"], w)
    assert_same(out["head_dist.bias"], b)
    assert_rest_bit_exact(src, out, {"head_dist.weight", "head_dist.bias"})


def test_key_options_pass_through(run, tmp_path):
    dst = tmp_path / "o.safetensors"
    res = run("adapt-head", FIXTURES / "ddp.pth", dst, "--strip-prefix", "module.", "-n", 7)
    assert res.code == 0, res.err
    src, out = load(FIXTURES / "resnet.pth"), load(dst)
    assert_rest_bit_exact(src, out, RESNET_HEAD)
    assert RESNET_HEAD.isdisjoint(out)
    res = run("adapt-head", FIXTURES / "train.pth", tmp_path / "t.pt", "--key", "state_dict", "-n", 7, "--json")
    assert res.code == 0, res.err
    train = torch.load(FIXTURES / "train.pth", map_location="cpu", weights_only=True)["state_dict"]
    assert_rest_bit_exact(train, load(tmp_path / "t.pt"), RESNET_HEAD)


def test_python_api_state_dict():
    sd = Pipeline([AdaptHead(5, mode="reinit", seed=2)]).state_dict(FIXTURES / "vit.pth")
    mf.ViTLike(num_classes=5).load_state_dict(sd, strict=True)
    assert AdaptHead(5, mode="reinit", seed=2).params() == {
        "num_classes": 5,
        "mode": "reinit",
        "heads": None,
        "label_offset": None,
        "keep_classes": None,
        "class_names": None,
        "init": "torch-default",
        "std": None,
        "seed": 2,
    }


def test_parse_specs():
    assert parse_class_spec("0, 5,10-12") == [0, 5, 10, 11, 12]
    assert parse_class_file("3 gold fish\n7\tcock\n") == ([3, 7], ["gold fish", "cock"])
    assert parse_class_file("3\n7\n") == ([3, 7], None)
    for bad in ("", "1,,2", "a", "-1", "3-1", "1.5"):
        with pytest.raises(SurgeonError):
            parse_class_spec(bad)
    with pytest.raises(SurgeonError, match="has no name"):
        parse_class_file("3 a\n4\n")


# --- bad input: exit 2, one line, nothing written ---------------------------------------------------


@pytest.mark.parametrize(
    ("src", "args", "needles"),
    [
        ("resnet.safetensors", ["-n", "0"], ["--num-classes", "positive"]),
        ("resnet.safetensors", ["-n", "-3"], ["--num-classes", "positive"]),
        ("resnet.safetensors", ["-n", "abc"], ["--num-classes", "valid integer"]),
        ("resnet.safetensors", ["-n", "2.5"], ["--num-classes"]),
        ("resnet.safetensors", [], ["class count is missing"]),
        ("resnet.safetensors", ["-n", "3", "--mode", "shrink"], ["unknown mode", "drop, reinit or extend"]),
        ("resnet.safetensors", ["-n", "3", "--mode", "reinit", "--init", "xavier"], ["unknown init", "trunc-normal"]),
        ("resnet.safetensors", ["-n", "3", "--mode", "reinit", "--std", "0.1"], ["--std", "torch-default"]),
        (
            "resnet.safetensors",
            ["-n", "3", "--mode", "reinit", "--init", "normal", "--std", "0"],
            ["--std", "positive"],
        ),
        ("resnet.safetensors", ["-n", "3", "--init", "zeros"], ["--init", "--mode drop makes none"]),
        ("resnet.safetensors", ["-n", "3", "--mode", "reinit", "--label-offset", "1"], ["--label-offset", "reinit"]),
        ("resnet.safetensors", ["-n", "3", "--label-offset", "-1"], ["--label-offset", ">= 0"]),
        ("resnet.safetensors", ["-n", "8", "--label-offset", "3"], ["needs rows 3:11", "head has 10"]),
        ("resnet.safetensors", ["-n", "5", "--mode", "extend"], ["extend", "cannot make 5"]),
        ("resnet.safetensors", ["--keep-classes", "1,10"], ["class 10", "out of range", "10 rows"]),
        ("resnet.safetensors", ["--keep-classes", "1,2,1"], ["class 1 is given twice"]),
        ("resnet.safetensors", ["--keep-classes", "1-x"], ["'1-x'", "not an index"]),
        ("resnet.safetensors", ["--keep-classes", "5-2"], ["backwards"]),
        ("resnet.safetensors", ["--keep-classes", "1,2", "-n", "3"], ["--num-classes 3", "keeps 2"]),
        ("resnet.safetensors", ["--keep-classes", "1", "--mode", "reinit"], ["--keep-classes", "reinit"]),
        ("resnet.safetensors", ["--keep-classes", "@/nonexistent/classes.txt"], ["classes.txt", "not found"]),
        ("resnet.safetensors", ["-n", "3", "--head", "fcc"], ["fcc", "fc"]),
        ("resnet.safetensors", ["-n", "3", "--head", "layer1.0.conv1"], ["layer1.0.conv1"]),
        ("mixed.safetensors", ["-n", "3"], ["head"]),
    ],
)
def test_bad_input_exit_2_one_line_nothing_written(run, tmp_path, src, args, needles):
    dst = tmp_path / "o.safetensors"
    res = run("adapt-head", FIXTURES / src, dst, *args)
    assert_one_line_error(res, *needles)
    assert not res.out and not dst.exists()


def test_heads_that_disagree_are_refused_and_listed(run, tmp_path):
    sd = load(FIXTURES / "deit.safetensors")
    sd["head_dist.weight"], sd["head_dist.bias"] = sd["head_dist.weight"][:7].clone(), sd["head_dist.bias"][:7].clone()
    src = tmp_path / "odd.safetensors"
    save_file(sd, src)
    dst = tmp_path / "o.safetensors"
    res = run("adapt-head", src, dst, "-n", 3, "--head", "head", "--head", "head_dist")
    assert_one_line_error(res, "disagree", "head [10, 24]", "head_dist [7, 24]")
    assert not dst.exists()
    res = run("adapt-head", src, dst, "-n", 3)
    assert_one_line_error(res, "disagree", "head [10, 24]", "head_dist [7, 24]")
    assert not dst.exists()


def test_bad_input_through_a_real_subprocess(tmp_path):
    dst = tmp_path / "o.safetensors"
    res = run_cli("adapt-head", FIXTURES / "resnet.safetensors", dst, "--num-classes", "0")
    assert_one_line_error(res, "--num-classes must be a positive integer")
    assert not dst.exists()
