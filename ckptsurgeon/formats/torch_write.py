"""Write torch zips without torch: ``data.pkl`` and the zip records, by hand.

torch's own writer (``PyTorchFileWriter``) takes every record through Python memory and computes
its CRC again; this one copies an untouched storage record with ``copy_file_range`` and reuses the
CRC the source zip already holds, so a .pt → .pt rewrite runs at the disk's speed and needs no
torch import. Its output is what ``torch.save`` writes: stored records, data 64-byte aligned,
zip64 end records, a protocol-2 ``data.pkl`` with ``_rebuild_tensor_v2`` (``_v3`` with an
``UntypedStorage`` for dtypes that have no storage class, as torch does).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

from ckptsurgeon import dtypes
from ckptsurgeon.checkpoint import FileSpan
from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.formats.torch_io import TYPED_STORAGES, _data_offset


def record_crcs(path: str) -> dict[tuple[int, int], int]:
    """``{(data offset, size): CRC-32}`` of every stored record of a zip (empty if not a zip)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return {}
            with zipfile.ZipFile(f) as zf:
                return {
                    (_data_offset(f, i, path), i.file_size): i.CRC
                    for i in zf.infolist()
                    if i.compress_type == zipfile.ZIP_STORED
                }
    except (OSError, zipfile.BadZipFile, SurgeonError):
        return {}


# --- writing -------------------------------------------------------------------------------------


