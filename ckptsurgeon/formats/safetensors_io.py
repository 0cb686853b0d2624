"""Read safetensors headers and write safetensors files tensor by tensor."""

from __future__ import annotations

import json
import math
import os
import struct
from typing import BinaryIO

from ckptsurgeon import dtypes
from ckptsurgeon.checkpoint import Checkpoint, FileSpan, TensorRef
from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.formats.sniff import MAX_HEADER, SAFETENSORS


def read(path: str) -> Checkpoint:
    """Read a safetensors file's header (no tensor data) into a Checkpoint.

    The header is parsed and checked here, by the format's rules (``_check_header``), not with
    ``safetensors.safe_open``: the library does not expose where each tensor's bytes are (which
    byte-copying writers need), and opening a file with it imports numpy or torch for its
    framework, a third of ``inspect``'s time. tests/hostile holds the files both must refuse.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise SurgeonError("too short for a safetensors file", path=path)
        (n,) = struct.unpack("<Q", raw_len)
        if n > MAX_HEADER:
            raise SurgeonError(
                f"safetensors header length {n:,} bytes is absurd (limit 100 MB): "
                "a Git LFS pointer or a corrupt download?",
                path=path,
            )
        if n + 8 > size:
            raise SurgeonError(
                f"safetensors header length {n:,} bytes runs past the end of the file "
                f"({size:,} bytes): a truncated download?",
                path=path,
            )
        header_bytes = f.read(n)
    try:
        header = json.loads(header_bytes, object_pairs_hook=_no_duplicates)
    except _Duplicate as e:
        raise SurgeonError(f"safetensors header names tensor {e.args[0]!r} twice", path=path) from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise SurgeonError(f"safetensors header is not valid JSON ({e})", path=path) from None
    if not isinstance(header, dict):
        raise SurgeonError("safetensors header is not a JSON object", path=path)
    entries = _check_header(header, size - 8 - n, path)
    metadata = header.get("__metadata__") or {}

    data_start = 8 + n
    entries.sort()
    tensors: dict[str, TensorRef] = {}
    for begin, name, shape, dt, end in entries:
        span = FileSpan(path, data_start + begin, end - begin)
        tensors[name] = TensorRef(name, shape, dt.name, span=span)
    return Checkpoint(path=path, format=SAFETENSORS, tensors=tensors, metadata=dict(metadata))


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_header(header: dict, data_len: int, path: str) -> list[tuple]:
    """Validate the header as the format requires, with messages naming the tensor and the fault.

    The safetensors library checks the same rules afterwards, but its messages name less (and it
    accepts duplicate names, last one wins; duplicates are refused while parsing the JSON).
    Returns ``(begin, name, shape, dtype, end)`` per tensor, in the order their bytes lie.
    """
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        bad = next((k for k, v in meta.items() if not isinstance(v, str)), None) if isinstance(meta, dict) else None
        what = f"{bad!r} holds a {type(meta[bad]).__name__}" if bad is not None else f"it is a {type(meta).__name__}"
        raise SurgeonError(f"safetensors __metadata__ must map strings to strings; {what}", path=path)
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise SurgeonError(
                f"tensor {name!r} has a malformed header entry (needs dtype, shape, data_offsets)", path=path
            )
        dt = dtypes.BY_SAFETENSORS.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dt is None:
            raise SurgeonError(
                f"tensor {name!r} has dtype {info['dtype']!r}, which is unknown or unsupported", path=path
            )
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise SurgeonError(f"tensor {name!r} has a malformed shape {shape!r}", path=path)
        if any(d < 0 for d in shape):
            raise SurgeonError(f"tensor {name!r} has a negative dimension in its shape {shape}", path=path)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(x) and x >= 0 for x in offsets)):
            raise SurgeonError(f"tensor {name!r} has malformed data_offsets {offsets!r}", path=path)
        begin, end = offsets
        if begin > end:
            raise SurgeonError(f"tensor {name!r} has data_offsets {offsets}: begin is after end", path=path)
        need = math.prod(shape) * dt.itemsize
        if need >= 2**64:
            raise SurgeonError(f"tensor {name!r} has shape {shape}, too large: its byte size overflows", path=path)
        if need != end - begin:
            raise SurgeonError(
                f"tensor {name!r}: {info['dtype']} {shape} needs {need:,} bytes but its data_offsets "
                f"{offsets} span {end - begin:,}",
                path=path,
            )
        entries.append((begin, name, tuple(shape), dt, end))
    entries.sort(key=lambda e: (e[0], e[4], e[1]))
    prev_name, prev_end = None, 0
    for begin, name, _shape, _dt, end in entries:
        if begin < prev_end:
            raise SurgeonError(
                f"tensors {prev_name!r} and {name!r} overlap (data_offsets up to {prev_end:,} and from {begin:,})",
                path=path,
            )
        if begin > prev_end:
            after = f"after {prev_name!r}" if prev_name else "before the first tensor"
            raise SurgeonError(f"data_offsets leave a gap of {begin - prev_end:,} bytes {after}", path=path)
        prev_name, prev_end = name, end
    if prev_end > data_len:
        raise SurgeonError(
            f"tensor {prev_name!r} ends at byte {prev_end:,} of the data but the file holds {data_len:,}: truncated?",
            path=path,
        )
    if prev_end < data_len:
        raise SurgeonError(
            f"{data_len - prev_end:,} bytes after the last tensor are not described by the header", path=path
        )
    return entries


class _Duplicate(Exception):
    pass


def _no_duplicates(pairs: list) -> dict:
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            raise _Duplicate(k)
        seen[k] = v
    return seen


def header_for(refs: list[TensorRef], metadata: dict[str, str]) -> tuple[bytes, list[tuple[TensorRef, int]]]:
    """Build a safetensors header for ``refs`` in that order; return it padded, with each offset."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    placed = []
    for ref in refs:
        dt = dtypes.get(ref.dtype)
        if dt.safetensors is None:
            raise SurgeonError(f"tensor {ref.name!r} has dtype {ref.dtype}, which safetensors cannot store")
        header[ref.name] = {
            "dtype": dt.safetensors,
            "shape": list(ref.shape),
            "data_offsets": [offset, offset + ref.nbytes],
        }
        placed.append((ref, offset))
        offset += ref.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the library writes it
    return struct.pack("<Q", len(text)) + text, placed


def write(out: BinaryIO, refs: list[TensorRef], metadata: dict[str, str], copy_span, tensor_bytes) -> None:
    """Stream ``refs`` into ``out``: spans are byte-copied, other tensors are encoded one at a time.

    The safetensors library's writer needs every tensor in memory at once; this one needs one.
    """
    header, placed = header_for(refs, metadata)
    out.write(header)
    for ref, _ in placed:
        if ref.span is not None:
            copy_span(ref.span, out)
        else:
            out.write(tensor_bytes(ref))
