"""``convert`` through the real command: bit-exact round trips, containers, atomic and safe output."""

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import FIXTURES, assert_one_line_error, run_cli


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's raw bytes, so NaN payloads, -0.0 and subnormals compare exactly."""
    return t.contiguous().reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


def assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(_bits(a[k]), _bits(b[k])), k


@pytest.mark.parametrize("name", ["mixed", "resnet_fp16", "resnet", "vit"])
def test_pt_to_safetensors_to_pt_is_bit_exact(tmp_path, name):
    src = FIXTURES / f"{name}.pth"
    assert run_cli("convert", src, tmp_path / "a.safetensors").code == 0
    assert run_cli("convert", tmp_path / "a.safetensors", tmp_path / "b.pt").code == 0
    orig = torch.load(src, weights_only=True)
    assert_same(orig, load_file(tmp_path / "a.safetensors"))
    assert_same(orig, torch.load(tmp_path / "b.pt", weights_only=True))


def test_pt_to_pt_keeps_strides_and_sharing(tmp_path):
    assert run_cli("convert", FIXTURES / "mixed.pth", tmp_path / "m.pt").code == 0
    orig = torch.load(FIXTURES / "mixed.pth", weights_only=True)
    out = torch.load(tmp_path / "m.pt", weights_only=True)
    assert_same(orig, out)
    assert out["transposed"].stride() == orig["transposed"].stride()

    assert run_cli("convert", FIXTURES / "tied.pth", tmp_path / "t.pth").code == 0
    tied = torch.load(tmp_path / "t.pth", weights_only=True)
    assert tied["embed.weight"].data_ptr() == tied["lm_head.weight"].data_ptr()
    assert_same(torch.load(FIXTURES / "tied.pth", weights_only=True), tied)


def test_tied_to_safetensors_writes_every_name_and_says_so(tmp_path):
    res = run_cli("convert", FIXTURES / "tied.pth", tmp_path / "t.safetensors")
    assert res.code == 0
    assert "tensors sharing one storage: embed.weight, lm_head.weight" in res.out
    out = load_file(tmp_path / "t.safetensors")
    orig = torch.load(FIXTURES / "tied.pth", weights_only=True)
    assert_same(orig, out)
    back = tmp_path / "back.pt"
    assert run_cli("convert", tmp_path / "t.safetensors", back).code == 0
    assert_same(orig, torch.load(back, weights_only=True))


