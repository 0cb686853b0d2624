"""Read torch files (zip and legacy) without running their pickled code, and write torch zips.

The zip reader unpickles ``data.pkl`` with a restricted unpickler that knows only torch's tensor
rebuild functions, storage types and ``OrderedDict``. It records where each tensor's bytes are and
executes nothing; a pickle it does not understand goes to torch's own weights-only loader, never
to plain pickle. Legacy (pre-zip) files always go to torch's weights-only loader.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

from ckptsurgeon import dtypes
from ckptsurgeon.checkpoint import FileSpan, StorageRef, TensorRef
from ckptsurgeon.errors import SurgeonError


class _Unsupported(Exception):
    """The restricted unpickler met something it does not know: let torch's loader decide."""


@dataclass
class _StorageType:
    dtype: str


@dataclass
class _Storage:
    key: str
    dtype: str
    numel: int

    def __setstate__(self, state: Any) -> None:  # a BUILD opcode on a storage: not torch's doing
        raise _Unsupported("state set on a storage")


@dataclass
class TensorStub:
    """A tensor as described by the pickle: its storage, offset, shape and stride."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def __setstate__(self, state: Any) -> None:  # a BUILD opcode on a tensor: not torch's doing
        raise _Unsupported("state set on a tensor")


def _ints(value: Any) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int for v in value):
        raise _Unsupported("size or stride is not a tuple of ints")
    return value


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage) or type(storage_offset) is not int:
        raise _Unsupported("tensor without a storage")
    shape, strides = _ints(size), _ints(stride)
    if len(shape) != len(strides):
        raise _Unsupported("size and stride differ in length")
    return TensorStub(storage, storage_offset, shape, strides)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    if not isinstance(data, TensorStub):
        raise _Unsupported("parameter without a tensor")
    return data


# The storage classes torch.save pickles (torch.storage._dtype_to_storage_type_map); newer dtypes
# (uint16/32/64, float8) are saved as an UntypedStorage with _rebuild_tensor_v3, which torch loads.
TYPED_STORAGES = {
    "DoubleStorage", "FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage",
    "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "ComplexFloatStorage", "ComplexDoubleStorage",
}  # fmt: skip

_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in TYPED_STORAGES:
            return _StorageType(dtypes.BY_STORAGE[name].name)
        if module == "torch" and name == "UntypedStorage":
            return _StorageType("uint8")
        raise _Unsupported(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Unsupported("persistent id")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType) or type(numel) is not int or numel < 0 or type(key) is not str:
            raise _Unsupported("storage type")
        return _Storage(str(key), stype.dtype, numel)


@dataclass
class ZipLayout:
    prefix: str  # "archive/"
    records: dict[str, zipfile.ZipInfo]


def _zip_layout(path: str, zf: zipfile.ZipFile) -> ZipLayout:
    names = [i.filename for i in zf.infolist()]
    dup = next((n for n, c in collections.Counter(names).items() if c > 1), None)
    if dup is not None:  # zipfile reads the last copy, torch the first: refuse rather than pick one
        raise SurgeonError(f"corrupt zip: it holds two records named {dup!r}", path=path)
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if not pkl:
        raise SurgeonError("a zip file without 'data.pkl': not a torch checkpoint", path=path)
    prefix = pkl[0][: -len("data.pkl")]
    return ZipLayout(prefix, {i.filename: i for i in zf.infolist()})


def _data_offset(f, info: zipfile.ZipInfo, path: str) -> int:
    """Where a stored record's bytes begin: after its local header (whose extra field may differ)."""
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise SurgeonError(f"corrupt zip: bad local header for {info.filename!r}", path=path)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())  # messages are one line, whatever the file's strings hold


_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError)


def _read_record(zf: zipfile.ZipFile, name: str, path: str) -> bytes:
    try:
        return zf.read(name)
    except _ZIP_ERRORS as e:
        raise SurgeonError(f"corrupt zip: cannot read {name!r} ({_one_line(e)})", path=path) from None


