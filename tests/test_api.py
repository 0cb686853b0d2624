"""The Python API: the same pipeline as the commands, with no Typer and no printing."""

from __future__ import annotations

import inspect

import pytest
import torch
from safetensors.torch import load_file

import ckptsurgeon
from ckptsurgeon import (
    AdaptHead,
    AdaptStem,
    AddPrefix,
    Cast,
    Drop,
    Pipeline,
    Rename,
    Report,
    Select,
    StripPrefix,
    SurgeonError,
    load_recipe,
)
from ckptsurgeon.cli import main
from tests.conftest import FIXTURES, ROOT, fixture_models

DDP = FIXTURES / "ddp.pth"
GRAY7 = ROOT / "examples" / "recipes" / "ddp-to-gray-7class.toml"


mf = fixture_models()


def cli(*args) -> None:
    """Run the real command in-process; fail the test unless it exits 0."""
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        assert e.code in (0, None), e.code


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(bits(a[k]), bits(b[k])), k


def steps():
    return [
        StripPrefix("module."),
        AdaptHead(num_classes=7, mode="reinit", seed=0),
        AdaptStem(in_chans=1),
        Cast("bfloat16"),
    ]


def test_pipeline_equals_the_same_steps_as_separate_commands(tmp_path, capsys):
    a, b, c, d = (tmp_path / f"{n}.safetensors" for n in "abcd")
    cli("convert", DDP, a, "--strip-prefix", "module.")
    cli("adapt-head", a, b, "--num-classes", "7", "--mode", "reinit", "--seed", "0")
    cli("adapt-stem", b, c, "--in-chans", "1")
    cli("convert", c, d, "--dtype", "bfloat16")
    capsys.readouterr()

    out = tmp_path / "api.safetensors"
    report = Pipeline(steps()).run(DDP, out)
    assert capsys.readouterr() == ("", "")  # the library never prints
    assert_same_tensors(load_file(out), load_file(d))
    assert isinstance(report, Report)
    assert report.output == str(out) and report.output_format == "safetensors"
    assert [s.op for s in report.steps] == ["strip-prefix", "adapt-head", "adapt-stem", "cast"]
    # Each key has one headline action: the 3 reshaped tensors were cast too, which their actions list shows.
    assert report.counts()["reshaped"] == 3 and report.counts()["cast"] == 62 - 3
    fc = next(e for e in report.entries if e.name == "fc.weight")
    assert fc.actions == ["renamed", "reshaped", "cast"] and fc.after.dtype == "bfloat16"


def test_state_dict_in_memory_equals_the_written_file_and_loads_into_the_model(tmp_path):
    sd = Pipeline(steps()).state_dict(DDP)
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "o.safetensors"
    Pipeline(steps()).run(DDP, out)
    assert_same_tensors(sd, load_file(out))
    model = mf.ResNetLike(num_classes=7, in_chans=1).to(torch.bfloat16)
    model.load_state_dict(sd, strict=True)
    assert torch.equal(model.conv1.weight.detach(), sd["conv1.weight"])


def test_recipe_from_python_writes_the_same_file_as_the_run_command(tmp_path):
    via_cli, via_api = tmp_path / "cli.safetensors", tmp_path / "api.safetensors"
    cli("run", GRAY7, DDP, via_cli)
    recipe = load_recipe(GRAY7)
    report = recipe.run(DDP, via_api)
    assert via_api.read_bytes() == via_cli.read_bytes()
    assert report.counts()["reshaped"] == 3
    # The recipe is a Pipeline: its steps are the public transforms, usable on their own.
    assert [type(s) for s in recipe.steps] == [StripPrefix, AdaptHead, AdaptStem]
    assert_same_tensors(recipe.state_dict(DDP), load_file(via_api))


def test_dry_run_and_no_destination_write_nothing(tmp_path):
    out = tmp_path / "o.pt"
    report = Pipeline([Select("module.fc.*")]).run(DDP, out, dry_run=True)
    assert not out.exists() and report.dry_run
    report = Pipeline([Drop(["*.num_batches_tracked"])]).run(DDP)
    assert report.counts()["dropped"] == 12 and report.output is None


def test_key_transforms_from_python(tmp_path):
    sd = Pipeline([StripPrefix("module."), Rename(r"^layer(\d)\.0\.", r"stage\1."), AddPrefix("net.")]).state_dict(DDP)
    plain = torch.load(FIXTURES / "resnet.pth", weights_only=True)
    assert torch.equal(sd["net.stage1.conv1.weight"], plain["layer1.0.conv1.weight"])
    assert len(sd) == len(plain) and all(k.startswith("net.") for k in sd)


def test_errors_raise_surgeon_error_and_print_nothing(tmp_path, capsys):
    with pytest.raises(SurgeonError, match="'module.layer2.0.downsample.0.weight' and 'module.layer2.0.downsample.1"):
        Pipeline([Rename(r"downsample\.\d", "ds")]).run(DDP, tmp_path / "o.pt")
    with pytest.raises(SurgeonError, match="cannot cast to 'int8'"):
        Cast("int8")
    assert capsys.readouterr() == ("", "")
    assert list(tmp_path.iterdir()) == []


def test_public_names_are_exported_typed_and_documented():
    expected = {
        "Pipeline", "Report", "Checkpoint", "TensorRef", "State", "Transform", "SurgeonError", "open_checkpoint",
        "StripPrefix", "AddPrefix", "Rename", "Select", "Drop", "Cast", "AdaptHead", "AdaptStem", "load_recipe",
        "Recipe", "__version__",
    }  # fmt: skip
    assert set(ckptsurgeon.__all__) == expected
    for name in expected - {"__version__"}:
        assert getattr(ckptsurgeon, name).__doc__, name
    with_examples = [Pipeline, Pipeline.state_dict, load_recipe, ckptsurgeon.Recipe,
                     ckptsurgeon.open_checkpoint, ckptsurgeon.SurgeonError,
                     StripPrefix, AddPrefix, Rename, Select, Drop, Cast, AdaptHead, AdaptStem]  # fmt: skip
    for obj in with_examples:
        doc = obj.__doc__ or ""
        assert "Example" in doc or ">>>" in doc, obj
    for fn in (Pipeline.run, Pipeline.state_dict, load_recipe, ckptsurgeon.open_checkpoint):
        sig = inspect.signature(fn)
        assert sig.return_annotation is not inspect.Signature.empty, fn
        assert all(p.annotation is not inspect.Parameter.empty for n, p in sig.parameters.items() if n != "self"), fn