def test_safetensors_output_keeps_metadata_and_adds_provenance(tmp_path):
    assert (
        run_cli("convert", FIXTURES / "vit.safetensors", tmp_path / "v.safetensors", "--strip-prefix", "x.").code == 0
    )
    with safe_open(tmp_path / "v.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt"
    assert meta["ckptsurgeon_version"]
    assert json.loads(meta["ckptsurgeon_operations"]) == [[{"op": "strip-prefix", "prefix": "x."}]]


def test_training_checkpoint_writes_the_chosen_state_dict(tmp_path):
    ckpt = torch.load(FIXTURES / "train.pth", weights_only=True)
    assert run_cli("convert", FIXTURES / "train.pth", tmp_path / "ema.pt").code == 0
    assert_same(ckpt["state_dict_ema"], torch.load(tmp_path / "ema.pt", weights_only=True))
    res = run_cli("convert", FIXTURES / "train.pth", tmp_path / "sd.safetensors", "--key", "state_dict", "--json")
    assert res.code == 0
    assert res.json()["container"]["key"] == "state_dict"
    assert_same(ckpt["state_dict"], load_file(tmp_path / "sd.safetensors"))


def test_strip_prefix_ddp(tmp_path):
    res = run_cli("convert", FIXTURES / "ddp.pth", tmp_path / "p.safetensors", "--strip-prefix", "module.", "--json")
    doc = res.json()
    assert doc["counts"]["renamed"] == 74 and doc["counts"]["kept"] == 0
    assert doc["keys"][0]["source_name"] == "module.conv1.weight" and doc["keys"][0]["name"] == "conv1.weight"
    assert_same(torch.load(FIXTURES / "resnet.pth", weights_only=True), load_file(tmp_path / "p.safetensors"))


def test_sharded_and_legacy_sources(tmp_path):
    assert run_cli("convert", FIXTURES / "sharded", tmp_path / "one.safetensors").code == 0
    ref = load_file(FIXTURES / "vit.safetensors")
    out = load_file(tmp_path / "one.safetensors")
    assert sorted(ref) == sorted(out)
    assert all(torch.equal(ref[k], out[k]) for k in ref)

    sd = {"w": torch.randn(3, 4), "n": torch.tensor(5), "h": torch.randn(2).half()}
    torch.save(sd, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert run_cli("convert", tmp_path / "old.pt", tmp_path / "new.safetensors").code == 0
    assert_same(sd, load_file(tmp_path / "new.safetensors"))


def test_json_output_is_one_document_on_stdout(tmp_path):
    res = run_cli("convert", FIXTURES / "resnet.pth", tmp_path / "r.safetensors", "--json")
    assert res.code == 0 and res.err == ""
    doc = json.loads(res.out)
    assert doc["output"] == str(tmp_path / "r.safetensors")
    assert doc["output_bytes"] == os.path.getsize(tmp_path / "r.safetensors")
    assert doc["counts"] == {"kept": 74, "dropped": 0, "reshaped": 0, "added": 0, "renamed": 0, "cast": 0}
    k = doc["keys"][0]
    assert k == {
        "name": "conv1.weight",
        "action": "kept",
        "actions": ["kept"],
        "source_name": "conv1.weight",
        "before": {"shape": [16, 3, 7, 7], "dtype": "float32"},
        "after": {"shape": [16, 3, 7, 7], "dtype": "float32"},
        "detail": "",
    }


def test_report_folds_kept_unless_verbose(tmp_path):
    res = run_cli("convert", FIXTURES / "resnet.pth", tmp_path / "r.pt")
    assert "74 kept (--verbose lists them)" in res.out and "conv1.weight" not in res.out
    assert f"wrote {tmp_path / 'r.pt'}" in res.out
    res = run_cli("convert", FIXTURES / "resnet.pth", tmp_path / "r2.pt", "--verbose")
    assert "conv1.weight" in res.out


def test_existing_output_needs_force_and_is_untouched_otherwise(tmp_path):
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"precious")
    assert_one_line_error(run_cli("convert", FIXTURES / "vit.pth", dst), "out.safetensors", "exists", "--force")
    assert dst.read_bytes() == b"precious"
    assert run_cli("convert", FIXTURES / "vit.pth", dst, "--force").code == 0
    assert len(load_file(dst)) == 44


def test_output_that_is_the_input_is_refused(tmp_path):
    src = tmp_path / "m.pth"
    src.write_bytes((FIXTURES / "vit.pth").read_bytes())
    before = src.read_bytes()
    assert_one_line_error(run_cli("convert", src, src, "--force"), "m.pth", "is the input")
    os.symlink(src, tmp_path / "link.pth")
    assert_one_line_error(run_cli("convert", src, tmp_path / "link.pth", "--force"), "is the input")
    os.link(src, tmp_path / "hard.pth")
    assert_one_line_error(run_cli("convert", src, tmp_path / "hard.pth", "--force"), "is the input")
    assert_one_line_error(run_cli("convert", src, "./m.pth", "--force", cwd=tmp_path), "is the input")
    assert src.read_bytes() == before


def test_unknown_extension_and_missing_folder(tmp_path):
    assert_one_line_error(run_cli("convert", FIXTURES / "vit.pth", tmp_path / "out.ckpt"), "out.ckpt", ".safetensors")
    assert_one_line_error(run_cli("convert", FIXTURES / "vit.pth", tmp_path / "no" / "o.pt"), "folder does not exist")
    assert os.listdir(tmp_path) == []


def test_dry_run_writes_nothing(tmp_path):
    res = run_cli("convert", FIXTURES / "vit.pth", tmp_path / "v.safetensors", "--dry-run")
    assert res.code == 0 and "dry run" in res.out
    assert os.listdir(tmp_path) == []


def test_outputs_load_with_the_safe_loaders_and_leave_no_temp_files(tmp_path):
    for name in ("a.pt", "b.pth", "c.bin", "d.safetensors"):
        assert run_cli("convert", FIXTURES / "effnet.pth", tmp_path / name).code == 0
    for name in ("a.pt", "b.pth", "c.bin"):
        sd = torch.load(tmp_path / name, weights_only=True)
        assert isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "b.pth", "c.bin", "d.safetensors"]


def test_input_bytes_unchanged(tmp_path):
    before = {p.name: p.read_bytes() for p in FIXTURES.glob("*.pth")}
    for name in before:
        assert run_cli("convert", FIXTURES / name, tmp_path / (name + ".safetensors")).code == 0
    assert before == {p.name: p.read_bytes() for p in FIXTURES.glob("*.pth")}


def test_pt_output_keeps_torch_module_versions_following_renames(tmp_path):
    """Some modules (torchvision's MNASNet) read their version from the state dict's _metadata."""
    plain = torch.load(FIXTURES / "resnet.pth", weights_only=True)
    assert run_cli("convert", FIXTURES / "resnet.pth", tmp_path / "a.pt").code == 0
    assert torch.load(tmp_path / "a.pt", weights_only=True)._metadata == plain._metadata
    assert run_cli("convert", FIXTURES / "ddp.pth", tmp_path / "b.pt", "--strip-prefix", "module.").code == 0
    assert torch.load(tmp_path / "b.pt", weights_only=True)._metadata == plain._metadata
    assert run_cli("convert", FIXTURES / "resnet.pth", tmp_path / "c.pt", "--add-prefix", "backbone.").code == 0
    moved = torch.load(tmp_path / "c.pt", weights_only=True)._metadata
    assert moved == {("backbone." + k if k else "backbone"): v for k, v in plain._metadata.items()}