def read_zip(path: str) -> tuple[Any, dict[str, Any]]:
    """Unpickle a torch zip's ``data.pkl`` without torch; tensors come back as TensorRef-ready stubs.

    Returns the unpickled object (TensorStub in place of tensors) and ``{storage key: FileSpan}``,
    or ``(None, {})`` when the pickle holds anything else: the caller then uses torch's weights-only
    loader (``torch_load``), never plain pickle.
    """
    try:
        zf = zipfile.ZipFile(path)
    except _ZIP_ERRORS as e:
        raise SurgeonError(f"corrupt or truncated zip file ({_one_line(e)})", path=path) from None
    with zf:
        layout = _zip_layout(path, zf)
        byteorder = layout.records.get(layout.prefix + "byteorder")
        if byteorder is not None:
            order = _read_record(zf, byteorder.filename, path)[:16].decode("ascii", "replace")
            if order != "little":
                raise SurgeonError(
                    f"byteorder record says {order!r}; only little-endian checkpoints are supported",
                    path=path,
                )
        data = _read_record(zf, layout.prefix + "data.pkl", path)
        try:
            obj = _RestrictedUnpickler(io.BytesIO(data)).load()
        except _Unsupported:
            return None, {}
        except Exception as e:  # malformed pickle bytes: pickle raises many types
            raise SurgeonError(f"corrupt data.pkl ({type(e).__name__}: {_one_line(e)})", path=path) from None

        spans: dict[str, FileSpan] = {}
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            for stub in _walk_stubs(obj):
                st = stub.storage
                if st.key in spans:
                    continue
                record = f"data/{st.key}"
                info = layout.records.get(layout.prefix + record)
                if info is None:
                    raise SurgeonError(f"storage record {record!r} is missing from the zip", path=path)
                if info.compress_type != zipfile.ZIP_STORED:
                    return None, {}  # compressed records: let torch decode them
                need = st.numel * dtypes.get(st.dtype).itemsize
                if info.file_size < need:
                    raise SurgeonError(
                        f"storage record {record!r} holds {info.file_size} bytes, {need} expected",
                        path=path,
                    )
                offset = _data_offset(f, info, path)
                if offset + need > size:
                    raise SurgeonError(f"storage record {record!r} runs past the end of the file", path=path)
                spans[st.key] = FileSpan(path, offset, need)
    return obj, spans


def _walk_stubs(obj: Any):
    stack = [obj]
    seen: set[int] = set()
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, TensorStub):
            yield o
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)


def stub_to_ref(name: str, stub: TensorStub, spans: dict[str, FileSpan], path: str) -> TensorRef:
    """A TensorRef for a pickled tensor: a plain byte span when it covers its storage contiguously."""
    st = stub.storage
    dt = dtypes.get(st.dtype)
    numel = 1
    for d in stub.shape:
        numel *= d
    if any(d < 0 for d in stub.shape) or any(s < 0 for s in stub.stride) or stub.offset < 0:
        raise SurgeonError(f"tensor {name!r} has a negative size, stride or offset", path=path)
    if len(stub.stride) != len(stub.shape):
        raise SurgeonError(f"tensor {name!r} has {len(stub.shape)} sizes but {len(stub.stride)} strides", path=path)
    if numel:
        last = stub.offset + sum((d - 1) * s for d, s in zip(stub.shape, stub.stride))
        if last >= st.numel:
            raise SurgeonError(f"tensor {name!r} reaches element {last} of a storage of {st.numel}", path=path)
    check_expansion(name, numel, st.numel, dt.itemsize, path)
    span = spans[st.key]
    alias = (path, st.key)
    # The storage is kept even for contiguous tensors, so a .pt writer can keep tensors that share it
    # sharing it; the span lets every writer copy the tensor's own bytes without decoding them.
    storage = StorageRef(span=span, key=st.key, offset=stub.offset, stride=stub.stride)
    if _is_contiguous(stub.shape, stub.stride):
        itemsize = dt.itemsize
        sub = FileSpan(span.path, span.offset + stub.offset * itemsize, numel * itemsize)
        return TensorRef(name, stub.shape, dt.name, span=sub, storage=storage, alias=alias)
    return TensorRef(name, stub.shape, dt.name, storage=storage, alias=alias)