class _Global:
    """A global named in the pickle (``torch._utils _rebuild_tensor_v2``) without importing it."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __reduce__(self) -> str:
        return self.name  # pickle then calls save_global, which _StatePickler writes as GLOBAL

    def __call__(self, *args: Any) -> Any:  # pickle requires a reduce function to be callable
        raise TypeError("a stand-in for pickling only")


_V2 = _Global("torch._utils", "_rebuild_tensor_v2")
_V3 = _Global("torch._utils", "_rebuild_tensor_v3")
_UNTYPED = _Global("torch.storage", "UntypedStorage")
_GLOBALS: dict[tuple[str, str], _Global] = {}


def _global(module: str, name: str) -> _Global:
    return _GLOBALS.setdefault((module, name), _Global(module, name))


@dataclass(eq=False)
class StorageOut:
    """One storage record of the output: ``numel`` elements of ``dtype`` as ``data/KEY``."""

    key: str
    dtype: str
    numel: int


@dataclass(eq=False)
class TensorOut:
    """One tensor of the output: a view (offset, shape, stride in elements) into a StorageOut."""

    storage: StorageOut
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def __reduce__(self):
        hooks = collections.OrderedDict()
        args = (self.storage, self.offset, tuple(self.shape), tuple(self.stride), False, hooks)
        if dtypes.get(self.storage.dtype).storage in TYPED_STORAGES:
            return (_V2, args)
        return (_V3, (*args, _global("torch", self.storage.dtype)))


class _StatePickler(pickle._Pickler):  # the Python pickler: its save_global can be overridden
    def save_global(self, obj: Any, name: Any = None) -> None:
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, StorageOut):
            return None
        dt = dtypes.get(obj.dtype)
        if dt.storage in TYPED_STORAGES:
            return ("storage", _global("torch", dt.storage), obj.key, "cpu", obj.numel)
        return ("storage", _UNTYPED, obj.key, "cpu", obj.numel * dt.itemsize)


def pickle_state(state: dict[str, TensorOut], module_versions: dict | None = None) -> bytes:
    """``data.pkl`` for a flat ``{name: tensor}``, as torch.save pickles it (protocol 2), without torch.

    ``module_versions`` becomes the state dict's ``_metadata``, as ``Module.state_dict()`` sets it.
    """
    buf = io.BytesIO()
    od = collections.OrderedDict(state)
    if module_versions:
        od._metadata = collections.OrderedDict((k, dict(v)) for k, v in module_versions.items())
    _StatePickler(buf, protocol=2).dump(od)
    return buf.getvalue()


_ZIP64_LIMIT = 0xFFFFFFFF  # sizes and offsets from here on need zip64 fields
_ALIGN = 64  # torch aligns record data to 64 bytes (its .storage_alignment), for mmap loading


class ZipWriter:
    """Write a torch zip record by record to ``out`` (an object with ``write``, ``copy_span``, ``written``).

    Example:
        >>> zw = ZipWriter(out)
        >>> zw.add_bytes("data.pkl", pickle_state(state))
        >>> zw.add_span("data/0", span, crc=None)  # CRC computed from the source when not known
        >>> zw.close()
    """

    def __init__(self, out: Any, archive: str = "archive"):
        self.out = out
        self.prefix = archive + "/"
        self.entries: list[tuple[bytes, int, int, int]] = []  # name, crc, size, header offset

    def _header(self, name: str, crc: int, size: int) -> None:
        raw = (self.prefix + name).encode("utf-8")
        offset = self.out.written
        big = size >= _ZIP64_LIMIT
        extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
        pad = -(offset + 30 + len(raw) + len(extra) + 4) % _ALIGN
        extra += b"FB" + struct.pack("<H", pad) + b"Z" * pad  # torch's padding field
        s32 = 0xFFFFFFFF if big else size
        head = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 45 if big else 20, 0, 0, 0, 0, crc, s32, s32, len(raw), len(extra)
        )
        self.out.write(head + raw + extra)
        self.entries.append((raw, crc, size, offset))

    def add_bytes(self, name: str, data: Any) -> None:
        """A record from bytes (or any buffer) in memory."""
        view = memoryview(data).cast("B")
        self._header(name, zlib.crc32(view), len(view))
        self.out.write(view)

    def add_span(self, name: str, span: FileSpan, crc: int | None = None) -> None:
        """A record copied from a file span; ``crc`` when known (from the source zip), else computed."""
        if crc is None:
            crc = span_crc(span)
        self._header(name, crc, span.length)
        self.out.copy_span(span)

    def close(self) -> None:
        """Write the central directory and the (zip64) end records."""
        start = self.out.written
        for raw, crc, size, offset in self.entries:
            fields = []
            s32 = o32 = 0
            if size >= _ZIP64_LIMIT:
                fields += [size, size]
                s32 = 0xFFFFFFFF
            else:
                s32 = size
            if offset >= _ZIP64_LIMIT:
                fields.append(offset)
                o32 = 0xFFFFFFFF
            else:
                o32 = offset
            extra = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
            need = 45 if fields else 20
            self.out.write(
                struct.pack(
                    "<IHHHHHHIIIHHHHHII",
                    0x02014B50,
                    45,
                    need,
                    0,
                    0,
                    0,
                    0,
                    crc,
                    s32,
                    s32,
                    len(raw),
                    len(extra),
                    0,
                    0,
                    0,
                    0,
                    o32,
                )  # fmt: skip
                + raw
                + extra
            )
        n, size_cd, end64 = len(self.entries), self.out.written - start, self.out.written
        self.out.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, size_cd, start))
        self.out.write(struct.pack("<IIQI", 0x07064B50, 0, end64, 1))
        n16 = min(n, 0xFFFF)
        self.out.write(
            struct.pack(
                "<IHHHHIIH", 0x06054B50, 0, 0, n16, n16, min(size_cd, _ZIP64_LIMIT), min(start, _ZIP64_LIMIT), 0
            )
        )


_CRC_CHUNK = 8 * 1024 * 1024


def span_crc(span: FileSpan) -> int:
    """CRC-32 of a file span, read in chunks into one reused buffer."""
    crc, pos, left = 0, span.offset, span.length
    buf = memoryview(bytearray(min(left, _CRC_CHUNK)))
    with open(span.path, "rb", buffering=0) as f:
        fd = f.fileno()
        while left > 0:
            n = os.preadv(fd, [buf[: min(left, _CRC_CHUNK)]], pos)
            if n <= 0:
                raise SurgeonError(f"source file is shorter than its header says (at byte {pos})", path=span.path)
            crc = zlib.crc32(buf[:n], crc)
            pos, left = pos + n, left - n
    return crc
