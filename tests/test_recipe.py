"""Recipes: ``ckptsurgeon run RECIPE SRC DST``, validation before any read, and the example recipes.

Most cases run the real command in-process (``main(argv)``, the console script's entry point) to
stay fast; one goes through a subprocess as a user's shell would.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ckptsurgeon.recipe import OPS
from tests.conftest import FIXTURES, ROOT, assert_one_line_error, fixture_models, run_cli

RECIPES = ROOT / "examples" / "recipes"
GRAY7 = RECIPES / "ddp-to-gray-7class.toml"
RELEASE = RECIPES / "ema-to-bf16-release.toml"
RESNET = torch.load(FIXTURES / "resnet.pth", weights_only=True)
TRAIN = torch.load(FIXTURES / "train.pth", weights_only=True)


mf = fixture_models()


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def torch_default_head(seed: int, prefix: str, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """adapt-head's documented reinit: nn.Linear's init drawn from sha256('{seed}:{prefix}')."""
    s = int.from_bytes(hashlib.sha256(f"{seed}:{prefix}".encode()).digest()[:8], "little") >> 1
    g = torch.Generator().manual_seed(s)
    w = torch.empty(shape)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)
    bound = 1 / math.sqrt(shape[1])
    return w, torch.empty(shape[0]).uniform_(-bound, bound, generator=g)


# --- the example recipes ---------------------------------------------------------------------------


def test_example_ddp_to_gray_7class(run, tmp_path):
    out = tmp_path / "gray7.safetensors"
    res = run("run", GRAY7, FIXTURES / "ddp.pth", out, "--json")
    assert res.code == 0, res.err
    doc = res.json()
    assert [s["op"] for s in doc["steps"]] == ["strip-prefix", "adapt-head", "adapt-stem"]
    got = load_file(out)
    assert list(got) == list(RESNET)
    assert torch.equal(got["conv1.weight"], RESNET["conv1.weight"].sum(dim=1, keepdim=True))
    w, b = torch_default_head(0, "fc", (7, 32))
    assert torch.equal(bits(got["fc.weight"]), bits(w)) and torch.equal(bits(got["fc.bias"]), bits(b))
    for k, v in RESNET.items():
        if k not in ("conv1.weight", "fc.weight", "fc.bias"):
            assert torch.equal(bits(got[k]), bits(v)), k
    mf.ResNetLike(num_classes=7, in_chans=1).load_state_dict(got, strict=True)
    with safe_open(out, "pt") as f:
        ops = json.loads(f.metadata()["ckptsurgeon_operations"])[-1]
    assert ops == [step["params"] | {"op": step["op"]} for step in doc["steps"]]


def test_example_ema_to_bf16_release(run, tmp_path):
    out = tmp_path / "release.safetensors"
    res = run("run", RELEASE, FIXTURES / "train.pth", out)
    assert res.code == 0, res.err
    assert "state_dict_ema" in res.out
    ema = TRAIN["state_dict_ema"]
    got = load_file(out)
    assert sorted(got) == sorted(ema)
    for k, v in ema.items():
        want = v.to(torch.bfloat16) if v.is_floating_point() else v
        assert got[k].dtype == want.dtype and torch.equal(bits(got[k]), bits(want)), k
    assert not torch.equal(got["fc.weight"], TRAIN["state_dict"]["fc.weight"].to(torch.bfloat16))  # EMA, not live


def test_command_line_key_wins_over_the_recipes(run, tmp_path):
    out = tmp_path / "o.safetensors"
    assert run("run", RELEASE, FIXTURES / "train.pth", out, "--key", "state_dict").code == 0
    assert torch.equal(load_file(out)["fc.weight"], TRAIN["state_dict"]["fc.weight"].to(torch.bfloat16))


def test_example_recipe_through_a_real_subprocess(tmp_path):
    out = tmp_path / "gray7.pt"
    res = run_cli("run", GRAY7, FIXTURES / "ddp.pth", out)
    assert res.code == 0, res.err
    assert "3 reshaped, 71 renamed" in res.out
    mf.ResNetLike(num_classes=7, in_chans=1).load_state_dict(torch.load(out, weights_only=True), strict=True)


# --- running ---------------------------------------------------------------------------------------


def test_steps_run_in_file_order(run, tmp_path):
    # The rename only matches after the strip; the select names the renamed key.
    recipe = write(
        tmp_path,
        """
