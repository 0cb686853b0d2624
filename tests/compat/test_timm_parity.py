"""timm parity: ``adapt-head`` / ``adapt-stem`` write exactly what timm's own loader would load.

For each architecture (random init, ``pretrained=False``) the state dict is saved as SRC in both
formats (``.pth`` and ``.safetensors``). For every case (new class count N, new input channels C)
our real command turns SRC into DST, and timm builds the reference from the same file::

    timm.create_model(name, pretrained=True, num_classes=N, in_chans=C,
                      pretrained_cfg_overlay=dict(file=SRC, num_classes=<SRC's class count>))

(``load_pretrained``: the model's checkpoint filter, ``adapt_input_conv`` on the stems, the head
dropped when N differs). Then:

- every tensor in DST equals the reference's tensor of that name, bit for bit (new heads of
  ``--mode reinit`` aside: same shape and dtype);
- every reference tensor missing from DST is a head timm's ``pretrained_cfg["classifier"]`` names
  (or a stem timm could not adapt and dropped);
- DST loads into that model with exactly those keys missing (drop mode) or strictly (reinit).

Cases, each in both formats unless said: ``--num-classes 7`` (drop); ``--in-chans`` 1, 2 and 4;
``--num-classes 7 --mode reinit`` (.safetensors); N=7 with C=4 as two chained commands (drop, .pth)
and as a ``run`` recipe (reinit, .safetensors); N unchanged on a few; and the 1001-row background
class of old TF weights (``label_offset=1``) on three. Space-to-depth stems (TResNet), which timm
drops for C of 2 or 4, are adapted with ``--allow-drop``.

The overlay's ``num_classes`` states the file's real class count: timm otherwise compares N with
its config's count (21841 for some tags), not with the file. The reference is built on the meta
device with timm's loading path intact (``timm_reference``); both SRC files hold the same tensors,
so one reference per (N, C) serves both formats (built from each format in turn).
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

timm = pytest.importorskip("timm")  # the compat venv always has it; never skipped there

TIER = "timm parity"

# One (or two) small members of each family; the comment says what the family adds to the test.
ARCHS = [
    "resnet18",  # fc head, conv1 stem
    "seresnext26d_32x4d",  # deep stem (conv1.0 reads the image), SE blocks, grouped convs
    "legacy_seresnet18",  # last_linear, layer0.conv1
    "resnetv2_50x1_bit",  # 1x1-conv head (head.fc is a Conv2d)
    "vit_tiny_patch16_224",  # ViT: head, patch_embed.proj
    "deit_tiny_distilled_patch16_224",  # two heads: head + head_dist
    "swin_tiny_patch4_window7_224",  # Swin: head.fc, checkpoint filter
    "convnext_atto",  # ConvNeXt: head.fc, stem.0
    "efficientnet_b0",  # conv_head (1x1 pre-logits) + classifier
    "mobilenetv3_small_100",  # conv_head 576 -> 1024 + classifier
    "mobilenetv2_050",
    "mobilenetv4_conv_small",
    "mixnet_s",  # mixed depthwise kernels
    "ghostnet_050",
    "lcnet_050",
    "rexnet_100",
    "regnetx_002",  # RegNet
    "regnety_002",
    "densenet121",  # classifier, features.conv0
    "inception_v3",  # Conv2d_1a_3x3.conv, fc
    "inception_v4",  # last_linear, features.0.conv
    "inception_resnet_v2",  # classif, conv2d_1a.conv
    "xception41",  # aligned Xception
    "nfnet_l0",  # NFNet: scaled weight-standardised convs with gain
    "levit_128s",  # LeViT: head.linear + head_dist.linear after a BN
    "tresnet_m",  # space-to-depth stem (48 = 3x4x4 input channels)
    "fastvit_t8",  # two parallel stems (conv_kxk + conv_scale)
    "repvgg_a0",  # two parallel stems (3x3 + 1x1), as MobileOne
    "vgg11",  # conv pre-logits (7x7 and 1x1 convs before head.fc); mlp_ratio shrunk below
    "coat_lite_tiny",  # tied tensors (shared conv position encodings)
    "crossvit_tiny_240",  # two patch embeddings, two heads head.0 / head.1
    "pit_ti_distilled_224",  # PiT distilled: head + head_dist, conv patch embed
    "efficientformer_l1",  # head + head_dist
    "xcit_nano_12_p16_224",  # conv patch embed patch_embed.proj.0.0
    "mixer_s16_224",  # MLP-Mixer
    "resmlp_12_224",
    "poolformer_s12",  # MetaFormer
    "maxvit_nano_rw_256",  # MaxViT
    "coatnet_nano_rw_224",
    "edgenext_xx_small",
    "efficientvit_b0",  # head.classifier.4 after a 1x1-conv pre-logits
    "efficientvit_m0",  # head.linear after a BN
    "mobilevit_xxs",
    "hgnetv2_b0",  # HGNet v2
    "dla34",  # 1x1-conv head fc
    "hrnet_w18_small",  # HRNet incre/downsamp branches
    "cspresnet50",  # CSPNet
    "ese_vovnet19b_dw",  # VoVNet
    "gernet_s",  # ByobNet
    "botnet26t_256",  # ByobNet with self-attention
    "visformer_tiny",
    "pvt_v2_b0",
    "tiny_vit_5m_224",  # config says 21841 classes, the model has 1000
    "gcvit_xxtiny",
    "mambaout_femto",
    "starnet_s1",
]

# Architecture kwargs that shrink a huge layer without changing the family's structure.
KWARGS = {"vgg11": {"mlp_ratio": 0.0625}}  # pre_logits convs 512 -> 256 -> 256 instead of 4096

# Space-to-depth stems: timm's adapt_input_conv cannot make 2 or 4 channels and drops the stem
# (load_pretrained goes strict=False); our command refuses unless --allow-drop says so.
S2D = {"tresnet_m"}

# The no-change case (N = the file's class count: DST == SRC) on a few, one with a config that
# claims 21841 classes for a 1000-class model.
UNCHANGED = {"resnet18", "deit_tiny_distilled_patch16_224", "inception_v3", "efficientvit_m0", "tiny_vit_5m_224"}

N_NEW = 7
FORMATS = ("pth", "safetensors")


def _save(sd: dict[str, torch.Tensor], path: Path) -> None:
    if path.suffix == ".safetensors":
        # safetensors stores no shared storage; tied tensors become copies (as timm's own exports)
        save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)  # keeps ties (CoaT's shared position encodings)


def _load(path: Path) -> dict[str, torch.Tensor]:
    """DST as a user loads it (``load_file`` / ``torch.load(weights_only=True)``)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (so -0.0 differs from 0.0 and NaN equals its own bits)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    as_int = _SAME_WIDTH_INT[a.element_size()]
    return torch.equal(
        a.detach().contiguous().reshape(-1).view(as_int), b.detach().contiguous().reshape(-1).view(as_int)
    )


