"""Read torch files (zip and legacy) without running their pickled code, and write torch zips.

The zip reader unpickles ``data.pkl`` with a restricted unpickler that knows only torch's tensor
rebuild functions, storage types and ``OrderedDict``. It records where each tensor's bytes are and
executes nothing; a pickle it does not understand goes to torch's own weights-only loader, never
to plain pickle. Legacy (pre-zip) files always go to torch's weights-only loader.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
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


@dataclass
class TensorStub:
    """A tensor as described by the pickle: its storage, offset, shape and stride."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise _Unsupported("tensor without a storage")
    return TensorStub(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    if not isinstance(data, TensorStub):
        raise _Unsupported("parameter without a tensor")
    return data


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
        if module == "torch" and name in dtypes.BY_STORAGE:
            return _StorageType(dtypes.BY_STORAGE[name].name)
        if module == "torch" and name == "UntypedStorage":
            return _StorageType("uint8")
        raise _Unsupported(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Unsupported("persistent id")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(numel, int):
            raise _Unsupported("storage type")
        return _Storage(str(key), stype.dtype, numel)


@dataclass
class ZipLayout:
    prefix: str  # "archive/"
    records: dict[str, zipfile.ZipInfo]


def _zip_layout(path: str, zf: zipfile.ZipFile) -> ZipLayout:
    names = [i.filename for i in zf.infolist()]
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
        raise SurgeonError(f"corrupt zip: bad local header for {info.filename}", path=path)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def read_zip(path: str) -> tuple[Any, dict[str, Any]]:
    """Unpickle a torch zip's ``data.pkl`` without torch; tensors come back as TensorRef-ready stubs.

    Returns the unpickled object (TensorStub in place of tensors) and ``{"tensor_ref": factory}``.
    Falls back to torch's weights-only loader when the pickle holds anything else.
    """
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise SurgeonError(f"corrupt or truncated zip file ({e})", path=path) from None
    with zf:
        layout = _zip_layout(path, zf)
        byteorder = layout.records.get(layout.prefix + "byteorder")
        if byteorder is not None:
            order = zf.read(byteorder).decode("ascii", "replace")
            if order != "little":
                raise SurgeonError(
                    f"byteorder record says {order!r}; only little-endian checkpoints are supported",
                    path=path,
                )
        try:
            data = zf.read(layout.prefix + "data.pkl")
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise SurgeonError(f"corrupt zip: cannot read data.pkl ({e})", path=path) from None
        try:
            obj = _RestrictedUnpickler(io.BytesIO(data)).load()
        except _Unsupported:
            return None, {}
        except Exception as e:  # malformed pickle bytes: pickle raises many types
            raise SurgeonError(f"corrupt data.pkl ({type(e).__name__}: {e})", path=path) from None

        spans: dict[str, FileSpan] = {}
        with open(path, "rb") as f:
            for stub in _walk_stubs(obj):
                st = stub.storage
                if st.key in spans:
                    continue
                info = layout.records.get(f"{layout.prefix}data/{st.key}")
                if info is None:
                    raise SurgeonError(f"storage record data/{st.key} is missing from the zip", path=path)
                if info.compress_type != zipfile.ZIP_STORED:
                    return None, {}  # compressed records: let torch decode them
                need = st.numel * dtypes.get(st.dtype).itemsize
                if info.file_size < need:
                    raise SurgeonError(
                        f"storage record data/{st.key} holds {info.file_size} bytes, {need} expected",
                        path=path,
                    )
                spans[st.key] = FileSpan(path, _data_offset(f, info, path), need)
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
    if numel:
        last = stub.offset + sum((d - 1) * s for d, s in zip(stub.shape, stub.stride))
        if last >= st.numel:
            raise SurgeonError(
                f"tensor {name!r} reaches element {last} of a storage of {st.numel}", path=path
            )
    span = spans[st.key]
    alias = (path, st.key)
    if _is_contiguous(stub.shape, stub.stride):
        itemsize = dt.itemsize
        sub = FileSpan(span.path, span.offset + stub.offset * itemsize, numel * itemsize)
        return TensorRef(name, stub.shape, dt.name, span=sub, alias=alias)
    storage = StorageRef(span=span, key=st.key, offset=stub.offset, stride=stub.stride)
    return TensorRef(name, stub.shape, dt.name, storage=storage, alias=alias)


def _is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for d, s in zip(reversed(shape), reversed(stride)):
        if d != 1 and s != expected:
            return False
        expected *= d
    return True


def torch_load(path: str, mmap: bool) -> Any:
    """torch's own weights-only loader; refuses (naming them) any globals it does not allow."""
    import pickle as _pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except _pickle.UnpicklingError as e:
        names = _unsafe_globals(path)
        if names:
            raise SurgeonError(
                "the file's pickle needs globals outside the weights-only allowlist, which were "
                f"not loaded: {', '.join(names)}",
                path=path,
                hint="a checkpoint's code never runs here",
            ) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SurgeonError(f"refused by torch's weights-only loader: {first}", path=path) from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SurgeonError(f"cannot load torch file: {first}", path=path) from None


def _unsafe_globals(path: str) -> list[str]:
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # the helper only understands zips; legacy files fall back to the message
        return []
