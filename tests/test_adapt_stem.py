"""adapt-stem: timm's rules bit for bit, the mean / rgb-first / base-chans strategies, detection, errors.

Most cases run the real command in-process (``main(argv)``, the console script's entry point) to
stay fast; a few go through a subprocess as a user's shell would. Every expected tensor is computed
here by hand with plain torch ops (channel indexing, left-to-right sums), never with our code.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ckptsurgeon import Pipeline, TensorRef
from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.formats import open_checkpoint
from ckptsurgeon.transforms.stem import AdaptStem
from tests.conftest import FIXTURES, assert_one_line_error, fixture_models, run_cli
from tests.tensors import assert_rest_bit_exact, assert_same, bits, load

mf = fixture_models()
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@pytest.fixture
def adapt(run, tmp_path):
    """``adapt(SRC, *options, dst=None) -> (Result, output state dict)``; the command must succeed."""
    n = itertools.count()

    def _adapt(src, *opts, dst: Path | None = None):
        dst = dst or tmp_path / f"out{next(n)}.safetensors"
        res = run("adapt-stem", src, dst, *opts)
        assert res.code == 0, res.err
        return res, load(dst)

    return _adapt


# ---- the expected numbers, by hand: float32 math on single channels, cast back at the end ----


def hand_sum(f: torch.Tensor, chans: list[int]) -> torch.Tensor:
    """f[:, c0] + f[:, c1] + ... left to right, keeping the channel axis."""
    acc = f[:, chans[0] : chans[0] + 1]
    for c in chans[1:]:
        acc = acc + f[:, c : c + 1]
    return acc


def timm_by_hand(w: torch.Tensor, C: int, B: int = 3) -> torch.Tensor:
    f = w.float()
    n_in = f.shape[1]
    if C == 1 and B != 3:  # timm's own expression: over 13 terms the summation order is torch's
        out = f.sum(dim=1, keepdim=True)
    elif C == 1:  # the sum over the 3 colours, within each group of 3 for space-to-depth stems
        out = torch.cat([hand_sum(f, list(range(g * B, g * B + B))) for g in range(n_in // B)], 1)
    else:  # channel c is source channel c % B, times B / C
        out = f[:, [c % B for c in range(C)]] * (B / C)
    return out.to(w.dtype)


def mean_by_hand(w: torch.Tensor, C: int, B: int = 3) -> torch.Tensor:
    f = w.float()
    groups = []
    for g in range(f.shape[1] // B):
        one = hand_sum(f, list(range(g * B, g * B + B))) / C
        groups += [one] * C
    return torch.cat(groups, 1).to(w.dtype)


def rgb_first_by_hand(w: torch.Tensor, C: int, extra_init: str, B: int = 3) -> torch.Tensor:
    parts = []
    for g in range(w.shape[1] // B):
        rgb = w[:, g * B : g * B + B]
        if extra_init == "mean":
            extra = (hand_sum(w.float(), list(range(g * B, g * B + B))) / B).to(w.dtype)
        else:
            extra = torch.zeros_like(w[:, :1])
        parts += [rgb] + [extra] * (C - B)
    return torch.cat(parts, 1)


# ---- small checkpoints of our own ----


def random_resnet(dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixture ResNetLike with random (not dyadic) weights: float32 vs native math differ on it."""
    torch.manual_seed(seed)
    sd = mf.ResNetLike().state_dict()
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


class S2DNet(nn.Module):
    """TResNet's naming: ``body.conv1.conv`` reads the 4x4 space-to-depth of the image (16·C channels)."""

    def __init__(self, in_chans: int = 3):
        super().__init__()
        conv1 = nn.Sequential(
            OrderedDict(conv=nn.Conv2d(16 * in_chans, 8, 3, padding=1, bias=False), bn=nn.BatchNorm2d(8))
        )
        layer1 = nn.Sequential(OrderedDict(conv=nn.Conv2d(8, 12, 3, padding=1, bias=False), bn=nn.BatchNorm2d(12)))
        self.body = nn.Sequential(OrderedDict(conv1=conv1, layer1=layer1))
        self.head = nn.Sequential(OrderedDict(fc=nn.Linear(12, 10)))


