"""Compare two checkpoints tensor by tensor: the data behind ``ckptsurgeon diff``.

Names are compared first (from headers); then each common tensor, one pair in memory at a time.
Tensors whose bytes lie in files are compared as bytes first and decoded only when the bytes differ,
so identical weights are confirmed without importing torch.

Semantics:
- Exact mode (no ``atol``/``rtol``): bit-for-bit, except that a NaN matches a NaN in the same place
  whatever its payload. ``-0.0`` and ``0.0`` differ (their bits do); ``atol=0`` compares them as
  numbers instead, which makes them equal.
- Tolerance mode (``atol`` and/or ``rtol`` given; the other one is 0): ``torch.isclose(a, b, rtol,
  atol, equal_nan=True)`` elementwise, i.e. ``|a - b| <= atol + rtol * |b|``, B being the reference;
  infinities match when they have the same sign.
- Tensors of different dtypes are compared by value after upcasting (float64, int64 or complex128)
  and are still listed as dtype mismatches.
- ``max_abs`` is the largest ``|a - b|`` (the smallest ``atol`` that would pass), ``max_rel`` the
  largest ``|a - b| / |b|`` (the smallest ``rtol`` that would pass alone); both are infinite where
  no tolerance can pass (NaN against a number, inf against anything else, a difference against 0).
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckptsurgeon import dtypes
from ckptsurgeon.checkpoint import Checkpoint, FileSpan, TensorRef
from ckptsurgeon.errors import SurgeonError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DiffResult",
    "Mismatch",
    "ValueDiff",
    "compare_refs",
    "compare_tensors",
    "diff_checkpoints",
    "diff_states",
    "same_bytes",
]

_READ_CHUNK = 8 << 20  # bytes per pread when comparing spans
_ELEM_CHUNK = 1 << 22  # elements per step when comparing decoded tensors (bounds float64 temporaries)


@dataclass
class Mismatch:
    """A tensor whose shape (or dtype) differs: what A has and what B has."""

    name: str
    a: Any  # shape as a list, or dtype name
    b: Any

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "a": self.a, "b": self.b}


@dataclass
class ValueDiff:
    """How one tensor's values differ: the worst difference, how many elements, and where.

    ``where`` is the multi-index of the largest ``|a - b|`` among the elements out of tolerance
    (the first one on ties); ``a`` and ``b`` are the values there.
    """

    name: str
    max_abs: float
    max_rel: float
    num_mismatched: int
    numel: int
    where: list[int]
    a: Any
    b: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_abs": _jnum(self.max_abs),
            "max_rel": _jnum(self.max_rel),
            "num_mismatched": self.num_mismatched,
            "numel": self.numel,
            "where": list(self.where),
            "a": _jnum(self.a),
            "b": _jnum(self.b),
        }


@dataclass
class DiffResult:
    """Everything ``diff`` found; ``to_json()`` is the ``--json`` contract."""

    a_path: str
    b_path: str
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    shape_mismatch: list[Mismatch] = field(default_factory=list)
    dtype_mismatch: list[Mismatch] = field(default_factory=list)
    value_mismatch: list[ValueDiff] = field(default_factory=list)  # largest max_abs first
    equal_names: list[str] = field(default_factory=list)
    atol: float | None = None
    rtol: float | None = None
    keys_only: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def num_equal(self) -> int:
        return len(self.equal_names)

    @property
    def equal(self) -> bool:
        """Same names, shapes, dtypes and (unless ``keys_only``) values within tolerance."""
        found = (self.only_in_a, self.only_in_b, self.shape_mismatch, self.dtype_mismatch, self.value_mismatch)
        return not any(found)

    @property
    def exact(self) -> bool:
        return self.atol is None and self.rtol is None

    def to_json(self) -> dict[str, Any]:
        return {
            "equal": self.equal,
            "only_in_a": list(self.only_in_a),
            "only_in_b": list(self.only_in_b),
            "shape_mismatch": [m.to_json() for m in self.shape_mismatch],
            "dtype_mismatch": [m.to_json() for m in self.dtype_mismatch],
            "value_mismatch": [v.to_json() for v in self.value_mismatch],
            "num_equal": self.num_equal,
            "a": self.a_path,
            "b": self.b_path,
            "atol": self.atol,
            "rtol": self.rtol,
            "keys_only": self.keys_only,
            "notes": list(self.notes),
        }


def _jnum(x: Any) -> Any:
    """A number for strict JSON: non-finite floats become "inf", "-inf" or "nan"; complex a string."""
    if isinstance(x, complex):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


# --------------------------------------------------------------------------- bytes


class _Files:
    """Open file descriptors by path, so comparing many spans does not reopen files."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}

    def fd(self, path: str) -> int:
        if path not in self.fds:
            self.fds[path] = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return self.fds[path]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def same_bytes(a: TensorRef, b: TensorRef, *, _files: _Files | None = None) -> bool | None:
    """Whether two tensors' bytes are identical, read in chunks from their files without decoding.

    Returns None when that cannot be told from bytes (no file span on a side, or dtype or shape
    differ); the caller then decodes.

    Example:
        >>> a, b = open_checkpoint("model.pth"), open_checkpoint("model.safetensors")
        >>> same_bytes(a.tensors["fc.weight"], b.tensors["fc.weight"])
        True
    """
    if a.span is None or b.span is None or a.dtype != b.dtype or a.shape != b.shape:
        return None
    sa, sb = a.span, b.span
    if sa.length != sb.length:
        return None
    if sa.length == 0 or (sa.offset == sb.offset and _same_file(sa, sb)):
        return True
    files = _files or _Files()
    try:
        fa, fb = files.fd(sa.path), files.fd(sb.path)
        done = 0
        while done < sa.length:
            n = min(_READ_CHUNK, sa.length - done)
            ca = os.pread(fa, n, sa.offset + done)
            cb = os.pread(fb, n, sb.offset + done)
            if len(ca) != n or len(cb) != n:
                return None  # truncated file: let the decoder raise its error
            if ca != cb:
                return False
            done += n
        return True
    finally:
        if _files is None:
            files.close()


