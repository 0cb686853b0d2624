"""Write a checkpoint atomically, streaming tensor by tensor.

DST is written to a temporary file beside it (``.NAME.ckptsurgeon-tmp-*``), fsynced, then renamed
over DST; on any error, Ctrl-C or SIGTERM the temporary file is removed and DST is untouched.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import pickle
import signal
import tempfile
import threading
from collections.abc import Iterator

from ckptsurgeon import dtypes
from ckptsurgeon.checkpoint import FileSpan, TensorRef
from ckptsurgeon.errors import SurgeonError

EXTENSIONS = {".safetensors": "safetensors", ".pt": "pt", ".pth": "pt", ".bin": "pt"}
TMP_MARK = ".ckptsurgeon-tmp-"
_CHUNK = 8 * 1024 * 1024


def output_format(dst: str) -> str:
    """``"safetensors"`` or ``"pt"`` from DST's extension; SurgeonError for anything else."""
    ext = os.path.splitext(dst)[1].lower()
    if ext not in EXTENSIONS:
        raise SurgeonError(
            f"cannot tell the output format from the extension {ext or '(none)'!r}",
            path=dst,
            hint="use .safetensors, .pt, .pth or .bin",
        )
    return EXTENSIONS[ext]


def check_destination(dst: str, sources: list[str], force: bool) -> None:
    """Refuse DST when it is a source (also through a link) or exists without ``force``."""
    for src in sources:
        if os.path.exists(dst) and os.path.exists(src):
            if os.path.samefile(dst, src):
                raise SurgeonError("the output is the input file; the input is never modified", path=dst)
        elif os.path.realpath(dst) == os.path.realpath(src):
            raise SurgeonError("the output is the input file; the input is never modified", path=dst)
        if os.path.isdir(src) and os.path.realpath(dst).startswith(os.path.realpath(src) + os.sep):
            raise SurgeonError("the output lies inside the input folder", path=dst)
    if os.path.isdir(dst):
        raise SurgeonError("the output is an existing folder", path=dst)
    if os.path.lexists(dst) and not force:
        raise SurgeonError("the output exists", path=dst, hint="pass --force to replace it")
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        raise SurgeonError("the output's folder does not exist", path=dst)


class _Out:
    """An unbuffered output file that copies byte spans from other files without decoding them."""

    def __init__(self, fd: int):
        self.fd = fd
        self.written = 0
        self._fast = hasattr(os, "copy_file_range")

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(self.fd, view[done:])
        self.written += done
        return done

    def copy_span(self, span: FileSpan, out=None) -> None:
        with open(span.path, "rb") as src:
            pos, left = span.offset, span.length
            while left > 0 and self._fast:
                try:
                    n = os.copy_file_range(src.fileno(), self.fd, min(left, 1 << 30), pos)
                except OSError as e:
                    if e.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        self._fast = False
                        break
                    raise
                if n == 0:
                    raise SurgeonError(f"source file is shorter than its header says (at byte {pos})", path=span.path)
                pos, left, self.written = pos + n, left - n, self.written + n
            while left > 0:
                chunk = os.pread(src.fileno(), min(left, _CHUNK), pos)
                if not chunk:
                    raise SurgeonError(f"source file is shorter than its header says (at byte {pos})", path=span.path)
                self.write(chunk)
                pos, left = pos + len(chunk), left - len(chunk)


