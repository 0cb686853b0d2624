"""Exact tensor comparisons shared by the tests: raw bytes, so NaN payloads and -0.0 count."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def load(path: str | Path) -> dict[str, torch.Tensor]:
    """A written output, whichever format its extension names."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).contiguous().view(torch.uint8)


def assert_same(a: torch.Tensor, b: torch.Tensor, name: str = "") -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
    assert torch.equal(bits(a), bits(b)), name


def assert_rest_bit_exact(src: dict, out: dict, changed: set[str]) -> None:
    """Every tensor not in ``changed`` is kept, bit for bit, in the source's order."""
    assert [k for k in out if k not in changed] == [k for k in src if k not in changed]
    for k in src:
        if k not in changed:
            assert_same(out[k], src[k], k)
