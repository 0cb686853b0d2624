"""torchvision: every classification model's heads and stem are found, and DST loads strictly.

For each model in ``torchvision.models.list_models(module=torchvision.models)`` (``weights=None``;
GoogLeNet and Inception3 with their auxiliary heads), built on the meta device:

- ``adapt-head SRC DST --num-classes 7 --mode reinit`` reshapes exactly the tensors whose shape
  changes between the model built with 1000 and with 7 classes (SqueezeNet's 1x1-conv head and
  the auxiliary heads included), and DST loads with ``strict=True`` into the 7-class model;
- ``adapt-stem SRC DST --in-chans 4`` reshapes exactly the first conv that reads the image, and DST
  loads strictly into the model whose first conv is replaced by a 4-channel one (same kernel,
  stride, padding, dilation, bias).

SRC is a real ``.safetensors`` file of the model's tensors, all zeros, written sparse (header
only; the data region is a hole) so that 5.6 billion parameters cost no disk and no time. The
values do not matter here: detection reads names and shapes, and the timm tier checks the
arithmetic. Models up to ``WRITE_LIMIT`` parameters are adapted for real (DST written, read back
with ``safetensors.torch.load_file`` and loaded into a CPU model); larger ones (VGG, ViT-L/H,
RegNet-Y 128GF, ...) run with ``--dry-run --json`` and the planned DST (every key with its
shape and dtype, from the report) is loaded strictly into the meta model.
"""

from __future__ import annotations

import json
import struct
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

torchvision = pytest.importorskip("torchvision")  # the compat venv always has it; never skipped there
import torchvision.models as tvm  # noqa: E402

TIER = "torchvision"
N_NEW = 7
C_NEW = 4
WRITE_LIMIT = 100_000_000  # parameters; above it the commands run with --dry-run (see the docstring)
MODELS = tvm.list_models(module=tvm)

_ST_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
_TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64}


def _kwargs(name: str, num_classes: int) -> dict:
    kw: dict = {"weights": None, "num_classes": num_classes}
    if name in ("googlenet", "inception_v3"):
        kw.update(aux_logits=True, init_weights=False)
    return kw


def _build(name: str, num_classes: int) -> nn.Module:
    """The model on the meta device (no memory, no init); RegNet computes widths with real tensors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return tvm.get_model(name, **_kwargs(name, num_classes))
        except Exception:  # noqa: BLE001 - RegNet: .tolist() of a meta tensor
            from tests.compat.dump_shapes import _EmptyParams  # CPU compute, params moved to meta

            with _EmptyParams():
                return tvm.get_model(name, **_kwargs(name, num_classes))


def _write_sparse_safetensors(sd: dict[str, torch.Tensor], path: Path) -> None:
    """A valid .safetensors file of zeros: header, then a hole as long as the data.

    Written by hand because no library writes a tensor it does not hold, and holding 2.5 GB of
    zeros for ViT-H would cost what this tier cannot spend. Layout per the safetensors spec:
    u64 little-endian header size, JSON header (padded to 8 bytes), data.
    """
    header: dict = {}
    offset = 0
    for k, t in sd.items():
        n = t.numel() * t.element_size()
        header[k] = {"dtype": _ST_DTYPE[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)


def _first_conv(model: nn.Module) -> str:
    """The first Conv2d in module order that reads 3 channels: the one the image goes into."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d) and mod.in_channels == 3:
            return name
    raise AssertionError("no conv reads 3 channels")


def _replace_first_conv(model: nn.Module, name: str, in_chans: int) -> None:
    old = model.get_submodule(name)
    new = nn.Conv2d(
        in_chans,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device="meta",
    )
    model.set_submodule(name, new)


def _load_strict(model: nn.Module, dst: Path | None, planned: dict | None) -> None:
    """DST (or the dry run's planned DST, as meta tensors) loads into ``model`` with strict=True."""
    if dst is not None:
        model = model.to_empty(device="cpu")
        sd = OrderedDict(load_file(str(dst)))
        # Module versions: torch.save keeps them on the state dict, safetensors has no place for
        # them, and MNASNet refuses a state dict without its version ("version should be set to
        # 1 or 2 instead of None"), whoever wrote the file. Give it what torch.save would carry.
        sd._metadata = model.state_dict()._metadata
        model.load_state_dict(sd, strict=True)
        return
    assert planned is not None
    meta = {
        k["name"]: torch.empty(k["after"]["shape"], dtype=_TORCH_DTYPE[k["after"]["dtype"]], device="meta")
        for k in planned["keys"]
        if k["action"] != "dropped"
    }
    model.load_state_dict(meta, strict=True, assign=True)


def _reshaped(report: dict) -> dict[str, list[int]]:
    return {k["name"]: k["after"]["shape"] for k in report["keys"] if k["action"] == "reshaped"}


@pytest.mark.parametrize("name", MODELS)
def test_torchvision_heads_and_stem(name, tmp_path, surgeon, coverage):
    base = _build(name, 1000)
    sd = base.state_dict()
    params = sum(t.numel() for t in sd.values())
    write = params <= WRITE_LIMIT
    src = tmp_path / "src.safetensors"
    _write_sparse_safetensors(sd, src)
    dry = [] if write else ["--dry-run"]

    # heads: the tensors whose shape depends on the class count
    new = _build(name, N_NEW)
    new_sd = new.state_dict()
    assert set(new_sd) == set(sd)
    heads = {k: list(new_sd[k].shape) for k in sd if new_sd[k].shape != sd[k].shape}
    assert heads, f"{name}: no tensor depends on num_classes"
    dst = tmp_path / "head.safetensors"
    res = surgeon("adapt-head", src, dst, "--num-classes", N_NEW, "--mode", "reinit", "--json", *dry)
    assert res.code == 0, f"{name}: adapt-head exit {res.code}: {res.err}"
    report = json.loads(res.out)
    assert _reshaped(report) == heads, f"{name}: reshaped {_reshaped(report)}, the heads are {heads}"
    _load_strict(new, dst if write else None, report)
    dst.unlink(missing_ok=True)

    # stem: the first conv, replaced by a C-channel one
    first = _first_conv(base)
    w = sd[first + ".weight"]
    dst = tmp_path / "stem.safetensors"
    res = surgeon("adapt-stem", src, dst, "--in-chans", C_NEW, "--json", *dry)
    assert res.code == 0, f"{name}: adapt-stem exit {res.code}: {res.err}"
    report = json.loads(res.out)
    expected = {first + ".weight": [w.shape[0], C_NEW, *w.shape[2:]]}
    assert _reshaped(report) == expected, f"{name}: reshaped {_reshaped(report)}, the first conv is {expected}"
    _replace_first_conv(base, first, C_NEW)
    _load_strict(base, dst if write else None, report)
    dst.unlink(missing_ok=True)

    coverage(TIER, "models (head + stem found, DST loads strictly)")
    coverage(TIER, "written and loaded" if write else f"dry-run plan loaded (over {WRITE_LIMIT // 10**6}M params)")