def _same_file(a: FileSpan, b: FileSpan) -> bool:
    try:
        return os.path.samefile(a.path, b.path)
    except OSError:
        return False


# --------------------------------------------------------------------------- values


def _common(a: str, b: str) -> str:
    """The dtype two tensors are compared in: their own when equal, else float64/int64/complex128."""
    if a == b:
        return a
    if a.startswith("complex") or b.startswith("complex"):
        return "complex128"
    if dtypes.get(a).is_floating or dtypes.get(b).is_floating:
        return "float64"
    return "int64"


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor whose equality is bit equality (complex: two words per element)."""
    import torch

    if t.is_complex():
        t = torch.view_as_real(t).reshape(-1)
    if t.dtype == torch.bool:
        return t
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _absdiff(a: torch.Tensor, b: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """|a - b| in float64, 0 where a == b or both are NaN, inf where nothing can make them match.

    ``a``/``b`` are in their common dtype, ``wa``/``wb`` the same values widened to float64 (or
    complex128). Integers are subtracted as integers: float64 would round away a difference of 1
    between numbers above 2**53.
    """
    import torch

    d = (wa - wb).abs()
    if not (a.is_floating_point() or a.is_complex()):
        exact = (a.long() - b.long()).abs().double()  # wraps only beyond 2**63, where d is close enough
        return torch.where(d < 2.0**62, exact, d)
    same = (wa == wb) | (wa.isnan() & wb.isnan())
    d = torch.where(same, torch.zeros((), dtype=d.dtype), d)
    return d.masked_fill(d.isnan(), math.inf)


def _reldiff(d: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    import torch

    r = d / b.abs()
    r = torch.where(d == 0, torch.zeros((), dtype=r.dtype), r)
    return r.masked_fill(r.isnan(), math.inf)


def compare_tensors(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    name: str = "",
) -> ValueDiff | None:
    """Compare two tensors of the same shape; None when they match, else how they differ.

    Exact (bit-for-bit, NaN matching NaN) unless ``atol`` or ``rtol`` is given, in which case
    ``torch.isclose(a, b, rtol, atol, equal_nan=True)`` decides (the missing one is 0). Work is done
    in chunks, so temporaries stay small whatever the tensor's size.

    Example:
        >>> compare_tensors(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5])).max_abs
        0.5
        >>> compare_tensors(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]), atol=0.5) is None
        True
    """
    import torch

    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"shapes differ: {list(a.shape)} vs {list(b.shape)}")
    exact = atol is None and rtol is None
    atol_, rtol_ = float(atol or 0.0), float(rtol or 0.0)
    da, db = dtypes.short_name(a.dtype), dtypes.short_name(b.dtype)
    common = dtypes.torch_dtype(_common(da, db))
    wide = torch.complex128 if common.is_complex else torch.float64
    shape = tuple(a.shape)
    fa, fb = a.reshape(-1), b.reshape(-1)
    numel = fa.numel()

    count, max_abs, max_rel = 0, 0.0, 0.0
    best_d, best_i = -1.0, -1
    for s in range(0, numel, _ELEM_CHUNK):
        ca, cb = fa[s : s + _ELEM_CHUNK].to(common), fb[s : s + _ELEM_CHUNK].to(common)
        if exact:
            mism = _bits(ca) != _bits(cb)
            if ca.is_complex():
                mism = mism.view(-1, 2).any(-1)
            idx = mism.nonzero().reshape(-1)
            if idx.numel() == 0:
                continue
            sa, sb = ca[idx], cb[idx]
            wa, wb = sa.to(wide), sb.to(wide)
            keep = ~(wa.isnan() & wb.isnan())
            idx, sa, sb, wa, wb = idx[keep], sa[keep], sb[keep], wa[keep], wb[keep]
            if idx.numel() == 0:
                continue
            d = _absdiff(sa, sb, wa, wb)
            dm, where = d, idx
        else:
            wa, wb = ca.to(wide), cb.to(wide)
            d = _absdiff(ca, cb, wa, wb)
            if ca.is_floating_point() or ca.is_complex():
                mism = ~torch.isclose(wa, wb, rtol=rtol_, atol=atol_, equal_nan=True)
            else:  # the same rule, on the exact integer difference
                mism = ~(d <= atol_ + rtol_ * wb.abs())
            dm = torch.where(mism, d, torch.full((), -1.0, dtype=d.dtype))
            where = None
        count += int(mism.sum()) if where is None else int(where.numel())
        if d.numel():
            max_abs = max(max_abs, float(d.max()))
            max_rel = max(max_rel, float(_reldiff(d, wb).max()))
            k = int(dm.argmax())  # first maximum on ties
            if float(dm[k]) > best_d:
                best_d, best_i = float(dm[k]), s + (int(where[k]) if where is not None else k)
    if count == 0:
        return None
    return ValueDiff(
        name=name,
        max_abs=max_abs,
        max_rel=max_rel,
        num_mismatched=count,
        numel=numel,
        where=_unravel(best_i, shape),
        a=fa[best_i].item(),
        b=fb[best_i].item(),
    )


def _unravel(i: int, shape: tuple[int, ...]) -> list[int]:
    out = []
    for d in reversed(shape):
        i, r = divmod(i, d)
        out.append(r)
    return out[::-1]


def compare_refs(
    a: TensorRef, b: TensorRef, *, atol: float | None = None, rtol: float | None = None, _files: _Files | None = None
) -> ValueDiff | None:
    """Compare two tensors by reference: bytes first (no decoding), values only if the bytes differ.

    Example:
        >>> compare_refs(ckpt_a.tensors["fc.weight"], ckpt_b.tensors["fc.weight"], atol=1e-6) is None
        True
    """
    if a.shape != b.shape:
        raise ValueError(f"{a.name}: shapes differ: {list(a.shape)} vs {list(b.shape)}")
    if a.numel == 0 or same_bytes(a, b, _files=_files):
        return None
    return compare_tensors(a.load(), b.load(), atol=atol, rtol=rtol, name=a.name)


# --------------------------------------------------------------------------- checkpoints


def _check_tolerance(atol: float | None, rtol: float | None) -> None:
    for tol, flag in ((atol, "--atol"), (rtol, "--rtol")):
        if tol is not None and not (math.isfinite(tol) and tol >= 0):
            raise SurgeonError(f"{flag} must be a finite number >= 0, not {tol}")


def diff_states(
    a: Mapping[str, TensorRef],
    b: Mapping[str, TensorRef],
    *,
    atol: float | None = None,
    rtol: float | None = None,
    keys_only: bool = False,
    filters: Sequence[str] = (),
    progress: Callable[[int], Callable[[int], None]] | None = None,
    a_path: str = "A",
    b_path: str = "B",
) -> DiffResult:
    """Compare two name → TensorRef maps; one pair of tensors is decoded at a time.

    ``filters`` (globs, any may match) limit the comparison; ``keys_only`` compares names, shapes
    and dtypes and reads no data. ``progress(total_bytes)`` is called once before the values are
    compared and returns a function that is called with the bytes of each pair once it is compared.
    """
    _check_tolerance(atol, rtol)

    def keep(n: str) -> bool:
        return not filters or any(fnmatch.fnmatchcase(n, g) for g in filters)

    res = DiffResult(a_path=a_path, b_path=b_path, atol=atol, rtol=rtol, keys_only=keys_only)
    res.only_in_a = [n for n in a if keep(n) and n not in b]
    res.only_in_b = [n for n in b if keep(n) and n not in a]
    pairs = [(n, ra, b[n]) for n, ra in a.items() if n in b and keep(n)]
    advance = None
    if progress is not None and not keys_only:
        advance = progress(sum(ra.nbytes + rb.nbytes for _, ra, rb in pairs if ra.shape == rb.shape))
    files = _Files()
    try:
        for name, ra, rb in pairs:
            if ra.dtype != rb.dtype:
                res.dtype_mismatch.append(Mismatch(name, ra.dtype, rb.dtype))
            if ra.shape != rb.shape:
                res.shape_mismatch.append(Mismatch(name, list(ra.shape), list(rb.shape)))
                continue
            vd = None if keys_only else compare_refs(ra, rb, atol=atol, rtol=rtol, _files=files)
            if vd is not None:
                vd.name = name
                res.value_mismatch.append(vd)
            elif ra.dtype == rb.dtype:
                res.equal_names.append(name)
            if advance is not None:
                advance(ra.nbytes + rb.nbytes)
    finally:
        files.close()
    res.value_mismatch.sort(key=lambda v: -v.max_abs)  # stable: ties keep A's order
    return res


def _open_side(path: str, key: str | None, shared_key: bool) -> tuple[Checkpoint, bool]:
    """Open one side; with a shared ``--key``, a flat state dict without that key is used as is."""
    from ckptsurgeon.formats import open_checkpoint

    try:
        return open_checkpoint(path, key=key), bool(key)
    except SurgeonError as e:
        if not (key and shared_key):
            raise
        try:
            ckpt = open_checkpoint(path)
        except SurgeonError:
            raise e from None
        if ckpt.container.key is not None:
            raise
        return ckpt, False


def diff_checkpoints(
    a: str | os.PathLike,
    b: str | os.PathLike,
    *,
    key: str | None = None,
    key_a: str | None = None,
    key_b: str | None = None,
    strip_prefix: Sequence[str] = (),
    filters: Sequence[str] = (),
    atol: float | None = None,
    rtol: float | None = None,
    keys_only: bool = False,
    progress: Callable[[int], Callable[[int], None]] | None = None,
) -> DiffResult:
    """Compare two checkpoints of any supported formats; the data behind ``ckptsurgeon diff``.

    ``key`` picks the state dict on both sides (a side that is a flat state dict without it, such as
    a safetensors file, is used as is); ``key_a``/``key_b`` pick per side. ``strip_prefix`` applies
    to both sides, before ``filters``.

    Example:
        >>> res = diff_checkpoints("expected.safetensors", "out.pth", atol=1e-6)
        >>> res.equal, [v.name for v in res.value_mismatch]
        (False, ['fc.weight'])
    """
    from ckptsurgeon.pipeline import Pipeline
    from ckptsurgeon.transforms.keys import StripPrefix

    _check_tolerance(atol, rtol)
    a, b = os.fspath(a), os.fspath(b)
    states, notes, used = [], [], []
    for label, path, own in (("A", a, key_a), ("B", b, key_b)):
        ckpt, key_used = _open_side(path, own or key, shared_key=own is None)
        used.append(key_used)
        state, report = Pipeline([StripPrefix(p) for p in strip_prefix]).apply(ckpt)
        states.append(state)
        notes += [f"{label}: {n}" for n in report.notes if not n.startswith("tensors sharing one storage")]
        if key and own is None and not key_used:
            notes.append(f"{label}: --key {key} does not apply (the file is a flat state dict); used as is")
    if key and key_a is None and key_b is None and not any(used):
        # the key applied to neither side: a mistake, not something to ignore
        _open_side(a, key, shared_key=False)
    res = diff_states(
        states[0].tensors,
        states[1].tensors,
        atol=atol,
        rtol=rtol,
        keys_only=keys_only,
        filters=filters,
        progress=progress,
        a_path=a,
        b_path=b,
    )
    res.notes = notes
    return res
