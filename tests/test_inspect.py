"""``inspect`` through the real command: every format and container, the JSON contract, options."""

import argparse
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import FIXTURES, assert_one_line_error, run_cli

TENSOR_KEYS = {"name", "shape", "dtype", "numel", "nbytes"}


def _expected(sd):
    return [
        {
            "name": k,
            "shape": list(v.shape),
            "dtype": str(v.dtype).removeprefix("torch."),
            "numel": v.numel(),
            "nbytes": v.numel() * v.element_size(),
        }
        for k, v in sd.items()
    ]


def test_json_contract_safetensors():
    res = run_cli("inspect", FIXTURES / "resnet.safetensors", "--json")
    assert res.code == 0 and res.err == ""
    doc = res.json()
    assert {"path", "format", "num_tensors", "num_params", "nbytes", "tensors", "metadata"} <= set(doc)
    assert doc["format"] == "safetensors"
    assert doc["metadata"] == {"format": "pt"}
    from safetensors.torch import load_file

    sd = load_file(FIXTURES / "resnet.safetensors")
    assert sorted(doc["tensors"], key=lambda t: t["name"]) == sorted(_expected(sd), key=lambda t: t["name"])
    assert all(set(t) == TENSOR_KEYS for t in doc["tensors"])
    assert doc["num_tensors"] == len(sd)
    assert doc["num_params"] == sum(v.numel() for v in sd.values())
    assert doc["nbytes"] == sum(v.numel() * v.element_size() for v in sd.values())


def test_json_pth_lists_tensors_in_file_order_with_torch_dtypes():
    doc = run_cli("inspect", FIXTURES / "mixed.pth", "--json").json()
    sd = torch.load(FIXTURES / "mixed.pth", weights_only=True)
    assert doc["format"] == "torch-zip"
    assert doc["tensors"] == _expected(sd)
    assert {t["dtype"] for t in doc["tensors"]} >= {"float32", "float16", "bfloat16", "int64", "bool", "uint8"}


def test_tied_tensors_count_once_per_name_and_are_reported():
    doc = run_cli("inspect", FIXTURES / "tied.pth", "--json").json()
    sd = torch.load(FIXTURES / "tied.pth", weights_only=True)
    assert doc["num_params"] == sum(v.numel() for v in sd.values())
    assert doc["tied"] == [["embed.weight", "lm_head.weight"]]
    text = run_cli("inspect", FIXTURES / "tied.pth").out
    assert "shared storage: embed.weight, lm_head.weight" in text


def test_training_checkpoint_picks_ema_like_timm_and_lists_the_rest():
    doc = run_cli("inspect", FIXTURES / "train.pth", "--json").json()
    ckpt = torch.load(FIXTURES / "train.pth", weights_only=True)
    assert doc["container"]["key"] == "state_dict_ema"
    assert doc["container"]["others"]["epoch"] == "90"
    n_opt = sum(1 for s in ckpt["optimizer"]["state"].values() for v in s.values() if isinstance(v, torch.Tensor))
    assert doc["container"]["others"]["optimizer"] == f"{n_opt} tensors"
    assert [t["name"] for t in doc["tensors"]] == list(ckpt["state_dict_ema"])
    text = run_cli("inspect", FIXTURES / "train.pth").out
    assert "state dict: state_dict_ema" in text and "epoch: 90" in text


def test_key_picks_explicitly_and_unknown_key_lists_keys():
    doc = run_cli("inspect", FIXTURES / "train.pth", "--key", "state_dict", "--json").json()
    assert doc["container"]["key"] == "state_dict"
    res = run_cli("inspect", FIXTURES / "train.pth", "--key", "nope")
    assert_one_line_error(res, "train.pth", "--key 'nope' not found", "state_dict_ema")


def test_strip_prefix_and_ddp_hint():
    plain = run_cli("inspect", FIXTURES / "ddp.pth", "--json").json()
    assert all(t["name"].startswith("module.") for t in plain["tensors"])
    assert any("--strip-prefix module." in n for n in plain["notes"])
    doc = run_cli("inspect", FIXTURES / "ddp.pth", "--strip-prefix", "module.", "--json").json()
    ref = run_cli("inspect", FIXTURES / "resnet.pth", "--json").json()
    assert doc["tensors"] == ref["tensors"]


def test_filter_globs_any_may_match():
    doc = run_cli("inspect", FIXTURES / "vit.pth", "--filter", "head.*", "--filter", "*token", "--json").json()
    assert [t["name"] for t in doc["tensors"]] == ["cls_token", "head.weight", "head.bias"]
    assert doc["num_tensors"] == 3 and doc["num_tensors_total"] > 3
    assert doc["num_params"] == sum(t["numel"] for t in doc["tensors"])