class TwoStems(nn.Module):
    """CrossViT-like: two patch embeddings read the same image."""

    def __init__(self, in_chans: int = 3):
        super().__init__()
        self.patch_embed = nn.ModuleList(
            [
                nn.Sequential(OrderedDict(proj=nn.Conv2d(in_chans, 8, 4, 4))),
                nn.Sequential(OrderedDict(proj=nn.Conv2d(in_chans, 12, 6, 6))),
            ]
        )
        self.norm = nn.ModuleList([nn.LayerNorm(8), nn.LayerNorm(12)])
        self.head = nn.ModuleList([nn.Linear(8, 10), nn.Linear(12, 10)])


class Bands(nn.Module):
    """A multispectral net trained on ``in_chans`` bands."""

    def __init__(self, in_chans: int = 13):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 8, 3, bias=True)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Conv2d(8, 16, 3, bias=False)
        self.fc = nn.Linear(16, 10)


class NaFlex(nn.Module):
    """timm NaFlexViT's linear patch embedding over flattened 4x4 patches (channel fastest)."""

    def __init__(self, in_chans: int = 3):
        super().__init__()
        self.embeds = nn.Module()
        self.embeds.proj = nn.Linear(16 * in_chans, 24)
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, 10)


def save_model(model: nn.Module, path: Path, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.2)
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        return save_st(sd, path)
    torch.save(sd, path)
    return load(path)


def save_st(sd: dict, path: Path) -> dict:
    """Write a .safetensors file and return it as read back (in the file's own key order)."""
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return load(path)


# ---- timm's rules, bit for bit, in every dtype ----


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [1, 2, 4, 5, 6])
def test_timm_rules_bit_exact_in_every_dtype(adapt, tmp_path, dtype, C):
    src = save_st(random_resnet(DTYPES[dtype]), tmp_path / "src.safetensors")
    res, out = adapt(tmp_path / "src.safetensors", "--in-chans", C)
    assert_same(out["conv1.weight"], timm_by_hand(src["conv1.weight"], C), "conv1.weight")
    assert out["conv1.weight"].shape == (16, C, 7, 7)
    assert_rest_bit_exact(src, out, {"conv1.weight"})


def test_float32_math_matters_for_half_weights():
    """The data above tells float32-then-cast from native half math (so the rule is really tested)."""
    w = random_resnet(torch.bfloat16)["conv1.weight"]
    native = w[:, 0:1] + w[:, 1:2] + w[:, 2:3]  # two bfloat16 roundings instead of one
    assert not torch.equal(bits(native), bits(timm_by_hand(w, 1)))


@pytest.mark.parametrize(
    "fixture,model,stem",
    [
        ("resnet.safetensors", mf.ResNetLike, "conv1.weight"),
        ("resnet_fp16.pth", mf.ResNetLike, "conv1.weight"),
        ("vit.pth", mf.ViTLike, "patch_embed.proj.weight"),
        ("deit.safetensors", mf.DeiTLike, "patch_embed.proj.weight"),
        ("effnet.safetensors", mf.EffNetLike, "conv_stem.weight"),
    ],
)
@pytest.mark.parametrize("C", [1, 4])
def test_fixtures_load_strict_into_model_built_for_C(adapt, tmp_path, fixture, model, stem, C):
    res, out = adapt(FIXTURES / fixture, "--in-chans", C, dst=tmp_path / f"out{Path(fixture).suffix}")
    src = load(FIXTURES / fixture)
    assert_same(out[stem], timm_by_hand(src[stem], C), stem)
    assert_rest_bit_exact(src, out, {stem})  # biases, and convs that merely read 3 channels per group
    net = model(in_chans=C)
    net.load_state_dict(out, strict=True)
    assert net.state_dict()[stem].shape[1] == C


def test_bf16_checkpoint_through_a_subprocess(tmp_path):
    vit = load(FIXTURES / "vit.safetensors")
    src = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in vit.items()}
    torch.save(src, tmp_path / "vit_bf16.pth")
    res = run_cli("adapt-stem", tmp_path / "vit_bf16.pth", tmp_path / "out.pt", "--in-chans", "2")
    assert res.code == 0, res.err
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert_same(out["patch_embed.proj.weight"], timm_by_hand(src["patch_embed.proj.weight"], 2))
    assert_rest_bit_exact(src, out, {"patch_embed.proj.weight"})
    mf.ViTLike(in_chans=2).load_state_dict(out, strict=True)


