"""Key and dtype options on a writing command: --strip-prefix, --add-prefix, --rename, --select, --drop, --dtype."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from tests.conftest import FIXTURES, assert_one_line_error, run_cli

DDP = FIXTURES / "ddp.pth"
RESNET = torch.load(FIXTURES / "resnet.pth", weights_only=True)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's raw bytes, so NaN payloads and -0.0 compare exactly."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def _entries(res):
    return {e["name"]: e for e in res.json()["keys"]}


def test_strip_then_add_prefix_renames_every_key_and_keeps_values(run, tmp_path):
    out = tmp_path / "o.safetensors"
    res = run("convert", DDP, out, "--add-prefix", "backbone.", "--strip-prefix", "module.", "--json")
    assert res.code == 0, res.err
    got = load_file(out)
    assert list(got) == ["backbone." + k for k in RESNET]
    for k, v in RESNET.items():
        assert torch.equal(_bits(got["backbone." + k]), _bits(v))
    entries = _entries(res)
    fc = entries["backbone.fc.weight"]
    assert fc["action"] == "renamed" and fc["source_name"] == "module.fc.weight"
    assert res.json()["counts"]["renamed"] == len(RESNET)


def test_renames_apply_in_the_order_given(run, tmp_path):
    out = tmp_path / "o.pt"
    # The second rule only matches names the first produced.
    res = run("convert", DDP, out, "--rename", r"^module\.=>", "--rename", r"^(layer\d)\.0\.=>\1.")
    assert res.code == 0, res.err
    got = torch.load(out, weights_only=True)
    expected = [k.replace(".0.", ".", 1) if k.startswith("layer") else k for k in RESNET]
    assert list(got) == expected
    assert torch.equal(got["layer1.conv1.weight"], RESNET["layer1.0.conv1.weight"])


def test_key_options_run_in_documented_order_whatever_the_command_line_order(run, tmp_path):
    out = tmp_path / "o.safetensors"
    # Written backwards on purpose: the glob names only exist after strip → add → rename.
    res = run(
        "convert", DDP, out,
        "--dtype", "float16",
        "--drop", "net.head.bias",
        "--select", "net.head.*", "--select", "net.conv1.*",
        "--rename", r"\.fc\.=>.head.",
        "--add-prefix", "net.",
        "--strip-prefix", "module.",
        "--json",
    )  # fmt: skip
    assert res.code == 0, res.err
    assert [s["op"] for s in res.json()["steps"]] == ["strip-prefix", "add-prefix", "rename", "select", "drop", "cast"]
    got = load_file(out)
    assert list(got) == ["net.conv1.weight", "net.head.weight"]
    assert torch.equal(got["net.head.weight"], RESNET["fc.weight"].half())
    assert torch.equal(got["net.conv1.weight"], RESNET["conv1.weight"].half())


def test_rename_collision_is_an_error_naming_both_sources(tmp_path):
    out = tmp_path / "o.pt"
    res = run_cli("convert", DDP, out, "--rename", r"downsample\.\d\.=>downsample.")
    assert_one_line_error(
        res, "'module.layer2.0.downsample.0.weight'", "'module.layer2.0.downsample.1.weight'",
        "'module.layer2.0.downsample.weight'",
    )  # fmt: skip
    assert not out.exists()


def test_strip_prefix_collision_names_both(run, tmp_path):
    src = tmp_path / "s.safetensors"
    save_file({"module.w": torch.zeros(2), "w": torch.ones(2)}, src)
    res = run("convert", src, tmp_path / "o.pt", "--strip-prefix", "module.")
    assert_one_line_error(res, "'w'", "'module.w'")


def test_select_and_drop_report_dropped_keys_with_their_glob(run, tmp_path):
    out = tmp_path / "o.safetensors"
    res = run(
        "convert", FIXTURES / "resnet.safetensors", out,
        "--select", "layer1.*", "--select", "fc.*", "--drop", "*.num_batches_tracked", "--json",
    )  # fmt: skip
    assert res.code == 0, res.err
    order = list(load_file(FIXTURES / "resnet.safetensors"))  # the source's order, which the output keeps
    kept = [k for k in order if (k.startswith("layer1.") or k.startswith("fc.")) and "num_batches" not in k]
    assert list(load_file(out)) == kept
    e = _entries(res)
    assert e["conv1.weight"]["action"] == "dropped"
    assert "'layer1.*', 'fc.*'" in e["conv1.weight"]["detail"]
    assert e["layer1.0.bn1.num_batches_tracked"]["action"] == "dropped"
    assert e["layer1.0.bn1.num_batches_tracked"]["detail"] == "matched drop '*.num_batches_tracked'"
    assert res.json()["counts"]["dropped"] == len(RESNET) - len(kept)


def test_globs_are_case_sensitive_and_an_unmatched_one_is_a_note(run, tmp_path):
    out = tmp_path / "o.safetensors"
    res = run("convert", FIXTURES / "resnet.safetensors", out, "--drop", "FC.*", "--rename", "^nothing=>x")
    assert res.code == 0, res.err
    assert list(load_file(out)) == list(load_file(FIXTURES / "resnet.safetensors"))
    assert "drop note: 'FC.*' matched no name" in res.out
    assert "rename note: '^nothing=>x' matched no name; nothing renamed" in res.out


def test_select_that_leaves_nothing_is_an_error(run, tmp_path):
    out = tmp_path / "o.safetensors"
    res = run("convert", FIXTURES / "resnet.safetensors", out, "--select", "nothing.*")
    assert_one_line_error(res, "select 'nothing.*' would leave no tensors")
    assert not out.exists()


def test_dtype_casts_floating_tensors_only(run, tmp_path):
    src = FIXTURES / "mixed.safetensors"
    out = tmp_path / "o.safetensors"
    res = run("convert", src, out, "--dtype", "bfloat16", "--json")
    assert res.code == 0, res.err
    before, got = load_file(src), load_file(out)
    assert list(got) == list(before)
    entries = _entries(res)
    floats = {torch.float16, torch.float32, torch.float64}
    assert any(v.dtype == torch.bfloat16 for v in before.values())
    for k, v in before.items():
        if v.dtype in floats:
            assert got[k].dtype == torch.bfloat16, k
            assert torch.equal(_bits(got[k]), _bits(v.to(torch.bfloat16))), k
            assert entries[k]["action"] == "cast"
            assert entries[k]["detail"] == f"{str(v.dtype)[6:]} → bfloat16"
        else:  # integers, bool and tensors already bfloat16: the same bytes, not reported as cast
            assert got[k].dtype == v.dtype, k
            assert torch.equal(_bits(got[k]), _bits(v)), k
            assert entries[k]["action"] == "kept", k
    assert res.json()["counts"]["cast"] == sum(v.dtype in floats for v in before.values())


def test_dtype_to_pt_keeps_num_batches_tracked_int64(run, tmp_path):
    out = tmp_path / "o.pt"
    res = run("convert", FIXTURES / "resnet.pth", out, "--dtype", "float16")
    assert res.code == 0, res.err
    assert "cast 62 floating tensors to float16 (from 62 float32); kept 12 as they were (12 int64)" in res.out
    got = torch.load(out, weights_only=True)
    for k, v in RESNET.items():
        assert torch.equal(got[k], v.half() if v.is_floating_point() else v), k
        assert got[k].dtype == (torch.float16 if v.is_floating_point() else torch.int64)


def test_cast_of_tied_tensors_writes_each_and_says_so(run, tmp_path):
    src = FIXTURES / "tied.pth"
    out = tmp_path / "o.pt"
    res = run("convert", src, out, "--dtype", "bfloat16")
    assert res.code == 0, res.err
    assert "embed.weight, lm_head.weight shared one storage; after the cast each is written separately" in res.out
    before, got = torch.load(src, weights_only=True), torch.load(out, weights_only=True)
    for k, v in before.items():
        assert torch.equal(got[k], v.to(torch.bfloat16)), k


def test_key_options_run_before_the_commands_own_step(run, tmp_path):
    out = tmp_path / "o.safetensors"
    # adapt-head sees the renamed head ("classifier") and the cast dtype.
    res = run(
        "adapt-head", DDP, out, "--num-classes", "7", "--mode", "reinit",
        "--strip-prefix", "module.", "--rename", r"^fc\.=>classifier.", "--dtype", "bfloat16",
    )  # fmt: skip
    assert res.code == 0, res.err
    got = load_file(out)
    assert "fc.weight" not in got
    assert got["classifier.weight"].shape == (7, 32) and got["classifier.weight"].dtype == torch.bfloat16
    assert torch.equal(got["layer1.0.conv1.weight"], RESNET["layer1.0.conv1.weight"].to(torch.bfloat16))


def test_bad_key_options_fail_before_reading_anything(run, tmp_path):
    missing = tmp_path / "does-not-exist.pth"
    out = tmp_path / "o.pt"
    cases = [
        (["--rename", "abc"], ["--rename 'abc' has no '=>'", "REGEX=>REPLACEMENT"]),
        (["--rename", "(=>x"], ["rename pattern '(' is not a valid regular expression"]),
        (["--rename", r"a=>\2"], ["refers to group '2'"]),
        (["--dtype", "fp16"], ["cannot cast to 'fp16'", "float16, bfloat16, float32"]),
        (["--strip-prefix", ""], ["strip-prefix needs a non-empty prefix"]),
        (["--add-prefix", ""], ["add-prefix needs a non-empty prefix"]),
    ]
    for args, needles in cases:
        res = run("convert", missing, out, *args)
        assert_one_line_error(res, *needles)
        assert "does-not-exist" not in res.err  # the option was checked before the source was opened