def _describe(t: torch.Tensor) -> str:
    return f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}"


def timm_reference(arch: str, n: int, c: int, src: Path, n_src: int, **kwargs) -> torch.nn.Module:
    """timm's ``create_model(arch, pretrained=True, num_classes=n, in_chans=c)`` loading SRC.

    The model is built on the meta device and timm's final ``load_state_dict`` runs with
    ``assign=True``: every step of ``load_pretrained`` is timm's own (reading the file, the model's
    checkpoint filter, ``adapt_input_conv`` on the stems, dropping or slicing the heads, the strict
    flag), and the loaded tensors take the meta ones' places. Only the random init, which the load
    overwrites, is skipped (it cost more than everything else together). Keys timm does not load
    stay on meta: shape and dtype without data.
    """
    overlay = {k: kwargs.pop(k) for k in ("label_offset",) if k in kwargs}
    real_load = torch.nn.Module.load_state_dict

    def load_assign(self, state_dict, strict=True, assign=False):
        return real_load(self, state_dict, strict=strict, assign=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.nn.Module.load_state_dict = load_assign
        try:
            with torch.device("meta"):
                return timm.create_model(
                    arch,
                    pretrained=True,
                    num_classes=n,
                    in_chans=c,
                    pretrained_cfg_overlay=dict(file=str(src), num_classes=n_src, **overlay),
                    **kwargs,
                )
        finally:
            torch.nn.Module.load_state_dict = real_load


@dataclass
class Case:
    """One way of adapting SRC, and the timm reference it must match."""

    label: str
    num_classes: int
    in_chans: int
    commands: list[list[str]] = field(default_factory=list)  # each: args after SRC DST (chained)
    recipe: str | None = None  # instead of commands: `run RECIPE SRC DST`
    reinit: bool = False  # heads are new tensors: compared by shape, and DST loads strictly
    stem_dropped: bool = False  # timm cannot adapt the stem: it is missing from DST too


def _cases(arch: str, n_src: int) -> dict[str, list[Case]]:
    """The cases per file format. N=7 and C in 1, 2, 4 in both formats; the rest split between them."""
    allow = ["--allow-drop"] if arch in S2D else []

    def stem(c: int) -> list[str]:
        return ["adapt-stem", "--in-chans", str(c), *(allow if c not in (1, 3) else [])]

    def head(n: int, *extra: str) -> list[str]:
        return ["adapt-head", "--num-classes", str(n), *extra]

    def common() -> list[Case]:
        return [
            Case("num_classes 7 (drop)", N_NEW, 3, [head(N_NEW)]),
            *(Case(f"in_chans {c}", n_src, c, [stem(c)], stem_dropped=arch in S2D and c != 1) for c in (1, 2, 4)),
        ]

    allow_toml = "allow_drop = true\n" if arch in S2D else ""
    recipe = (
        f'[[step]]\nop = "adapt-head"\nnum_classes = {N_NEW}\nmode = "reinit"\n\n'
        f'[[step]]\nop = "adapt-stem"\nin_chans = 4\n{allow_toml}'
    )
    return {
        "pth": [
            *common(),
            *([Case(f"num_classes {n_src} (unchanged)", n_src, 3, [head(n_src)])] if arch in UNCHANGED else []),
            Case(
                "num_classes 7 + in_chans 4 (two commands)", N_NEW, 4, [head(N_NEW), stem(4)], stem_dropped=arch in S2D
            ),
        ],
        "safetensors": [
            *common(),
            Case("num_classes 7 (reinit)", N_NEW, 3, [head(N_NEW, "--mode", "reinit")], reinit=True),
            Case(
                "num_classes 7 reinit + in_chans 4 (recipe)",
                N_NEW,
                4,
                recipe=recipe,
                reinit=True,
                stem_dropped=arch in S2D,
            ),
        ],
    }


def _as_tuple(v) -> tuple[str, ...]:
    if v is None:
        return ()
    return (v,) if isinstance(v, str) else tuple(v)


class Parity:
    """Builds references once per (N, C) and checks each DST against them."""

    def __init__(self, arch: str, work: Path, surgeon, coverage):
        self.arch, self.work, self.surgeon, self.coverage = arch, work, surgeon, coverage
        self.kwargs = KWARGS.get(arch, {})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = timm.create_model(arch, pretrained=False, **self.kwargs)
        cfg = model.pretrained_cfg
        self.classifiers = _as_tuple(cfg.get("classifier"))
        self.first_convs = _as_tuple(cfg.get("first_conv"))
        self.n_src = model.num_classes
        self.src_sd = model.state_dict()
        self.src = {}
        for fmt in FORMATS:
            self.src[fmt] = work / f"src.{fmt}"
            _save(self.src_sd, self.src[fmt])
        del model
        self.failures: list[str] = []

    def head_keys(self, sd) -> set[str]:
        return {f"{c}.{p}" for c in self.classifiers for p in ("weight", "bias") if f"{c}.{p}" in sd}

    def stem_keys(self, sd) -> set[str]:
        return {f"{c}.weight" for c in self.first_convs if f"{c}.weight" in sd}

    def reference(self, n: int, c: int, src: Path, **overlay):
        """``timm.create_model(pretrained=True, ...)`` from SRC: the model holds what timm loaded."""
        return timm_reference(self.arch, n, c, src, self.n_src, **self.kwargs, **overlay)

    def run_case(self, fmt: str, case: Case, ref_model, ref_sd) -> None:
        where = f"{self.arch} [{fmt}] {case.label}"
        dst = self.work / f"dst.{fmt}"
        steps = self._commands(fmt, case, dst)
        for args in steps:
            res = self.surgeon(*args)
            if res.code != 0:
                self.failures.append(
                    f"{where}: `ckptsurgeon {' '.join(map(str, args))}` exit {res.code}: {res.err.strip()}"
                )
                return
        out = _load(dst)
        head = self.head_keys(ref_sd)
        stem = self.stem_keys(ref_sd)
        problems = []
        for k, t in out.items():
            if k not in ref_sd:
                problems.append(f"{k}: in DST, not in timm's model")
            elif case.reinit and k in head:
                if t.shape != ref_sd[k].shape or t.dtype != ref_sd[k].dtype:
                    problems.append(f"{k}: new head {_describe(t)}, timm's {_describe(ref_sd[k])}")
            elif ref_sd[k].is_meta:
                problems.append(f"{k}: in DST, but timm does not load it (the model's own init fills it)")
            elif not _bits_equal(t, ref_sd[k]):
                r = ref_sd[k]
                diff = "" if t.shape != r.shape else f", max |diff| {(t.double() - r.double()).abs().max().item():.3g}"
                problems.append(f"{k}: DST {_describe(t)} != timm {_describe(r)}{diff}")
        missing = set(ref_sd) - set(out)
        expect_missing = set()
        if case.num_classes != self.n_src and not case.reinit:
            expect_missing |= head
        if case.stem_dropped:
            expect_missing |= stem
        if missing != expect_missing:
            problems.append(
                f"missing from DST: {sorted(missing)}; timm drops exactly {sorted(expect_missing)} "
                f"(classifier={self.classifiers}, first_conv={self.first_convs})"
            )
        if not problems:
            # assign=True: the same key and shape checks as a copying load, without copying the
            # tensors (ref_sd keeps timm's originals for the next case)
            result = ref_model.load_state_dict(out, strict=not expect_missing, assign=True)
            if sorted(result.missing_keys) != sorted(expect_missing) or result.unexpected_keys:
                problems.append(f"load_state_dict: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
        if problems:
            shown = problems[:6] + ([f"... {len(problems) - 6} more"] if len(problems) > 6 else [])
            self.failures.append(f"{where}: " + "; ".join(shown))
        else:
            self.coverage(TIER, "checks (arch x format x case), all equal")
        dst.unlink(missing_ok=True)

    def _commands(self, fmt: str, case: Case, dst: Path) -> list[list]:
        src = self.src[fmt]
        if case.recipe is not None:
            recipe = self.work / "recipe.toml"
            recipe.write_text(case.recipe)
            return [["run", recipe, src, dst, "--json", "--force"]]
        steps = []
        cur = src
        for i, args in enumerate(case.commands):
            nxt = dst if i == len(case.commands) - 1 else self.work / f"mid{i}.{fmt}"
            steps.append([args[0], cur, nxt, *args[1:], "--json", "--force"])
            cur = nxt
        return steps


@pytest.mark.parametrize("arch", ARCHS)
def test_timm_parity(arch, tmp_path, surgeon, coverage):
    p = Parity(arch, tmp_path, surgeon, coverage)
    try:
        cases = _cases(arch, p.n_src)
        # One reference per (N, C, reinit-agnostic): both formats hold the same tensors, so the
        # reference is built from one of them (alternating) and both DSTs are checked against it.
        plan: dict[tuple[int, int], list[tuple[str, Case]]] = {}
        for fmt in FORMATS:
            for case in cases[fmt]:
                plan.setdefault((case.num_classes, case.in_chans), []).append((fmt, case))
        for i, ((n, c), todo) in enumerate(plan.items()):
            ref_model = p.reference(n, c, p.src[FORMATS[i % 2]])
            ref_sd = ref_model.state_dict()
            for fmt, case in todo:
                p.run_case(fmt, case, ref_model, ref_sd)
            del ref_model, ref_sd
        assert not p.failures, "\n".join(p.failures)
        coverage(TIER, "architectures")
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


# Old TF weights carry a background class at row 0 (1001 outputs); timm's pretrained_cfg marks them
# with label_offset=1 and load_pretrained slices row 0 off every classifier. No tag of this timm
# version sets it, so the overlay does: the cfg says what such a file is.
BACKGROUND_ARCHS = ["inception_v3", "deit_tiny_distilled_patch16_224", "dla34"]


@pytest.mark.parametrize("arch", BACKGROUND_ARCHS)
def test_background_row_removed_as_timm_does(arch, tmp_path, surgeon, coverage):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd = timm.create_model(arch, pretrained=False, num_classes=1001).state_dict()
    for fmt in FORMATS:
        src, dst = tmp_path / f"src1001.{fmt}", tmp_path / f"dst.{fmt}"
        _save(sd, src)
        ref = timm_reference(arch, 1000, 3, src, 1000, label_offset=1)
        ref_sd = ref.state_dict()
        res = surgeon("adapt-head", src, dst, "--num-classes", 1000, "--json")
        assert res.code == 0, res.err
        out = _load(dst)
        assert set(out) == set(ref_sd)
        bad = [k for k in out if not _bits_equal(out[k], ref_sd[k])]
        assert not bad, f"{arch} [{fmt}]: DST differs from timm in {bad}"
        heads = {f"{c}.weight" for c in _as_tuple(ref.pretrained_cfg["classifier"])}
        assert all(out[h].shape[0] == 1000 for h in heads)
        ref.load_state_dict(out, strict=True, assign=True)
        coverage(TIER, "background-row checks (1001 -> 1000, label_offset=1)")