def test_three_channels_nothing_to_change(adapt):
    res, out = adapt(FIXTURES / "resnet.safetensors", "--in-chans", 3, "--json")
    doc = res.json()
    assert doc["counts"]["reshaped"] == 0 and doc["counts"]["dropped"] == 0
    (stem,) = doc["steps"][0]["facts"]["stems"]
    assert stem["action"] == "unchanged" and stem["new_shape"] == [16, 3, 7, 7]
    assert "nothing to change" in stem["note"]
    assert_rest_bit_exact(load(FIXTURES / "resnet.safetensors"), out, set())


# ---- space-to-depth ----


@pytest.mark.parametrize("dtype", DTYPES)
def test_space_to_depth_gray_sums_each_group_of_three(adapt, tmp_path, dtype):
    src = save_model(S2DNet(), tmp_path / "s2d.safetensors", dtype=DTYPES[dtype])
    w = src["body.conv1.conv.weight"]
    assert w.shape == (8, 48, 3, 3)
    res, out = adapt(tmp_path / "s2d.safetensors", "--in-chans", 1)
    assert "space-to-depth stem: reads 48 = 3x4x4 channels" in res.out
    assert_same(out["body.conv1.conv.weight"], timm_by_hand(w, 1))
    assert out["body.conv1.conv.weight"].shape == (8, 16, 3, 3)
    assert_rest_bit_exact(src, out, {"body.conv1.conv.weight"})
    S2DNet(in_chans=1).load_state_dict(out, strict=True)


def test_space_to_depth_more_channels_timm_cannot(tmp_path):
    save_model(S2DNet(), tmp_path / "s2d.safetensors")
    dst = tmp_path / "o.safetensors"
    res = run_cli("adapt-stem", tmp_path / "s2d.safetensors", dst, "--in-chans", "2")
    assert_one_line_error(res, "timm cannot", "body.conv1.conv.weight", "--strategy mean can", "--allow-drop")
    assert not dst.exists()
    res = run_cli("adapt-stem", tmp_path / "s2d.safetensors", dst, "--in-chans", "4")
    assert_one_line_error(res, "timm cannot", "--strategy mean or --strategy rgb-first can")
    assert not dst.exists()


def test_space_to_depth_allow_drop_drops_weight_keeps_bn(adapt, tmp_path):
    src = save_model(S2DNet(), tmp_path / "s2d.safetensors")
    res, out = adapt(tmp_path / "s2d.safetensors", "--in-chans", 2, "--allow-drop", "--json")
    changed = [(k["name"], k["action"]) for k in res.json()["keys"] if k["action"] != "kept"]
    assert changed == [("body.conv1.conv.weight", "dropped")]
    assert "body.conv1.conv.weight" not in out
    assert_rest_bit_exact(src, out, {"body.conv1.conv.weight"})
    missing, unexpected = S2DNet(in_chans=2).load_state_dict(out, strict=False)
    assert missing == ["body.conv1.conv.weight"] and unexpected == []


def test_space_to_depth_mean_and_rgb_first_work_per_group(adapt, tmp_path):
    src = save_model(S2DNet(), tmp_path / "s2d.safetensors")
    w = src["body.conv1.conv.weight"]
    _, out = adapt(tmp_path / "s2d.safetensors", "--in-chans", 2, "--strategy", "mean")
    assert_same(out["body.conv1.conv.weight"], mean_by_hand(w, 2))
    S2DNet(in_chans=2).load_state_dict(out, strict=True)
    _, out = adapt(tmp_path / "s2d.safetensors", "--in-chans", 4, "--strategy", "rgb-first")
    assert_same(out["body.conv1.conv.weight"], rgb_first_by_hand(w, 4, "mean"))
    S2DNet(in_chans=4).load_state_dict(out, strict=True)


# ---- the strategies beyond timm ----


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [2, 7])
def test_mean_strategy(adapt, tmp_path, dtype, C):
    src = save_st(random_resnet(DTYPES[dtype], seed=1), tmp_path / "src.safetensors")
    _, out = adapt(tmp_path / "src.safetensors", "--in-chans", C, "--strategy", "mean")
    assert_same(out["conv1.weight"], mean_by_hand(src["conv1.weight"], C))
    assert_rest_bit_exact(src, out, {"conv1.weight"})


