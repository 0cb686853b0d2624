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

    The safetensors library validates the file (its own parser: offsets, sizes, dtypes); it does
    not expose where each tensor's bytes are, which byte-copying writers need, so the header's
    offsets are then read from the JSON directly.
    """
    from safetensors import SafetensorError, safe_open

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
    except (ValueError, UnicodeDecodeError) as e:
        raise SurgeonError(f"safetensors header is not valid JSON ({e})", path=path) from None
    if not isinstance(header, dict):
        raise SurgeonError("safetensors header is not a JSON object", path=path)
    try:
        with safe_open(path, framework="np") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise SurgeonError(f"invalid safetensors file: {_clean(e)}", path=path) from None

    data_start = 8 + n
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dt = dtypes.BY_SAFETENSORS[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise SurgeonError(f"tensor {name!r} has an unsupported or malformed header entry", path=path) from None
        if any(d < 0 for d in shape) or math.prod(shape) * dt.itemsize != end - begin:
            raise SurgeonError(f"tensor {name!r}: shape {list(shape)} does not match its byte span", path=path)
        entries.append((begin, name, shape, dt, end))
    entries.sort()
    tensors: dict[str, TensorRef] = {}
    for begin, name, shape, dt, end in entries:
        span = FileSpan(path, data_start + begin, end - begin)
        tensors[name] = TensorRef(name, shape, dt.name, span=span)
    return Checkpoint(path=path, format=SAFETENSORS, tensors=tensors, metadata=dict(metadata))


class _Duplicate(Exception):
    pass


def _no_duplicates(pairs: list) -> dict:
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            raise _Duplicate(k)
        seen[k] = v
    return seen


def _clean(e: Exception) -> str:
    return " ".join(str(e).split())


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
        header[ref.name] = {"dtype": dt.safetensors, "shape": list(ref.shape), "data_offsets": [offset, offset + ref.nbytes]}
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