@contextlib.contextmanager
def atomic_output(dst: str) -> Iterator[_Out]:
    """Yield an output stream for a temporary file that becomes ``dst`` only on success."""
    folder = os.path.dirname(os.path.abspath(dst))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst)}{TMP_MARK}", dir=folder)
    restore = _raise_on_sigterm()
    try:
        out = _Out(fd)
        yield out
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, dst)
        tmp = ""
        with contextlib.suppress(OSError):
            dfd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as e:
        raise SurgeonError(f"cannot write: {e.strerror or e}", path=dst) from None
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        restore()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _raise_on_sigterm():
    """Turn SIGTERM into KeyboardInterrupt while writing, so the temporary file is cleaned up."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, old)


def tensor_bytes(ref: TensorRef):
    """The little-endian bytes of a tensor, decoding it (one tensor in memory)."""
    import torch

    t = ref.load().detach().contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy()


def write_safetensors(refs: list[TensorRef], metadata: dict[str, str], dst: str) -> int:
    from ckptsurgeon.formats import safetensors_io

    with atomic_output(dst) as out:
        safetensors_io.write(out, refs, metadata, out.copy_span, tensor_bytes)
        return out.written


class _OutStorage:
    def __init__(self, key: str, dtype: str, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _OutTensor:
    def __init__(self, storage: _OutStorage, offset: int, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(shape), tuple(stride)

    def __reduce__(self):
        import torch

        args = (self.storage, self.offset, self.shape, self.stride, False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


def _contiguous_stride(shape) -> tuple[int, ...]:
    stride, acc = [], 1
    for d in reversed(shape):
        stride.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(stride))


def write_pt(refs: list[TensorRef], dst: str) -> int:
    """Write a flat ``{name: tensor}`` torch zip, record by record, with torch's own zip writer.

    Storage sharing is kept: tensors that shared a storage in the source (or in memory) share one
    record in DST. Tensors from a source file are copied as bytes, never decoded.
    """
    import torch
    from torch.serialization import _open_zipfile_writer

    storages: dict[object, _OutStorage] = {}
    payload: dict[str, object] = {}  # storage key -> FileSpan | tensor
    state = collections.OrderedDict()
    mem_groups = collections.Counter(r.alias for r in refs if r.in_memory and r.alias is not None)

    def new_storage(ident, dtype: str, numel: int, data) -> _OutStorage:
        st = _OutStorage(str(len(storages)), dtype, numel)
        storages[ident] = st
        payload[st.key] = data
        return st

    for ref in refs:
        itemsize = dtypes.get(ref.dtype).itemsize
        if ref.storage is not None:
            ident = ("file", ref.storage.span.path, ref.storage.key)
            st = storages.get(ident) or new_storage(ident, ref.dtype, ref.storage.span.length // itemsize, ref.storage.span)
            state[ref.name] = _OutTensor(st, ref.storage.offset, ref.shape, ref.storage.stride)
        elif ref.span is not None:
            ident = ("span", ref.span)
            st = storages.get(ident) or new_storage(ident, ref.dtype, ref.numel, ref.span)
            state[ref.name] = _OutTensor(st, 0, ref.shape, _contiguous_stride(ref.shape))
        else:
            t = ref.load().detach()
            if ref.alias is not None and mem_groups[ref.alias] > 1:
                ident = ("mem", ref.alias)
                whole = t.untyped_storage()
                st = storages.get(ident) or new_storage(ident, ref.dtype, whole.nbytes() // itemsize, whole)
                state[ref.name] = _OutTensor(st, t.storage_offset(), t.shape, t.stride())
            else:
                t = t.contiguous()
                st = new_storage(("one", ref.name), ref.dtype, t.numel(), t)
                state[ref.name] = _OutTensor(st, 0, t.shape, t.stride())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _OutStorage):
                stype = getattr(torch, dtypes.get(obj.dtype).storage or "")
                return ("storage", stype, obj.key, "cpu", obj.numel)
            return None

    import io

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(state)
    data_pkl = buf.getvalue()

    with atomic_output(dst) as out:
        fobj = _FdFile(out)
        with _open_zipfile_writer(fobj) as zw:
            zw.write_record("data.pkl", data_pkl, len(data_pkl))
            zw.write_record(".format_version", "1", 1)
            zw.write_record(".storage_alignment", "64", 2)
            zw.write_record("byteorder", "little", 6)
            for key, data in payload.items():
                if isinstance(data, FileSpan):
                    data = _read_span_storage(data)
                elif isinstance(data, torch.Tensor):
                    if data.storage_offset() or data.untyped_storage().nbytes() != data.numel() * data.element_size():
                        data = data.clone()
                    data = data.untyped_storage()
                zw.write_record(f"data/{key}", data, data.nbytes())
                del data
        return out.written


def _read_span_storage(span: FileSpan):
    """Read a span straight into a torch byte storage (no intermediate copy)."""
    import torch

    buf = torch.empty(span.length, dtype=torch.uint8)
    view = memoryview(buf.numpy()) if span.length else memoryview(b"")
    with open(span.path, "rb", buffering=0) as f:
        f.seek(span.offset)
        done = 0
        while done < span.length:
            n = f.readinto(view[done:])
            if not n:
                raise SurgeonError("source file is shorter than its header says", path=span.path)
            done += n
    return buf.untyped_storage()


class _FdFile:
    """The minimal file object torch's zip writer needs, over our atomic output."""

    def __init__(self, out: _Out):
        self.out = out

    def write(self, data) -> int:
        return self.out.write(data)

    def flush(self) -> None:
        pass