def test_mean_keeps_the_response_to_a_constant_image(adapt):
    src = load(FIXTURES / "resnet.safetensors")
    _, out = adapt(FIXTURES / "resnet.safetensors", "--in-chans", 4, "--strategy", "mean")
    # the fixture's weights are dyadic, so these sums are exact and the check can be equality
    w, new = src["conv1.weight"].double(), out["conv1.weight"].double()
    assert torch.equal(new.sum(1), w.sum(1))
    assert torch.equal(new[:, 0], new[:, 3])
    net3, net4 = mf.ResNetLike(), mf.ResNetLike(in_chans=4)
    net3.load_state_dict(src)
    net4.load_state_dict(out, strict=True)
    y3, y4 = net3.conv1(torch.full((1, 3, 32, 32), 0.5)), net4.conv1(torch.full((1, 4, 32, 32), 0.5))
    assert torch.allclose(y3, y4, atol=1e-6)


def test_mean_gray_equals_timm_gray_bit_for_bit(adapt, tmp_path):
    src = save_st(random_resnet(torch.float16, seed=2), tmp_path / "src.safetensors")
    _, timm = adapt(tmp_path / "src.safetensors", "--in-chans", 1, dst=tmp_path / "t.safetensors")
    _, mean = adapt(tmp_path / "src.safetensors", "--in-chans", 1, "--strategy", "mean", dst=tmp_path / "m.safetensors")
    assert_same(mean["conv1.weight"], timm["conv1.weight"])
    assert_same(mean["conv1.weight"], timm_by_hand(src["conv1.weight"], 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra_init", ["mean", "zero"])
def test_rgb_first_keeps_rgb_bits_and_inits_extra_channels(adapt, tmp_path, dtype, extra_init):
    src = save_st(random_resnet(DTYPES[dtype], seed=3), tmp_path / "src.safetensors")
    _, out = adapt(tmp_path / "src.safetensors", "--in-chans", 5, "--strategy", "rgb-first", "--extra-init", extra_init)
    w, new = src["conv1.weight"], out["conv1.weight"]
    assert_same(new, rgb_first_by_hand(w, 5, extra_init))
    assert_same(new[:, :3], w)  # the RGB path is not disturbed
    if extra_init == "zero":
        assert not new[:, 3:].any()


def test_rgb_first_default_extra_init_is_mean_and_bias_is_kept(adapt):
    src = load(FIXTURES / "vit.safetensors")
    res, out = adapt(FIXTURES / "vit.safetensors", "--in-chans", 4, "--strategy", "rgb-first")
    assert_same(out["patch_embed.proj.weight"], rgb_first_by_hand(src["patch_embed.proj.weight"], 4, "mean"))
    assert_same(out["patch_embed.proj.bias"], src["patch_embed.proj.bias"])
    assert "bias patch_embed.proj.bias unchanged" in res.out
    mf.ViTLike(in_chans=4).load_state_dict(out, strict=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_base_chans_13_bands_to_26(adapt, tmp_path, dtype):
    src = save_model(Bands(13), tmp_path / "s2.safetensors", dtype=DTYPES[dtype])
    _, out = adapt(tmp_path / "s2.safetensors", "--in-chans", 26, "--base-chans", 13)
    w = src["conv1.weight"]
    assert_same(out["conv1.weight"], (torch.cat([w.float(), w.float()], 1) * (13 / 26)).to(w.dtype))
    assert_rest_bit_exact(src, out, {"conv1.weight"})  # conv1.bias too
    Bands(26).load_state_dict(out, strict=True)


@pytest.mark.parametrize("C", [1, 2, 20])
def test_base_chans_other_counts(adapt, tmp_path, C):
    src = save_model(Bands(13), tmp_path / "s2.safetensors", seed=4)
    _, out = adapt(tmp_path / "s2.safetensors", "--in-chans", C, "--base-chans", 13)
    assert_same(out["conv1.weight"], timm_by_hand(src["conv1.weight"], C, B=13))
    Bands(C).load_state_dict(out, strict=True)


def test_13_band_stem_without_base_chans_is_refused(tmp_path):
    save_model(Bands(13), tmp_path / "s2.safetensors")
    dst = tmp_path / "o.safetensors"
    res = run_cli("adapt-stem", tmp_path / "s2.safetensors", dst, "--in-chans", "26")
    assert_one_line_error(res, "no input convolution found", "--conv")
    assert not dst.exists()
    res = run_cli("adapt-stem", tmp_path / "s2.safetensors", dst, "--in-chans", "26", "--conv", "conv1")
    assert_one_line_error(res, "13 input channels", "--base-chans 13")
    assert not dst.exists()


# ---- finding the stems ----


def test_two_parallel_stems_both_adapted(adapt, tmp_path):
    src = save_model(TwoStems(), tmp_path / "two.pth")
    res, out = adapt(tmp_path / "two.pth", "--in-chans", 2, "--json")
    stems = res.json()["steps"][0]["facts"]["stems"]
    names = ["patch_embed.0.proj.weight", "patch_embed.1.proj.weight"]
    assert [s["weight"] for s in stems] == names
    assert all("parallel" in s["reason"] for s in stems)
    for name in names:
        assert_same(out[name], timm_by_hand(src[name], 2), name)
    assert_rest_bit_exact(src, out, set(names))
    TwoStems(in_chans=2).load_state_dict(out, strict=True)


@pytest.mark.parametrize(
    "fixture,stem",
    [
        ("resnet.safetensors", "conv1.weight"),
        ("vit.safetensors", "patch_embed.proj.weight"),
        ("deit.pth", "patch_embed.proj.weight"),
        ("effnet.safetensors", "conv_stem.weight"),  # not blocks.1.0.conv_dw [24, 3, 3, 3] (3 per group)
        ("sharded", "patch_embed.proj.weight"),
    ],
)
def test_detects_the_stem_and_only_it(run, tmp_path, fixture, stem):
    res = run("adapt-stem", FIXTURES / fixture, tmp_path / "o.safetensors", "--in-chans", 1, "--json", "--dry-run")
    assert res.code == 0, res.err
    doc = res.json()
    assert [s["weight"] for s in doc["steps"][0]["facts"]["stems"]] == [stem]
    assert [(k["name"], k["action"]) for k in doc["keys"] if k["action"] != "kept"] == [(stem, "reshaped")]
    assert not (tmp_path / "o.safetensors").exists()


def test_linear_patch_embedding_is_a_stem_in_groups_of_three(adapt, tmp_path):
    src = save_model(NaFlex(), tmp_path / "nf.safetensors")
    w = src["embeds.proj.weight"]
    # channel fastest: pixel p of the patch reads columns 3p, 3p+1, 3p+2
    sums = [w[:, 3 * p] + w[:, 3 * p + 1] + w[:, 3 * p + 2] for p in range(16)]
    _, out = adapt(tmp_path / "nf.safetensors", "--in-chans", 1, dst=tmp_path / "g.safetensors")
    assert_same(out["embeds.proj.weight"], torch.stack(sums, 1))
    NaFlex(in_chans=1).load_state_dict(out, strict=True)
    _, out = adapt(tmp_path / "nf.safetensors", "--in-chans", 2, "--strategy", "mean", dst=tmp_path / "m.safetensors")
    assert_same(out["embeds.proj.weight"], torch.stack([s / 2 for s in sums for _ in range(2)], 1))
    NaFlex(in_chans=2).load_state_dict(out, strict=True)


def test_conv_override_picks_the_named_layers(adapt):
    src = load(FIXTURES / "effnet.safetensors")
    # a weight name or a module name; the grouped conv is adapted only because it is named
    named = ("--conv", "conv_stem.weight", "--conv", "blocks.1.0.conv_dw")
    res, out = adapt(FIXTURES / "effnet.safetensors", "--in-chans", 1, *named, "--json")
    stems = res.json()["steps"][0]["facts"]["stems"]
    names = ["blocks.1.0.conv_dw.weight", "conv_stem.weight"]  # sorted by prefix
    assert [s["weight"] for s in stems] == names
    assert all("--conv" in s["reason"] for s in stems)
    for name in names:
        assert_same(out[name], timm_by_hand(src[name], 1), name)
    assert_rest_bit_exact(src, out, set(names))


@pytest.mark.parametrize(
    "conv,needles",
    [
        ("nope", ["--conv nope", "no tensor nope.weight"]),
        ("fc", ["--conv fc", "[10, 32]", "not a 4-d conv weight"]),
        ("bn1", ["--conv bn1"]),
        ("layer1.0.conv1", ["16 input channels", "--base-chans"]),
    ],
)
def test_conv_override_errors(run, tmp_path, conv, needles):
    dst = tmp_path / "o.safetensors"
    res = run("adapt-stem", FIXTURES / "resnet.safetensors", dst, "--in-chans", "1", "--conv", conv)
    assert_one_line_error(res, *needles)
    assert not dst.exists()


# ---- the report ----


def test_human_report_names_stem_reason_strategy_formula_shapes(tmp_path):
    res = run_cli("adapt-stem", FIXTURES / "vit.safetensors", tmp_path / "o.safetensors", "--in-chans", "4")
    assert res.code == 0, res.err
    assert "stem patch_embed.proj.weight [24, 3, 4, 4] float32: the only conv reading 3 channels" in res.out
    assert "timm: w'[:, c] = w[:, c % 3] * 3/4  (repeat x2, keep 4, scale by 3/4, as timm)" in res.out
    assert "[24, 3, 4, 4] → [24, 4, 4, 4]" in res.out
    assert "bias patch_embed.proj.bias unchanged" in res.out
    assert "1 reshaped" in res.out


def test_json_facts_per_stem(adapt, tmp_path):
    res, _ = adapt(FIXTURES / "resnet_fp16.safetensors", "--in-chans", 2, "--strategy", "mean", "--json")
    step = res.json()["steps"][0]
    assert step["op"] == "adapt-stem"
    params = {"in_chans": 2, "strategy": "mean", "base_chans": 3, "convs": None, "allow_drop": False}
    assert step["params"] == {**params, "extra_init": "mean"}
    assert step["facts"]["stems"] == [
        {
            "weight": "conv1.weight",
            "bias": None,
            "reason": "the only conv reading 3 channels",
            "action": "reshaped",
            "strategy": "mean",
            "formula": "w'[:, c] = sum_i w[:, i] / 2",
            "note": "channel mean x 3/2: the response to a constant image is kept",
            "old_shape": [16, 3, 7, 7],
            "new_shape": [16, 2, 7, 7],
            "dtype": "float16",
        }
    ]


def test_key_options_pass_through(adapt):
    _, out = adapt(FIXTURES / "ddp.pth", "--in-chans", 1, "--strip-prefix", "module.")
    assert_same(out["conv1.weight"], timm_by_hand(load(FIXTURES / "resnet.pth")["conv1.weight"], 1))
    mf.ResNetLike(in_chans=1).load_state_dict(out, strict=True)


# ---- bad input: exit 2, one line, nothing written ----


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--in-chans", "0"], ["--in-chans", "positive integer"]),
        (["--in-chans", "-2"], ["--in-chans"]),
        (["--in-chans", "2.5"], ["--in-chans", "integer"]),
        (["--in-chans", "gray"], ["--in-chans", "integer"]),
        ([], ["--in-chans"]),
        (["--in-chans", "4", "--strategy", "median"], ["unknown --strategy 'median'", "timm, mean, rgb-first"]),
        (["--in-chans", "4", "--base-chans", "0"], ["--base-chans", "positive integer"]),
        (["--in-chans", "4", "--extra-init", "zero"], ["--extra-init", "rgb-first only"]),
        (["--in-chans", "4", "--strategy", "rgb-first", "--extra-init", "noise"], ["unknown --extra-init"]),
        (["--in-chans", "2", "--strategy", "rgb-first"], ["rgb-first", "--strategy timm", "--strategy mean"]),
        (["--in-chans", "1", "--base-chans", "4"], ["no input convolution found"]),
    ],
)
def test_bad_options_one_line_nothing_written(run, tmp_path, args, needles):
    dst = tmp_path / "o.safetensors"
    res = run("adapt-stem", FIXTURES / "resnet.safetensors", dst, *args)
    assert_one_line_error(res, *needles)
    assert not dst.exists()


def test_only_the_stem_is_decoded_and_a_refusal_decodes_nothing(monkeypatch):
    ckpt = open_checkpoint(str(FIXTURES / "vit.safetensors"))
    state, _ = Pipeline([AdaptStem(2)]).apply(ckpt)
    for name, ref in ckpt.tensors.items():
        if name != "patch_embed.proj.weight":
            assert state.tensors[name] is ref, name  # same ref: byte-copied by the writer, never decoded
    decoded = []
    monkeypatch.setattr(TensorRef, "load", lambda self: decoded.append(self.name))
    with pytest.raises(SurgeonError, match="layer1.0.conv1.weight"):
        Pipeline([AdaptStem(1, convs=["conv1", "layer1.0.conv1"])]).apply(open_checkpoint(str(FIXTURES / "resnet.pth")))
    assert decoded == []


def test_python_api_validates_before_reading():
    for bad in (0, -1, 2.0, True, "3"):
        with pytest.raises(SurgeonError, match="--in-chans"):
            AdaptStem(bad)
    with pytest.raises(SurgeonError, match="rgb-first"):
        AdaptStem(2, strategy="rgb-first")
    assert AdaptStem(4, convs="conv1").params()["convs"] == ["conv1"]
