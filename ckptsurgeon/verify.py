"""``--verify``: reopen a written checkpoint and check every tensor against what was intended.

Copied tensors (their bytes came straight from a source file) are compared byte for byte with the
source; computed ones (a new head, a cast, a stem) are compared bit for bit with the values the
pipeline produced. One tensor is in memory at a time; copied bytes are compared in chunks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ckptsurgeon.checkpoint import FileSpan, TensorRef
from ckptsurgeon.errors import SurgeonError

if TYPE_CHECKING:
    import torch

_CHUNK = 16 * 1024 * 1024


def verify_output(dst: str | os.PathLike, refs: Sequence[TensorRef], *, remove_on_failure: bool = True) -> None:
    """Check that ``dst`` holds exactly ``refs``: the same names, shapes, dtypes and bytes.

    Raises SurgeonError naming the first tensor that differs. By default a DST that fails is
    removed, so a failed run leaves no bad output behind.

    Example:
        >>> state, _ = Pipeline([Cast("float16")]).apply(open_checkpoint("model.pth"))
        >>> verify_output("model_fp16.safetensors", list(state.tensors.values()))
    """
    from ckptsurgeon.formats import open_checkpoint

    dst = os.fspath(dst)
    try:
        try:
            out = open_checkpoint(dst)
        except SurgeonError as e:
            raise SurgeonError(f"cannot reopen the output ({e.message})") from None
        _compare(out.tensors, refs)
    except SurgeonError as e:
        if remove_on_failure:
            with contextlib.suppress(OSError):
                os.unlink(dst)
        where = "; the output was removed" if remove_on_failure else ""
        raise SurgeonError(f"verification failed: {e.message}{where}", path=dst) from None


def _compare(got: dict[str, TensorRef], refs: Sequence[TensorRef]) -> None:
    want = {r.name: r for r in refs}
    missing = [n for n in want if n not in got]
    extra = [n for n in got if n not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(map(repr, missing[:3]))}")
        if extra:
            parts.append(f"unexpected {', '.join(map(repr, extra[:3]))}")
        raise SurgeonError(f"the output's tensor names differ from what was intended ({'; '.join(parts)})")
    for name, ref in want.items():
        out = got[name]
        if tuple(out.shape) != tuple(ref.shape) or out.dtype != ref.dtype:
            raise SurgeonError(
                f"tensor {name!r} is {out.dtype} {list(out.shape)} in the output, "
                f"{ref.dtype} {list(ref.shape)} was intended"
            )
        if ref.span is not None and out.span is not None:
            at = _first_difference(ref.span, out.span)
        else:
            at = _first_difference_loaded(ref, out)
        if at is not None:
            kind = "bytes copied from the source" if ref.span is not None else "computed values"
            raise SurgeonError(f"tensor {name!r} differs from the {kind} (first at byte {at:,})")


def _first_difference(a: FileSpan, b: FileSpan) -> int | None:
    """Offset of the first differing byte of two equally long spans, read chunk by chunk."""
    if a.length != b.length:
        return min(a.length, b.length)
    with open(a.path, "rb") as fa, open(b.path, "rb") as fb:
        pos = 0
        while pos < a.length:
            n = min(_CHUNK, a.length - pos)
            x, y = os.pread(fa.fileno(), n, a.offset + pos), os.pread(fb.fileno(), n, b.offset + pos)
            if x != y:
                if len(x) != len(y):
                    return pos + min(len(x), len(y))
                return pos + next(i for i in range(len(x)) if x[i] != y[i])
            pos += n
    return None


def _raw(t: torch.Tensor) -> torch.Tensor:
    import torch

    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)


def _first_difference_loaded(ref: TensorRef, out: TensorRef) -> int | None:
    """Bit-exact comparison of decoded tensors (NaN payloads and -0.0 included)."""
    import torch

    a, b = _raw(ref.load()), _raw(out.load())
    if a.numel() != b.numel():
        return min(a.numel(), b.numel())
    diff = torch.nonzero(a != b)
    return int(diff[0, 0]) if diff.numel() else None