MAX_EXPANSION_BYTES = 1 << 30


def check_expansion(name: str, numel: int, storage_numel: int, itemsize: int, path: str) -> None:
    """Refuse a view with more elements than its storage (stride 0, overlapping strides) when
    materialising it would take over 1 GiB: a few bytes of pickle must not allocate terabytes."""
    if numel > storage_numel and numel * itemsize > MAX_EXPANSION_BYTES:
        raise SurgeonError(
            f"tensor {name!r} is a view of {numel:,} elements over a storage of {storage_numel:,} "
            f"(overlapping strides); expanding it would take {numel * itemsize:,} bytes",
            path=path,
        )


def _is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for d, s in zip(reversed(shape), reversed(stride)):
        if d != 1 and s != expected:
            return False
        expected *= d
    return True


def torch_load(path: str, mmap: bool) -> Any:
    """torch's own weights-only loader; refuses (naming them) any globals it does not allow."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error says enough
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(path)
        if names:
            raise SurgeonError(
                f"refused: the pickle needs {', '.join(names)}, outside torch's weights-only allowlist, "
                "so it was not loaded and nothing in it ran",
                path=path,
                hint="a checkpoint's code never runs here",
            ) from None
        raise SurgeonError(f"refused by torch's weights-only loader: {_torch_reason(e)}", path=path) from None
    except Exception as e:  # torch raises many types on damaged files; each is bad input here
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SurgeonError(f"cannot load torch file: {type(e).__name__}: {first}".rstrip(": "), path=path) from None


def _torch_reason(e: Exception) -> str:
    """The useful part of torch's multi-paragraph weights-only error (not its advice to disable it)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:", 1)[1].split(" Please ")[0].strip()
            if reason:
                return reason
    return "the pickle uses something outside its allowlist"


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def _pickle_globals(f: io.BytesIO) -> list[str]:
    """The globals one pickle stream names (GLOBAL, INST, STACK_GLOBAL), read from its opcodes: nothing runs."""
    found: list[str] = []
    strings: list[str] = []  # recently pushed strings, for STACK_GLOBAL (best effort: names for a message)
    memo: dict[int, str | None] = {}
    top: str | None = None  # the string the last opcode pushed, if it pushed one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pickletools warns about odd escapes in STRING opcodes
        try:
            for op, arg, _pos in pickletools.genops(f):
                pushed = None
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name in _STRING_OPS:
                    pushed = str(arg)
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                    memo[len(memo) if op.name == "MEMOIZE" else int(arg)] = top
                    continue  # the stack is unchanged
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed = memo.get(int(arg))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                if pushed is not None:
                    strings.append(pushed)
                top = pushed
        except Exception:  # a damaged stream: report what was found before the damage
            pass
    return found


def _unsafe_globals(path: str) -> list[str]:
    """Globals in a torch file's pickles that torch's weights-only loader does not allow, in file order."""
    streams: list[io.BytesIO] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                streams = [io.BytesIO(zf.read(n)) for n in zf.namelist() if n.endswith("data.pkl")]
        else:
            with open(path, "rb") as fh:
                legacy = io.BytesIO(fh.read(64 * 1024 * 1024))
            streams = [legacy] * 4  # magic, protocol, sys_info, then the object: one after another
    except Exception:
        return []
    try:
        from torch import _weights_only_unpickler as wo

        allowed = set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())
    except Exception:  # a torch without these helpers: name everything that is not plainly torch's
        allowed = {f"{m}.{n}" for m, n in _ALLOWED} | {f"torch.{n}" for n in dtypes.BY_STORAGE}
    names: list[str] = []
    for stream in streams:
        for g in _pickle_globals(stream):
            shown = g if g.isprintable() and len(g) <= 80 else repr(g[:80])  # one line, whatever the file holds
            if g not in allowed and shown not in names:
                names.append(shown)
    return names[:8]