def test_tree_folds_numbered_blocks():
    res = run_cli("inspect", FIXTURES / "vit.safetensors", "--tree")
    assert res.code == 0
    assert "0…2 ×3" in res.out
    assert "blocks.1" not in res.out and "\n│       ├── attn" in res.out


def test_sharded_folder_and_index_read_as_one(tmp_path):
    folder = run_cli("inspect", FIXTURES / "sharded", "--json").json()
    index = run_cli("inspect", FIXTURES / "sharded" / "model.safetensors.index.json", "--json").json()
    single = run_cli("inspect", FIXTURES / "vit.safetensors", "--json").json()
    assert folder["format"] == "sharded-safetensors"
    assert folder["tensors"] == index["tensors"]
    key = lambda t: t["name"]  # noqa: E731
    assert sorted(folder["tensors"], key=key) == sorted(single["tensors"], key=key)


def test_legacy_torch_file(tmp_path):
    sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(3)}
    torch.save(sd, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    doc = run_cli("inspect", tmp_path / "old.pt", "--json").json()
    assert doc["format"] == "torch-legacy"
    assert doc["tensors"] == _expected(sd)


def test_format_detected_by_content_not_extension(tmp_path):
    (tmp_path / "weights.bin").write_bytes((FIXTURES / "resnet.safetensors").read_bytes())
    assert run_cli("inspect", tmp_path / "weights.bin", "--json").json()["format"] == "safetensors"
    (tmp_path / "model.safetensors").write_bytes((FIXTURES / "resnet.pth").read_bytes())
    assert run_cli("inspect", tmp_path / "model.safetensors", "--json").json()["format"] == "torch-zip"


def test_inspect_imports_no_torch():
    code = (
        "import sys\nfrom ckptsurgeon.cli import main\n"
        "for f in ['resnet.safetensors', 'train.pth', 'sharded']:\n"
        "    try:\n        main(['inspect', 'fixtures/' + f, '--json'])\n    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=FIXTURES.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_inspect_reads_no_tensor_data(tmp_path):
    """Overwrite every tensor byte after the header: inspect's answer cannot change."""
    src = (FIXTURES / "vit.safetensors").read_bytes()
    header_len = int.from_bytes(src[:8], "little")
    garbled = src[: 8 + header_len] + bytes(len(src) - 8 - header_len)
    (tmp_path / "g.safetensors").write_bytes(garbled)
    a = run_cli("inspect", FIXTURES / "vit.safetensors", "--json").json()
    b = run_cli("inspect", tmp_path / "g.safetensors", "--json").json()
    assert a["tensors"] == b["tensors"]


def test_pickle_needing_other_globals_is_refused_and_names_them(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=0.1)}, tmp_path / "ns.pth")
    res = run_cli("inspect", tmp_path / "ns.pth")
    assert_one_line_error(res, "ns.pth", "argparse.Namespace", "not loaded")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"", "empty"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "git lfs pointer"),
        (b"just some notes about a model\n", "text file"),
        (bytes(range(256)) * 4, "unrecognised format"),
    ],
    ids=["empty", "lfs", "text", "random"],
)
def test_not_a_checkpoint(tmp_path, content, needle):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    assert_one_line_error(run_cli("inspect", path), str(path), needle)


def test_absurd_safetensors_header_says_what_it_probably_is(tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes((10**9).to_bytes(8, "little") + b'{"a":' + bytes(100))
    assert_one_line_error(run_cli("inspect", path), "cut.safetensors", "truncated download")


def test_missing_file_and_non_checkpoint_folder(tmp_path):
    assert_one_line_error(run_cli("inspect", tmp_path / "nope.pt"), "nope.pt", "no such file")
    (tmp_path / "README.txt").write_text("hi")
    assert_one_line_error(run_cli("inspect", tmp_path), str(tmp_path), "not a checkpoint folder")


def test_usage_error_is_one_line_exit_2():
    assert_one_line_error(run_cli("inspect", FIXTURES / "resnet.pth", "--bogus"), "no such option: --bogus")


def test_safetensors_metadata_is_shown(tmp_path):
    save_file({"x": torch.zeros(2)}, tmp_path / "m.safetensors", metadata={"arch": "tiny", "note": "hello"})
    res = run_cli("inspect", tmp_path / "m.safetensors")
    assert "metadata: arch=tiny, note=hello" in res.out
    assert run_cli("inspect", tmp_path / "m.safetensors", "--json").json()["metadata"] == {
        "arch": "tiny",
        "note": "hello",
    }