[[step]]
op = "strip-prefix"
prefix = "module."
[[step]]
op = "rename"
pattern = '^fc\\.'
replacement = "head."
[[step]]
op = "select"
globs = ["head.*", "conv1.weight"]
[[step]]
op = "drop"
globs = "head.bias"
""",
    )
    out = tmp_path / "o.safetensors"
    res = run("run", recipe, FIXTURES / "ddp.pth", out)
    assert res.code == 0, res.err
    got = load_file(out)
    assert list(got) == ["conv1.weight", "head.weight"]
    assert torch.equal(got["head.weight"], RESNET["fc.weight"])


def test_command_line_key_options_run_before_the_recipe(run, tmp_path):
    recipe = write(tmp_path, '[[step]]\nop = "select"\nglobs = "fc.*"\n')
    out = tmp_path / "o.pt"
    res = run("run", recipe, FIXTURES / "ddp.pth", out, "--strip-prefix", "module.", "--dtype", "float16")
    assert res.code == 0, res.err
    got = torch.load(out, weights_only=True)
    assert list(got) == ["fc.weight", "fc.bias"]
    assert torch.equal(got["fc.weight"], RESNET["fc.weight"].half())


def test_dry_run_writes_nothing_and_reports(run, tmp_path):
    out = tmp_path / "o.safetensors"
    res = run("run", GRAY7, FIXTURES / "ddp.pth", out, "--dry-run", "--json")
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["dry_run"] is True and doc["counts"]["reshaped"] == 3
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_keep_classes_as_spec_string_or_list(run, tmp_path):
    outs = []
    for i, value in enumerate(['"0-2,7"', "[0, 1, 2, 7]"]):
        recipe = write(tmp_path, f'[[step]]\nop = "adapt-head"\nkeep_classes = {value}\n', f"r{i}.toml")
        outs.append(tmp_path / f"o{i}.safetensors")
        res = run("run", recipe, FIXTURES / "resnet.safetensors", outs[-1])
        assert res.code == 0, res.err
    for out in outs:
        got = load_file(out)
        assert torch.equal(got["fc.weight"], RESNET["fc.weight"][[0, 1, 2, 7]])


def test_a_step_failing_while_running_names_its_number(run, tmp_path):
    recipe = write(
        tmp_path,
        '[[step]]\nop = "strip-prefix"\nprefix = "module."\n'
        '[[step]]\nop = "rename"\npattern = \'downsample\\.\\d\'\nreplacement = "ds"\n',
    )
    out = tmp_path / "o.pt"
    res = run("run", recipe, FIXTURES / "ddp.pth", out)
    assert_one_line_error(res, "step 2 (rename):", "'layer2.0.downsample.0.weight'", "'layer2.0.downsample.1.weight'")
    assert not out.exists()


# --- validation: the whole recipe before any tensor is read -------------------------------------------

ADAPT_HEAD = '[[step]]\nop = "adapt-head"\n'
ADAPT_STEM = '[[step]]\nop = "adapt-stem"\n'
BAD = [
    ('[[step]]\nop = "adapt-haed"\n', ["step 1: unknown op 'adapt-haed'", "did you mean 'adapt-head'"]),
    (ADAPT_HEAD + "num_class = 7\n", ["step 1 (adapt-head): unknown parameter 'num_class'", "'num_classes'"]),
    (
        '[[step]]\nop = "strip-prefix"\nprefix = "a."\n' + ADAPT_STEM,
        ["step 2 (adapt-stem): missing parameter in_chans"],
    ),
    (ADAPT_HEAD + 'num_classes = "7"\n', ["step 1 (adapt-head): num_classes must be an integer, got string '7'"]),
    (ADAPT_STEM + "in_chans = true\n", ["step 1 (adapt-stem): in_chans must be an integer, got boolean"]),
    (ADAPT_STEM + 'in_chans = 1\nallow_drop = "yes"\n', ["allow_drop must be true or false"]),
    (ADAPT_HEAD + 'keep_classes = "0-x"\n', ["step 1 (adapt-head): keep_classes", "'0-x'"]),
    (ADAPT_HEAD + 'num_classes = 7\nmode = "bogus"\n', ["step 1 (adapt-head):", "bogus"]),
    ('[[step]]\nop = "cast"\ndtype = "fp16"\n', ["step 1 (cast): cannot cast to 'fp16'"]),
    ('[[step]]\nop = "rename"\npattern = "("\nreplacement = ""\n', ["step 1 (rename):", "not a valid regular"]),
    ('[[step]]\nop = "select"\nglobs = 3\n', ["step 1 (select): globs must be a string or an array of strings"]),
    ('[[step]]\nprefix = "module."\n', ["step 1: has no op"]),
    ('[step]\nop = "cast"\ndtype = "float16"\n', ["write [[step]], not [step]"]),
    ('key = "state_dict"\n', ["has no [[step]] tables"]),
    ('[[steps]]\nop = "cast"\n', ["unknown top-level entry 'steps'", "did you mean 'step'"]),
    ('key = 3\n[[step]]\nop = "cast"\ndtype = "float16"\n', ["key must be", "got integer 3"]),
    ('[[step]]\nop = "cast"\ndtype = float16\n', ["not valid TOML", "line 3"]),
]


@pytest.mark.parametrize(("text", "needles"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_invalid_recipe_exit_2_before_any_read(run, tmp_path, text, needles):
    recipe = write(tmp_path, text, "bad.toml")
    out = tmp_path / "o.safetensors"
    # The source does not exist: the recipe error comes first, so nothing was opened.
    res = run("run", recipe, tmp_path / "missing.pth", out)
    assert_one_line_error(res, "bad.toml", *needles)
    assert not out.exists()


def test_missing_recipe_file(run, tmp_path):
    res = run("run", tmp_path / "nope.toml", FIXTURES / "ddp.pth", tmp_path / "o.pt")
    assert_one_line_error(res, "nope.toml", "recipe not found")


def test_every_constructor_argument_is_a_recipe_parameter():
    for name, op in OPS.items():
        cls = op.factory()
        assert cls.op == name
        args = [p for p in inspect.signature(cls).parameters if p != "self"]
        assert sorted(args) == sorted(op.params), name
