"""Write a checkpoint atomically, streaming tensor by tensor: one file, or a sharded folder.

DST is written to a temporary file beside it (``.NAME.ckptsurgeon-tmp-*``), fsynced, then renamed
over DST; on any error, Ctrl-C or SIGTERM the temporary file is removed and DST is untouched. A
sharded output is written into a temporary folder the same way, then moved into place.

Tensors whose bytes lie in a source file are copied as bytes (``copy_file_range``), never decoded;
only tensors a transform made are encoded, one at a time. Writeback to disk is started every
``_KICK`` bytes, so the final fsync waits for the last stretch only, not the whole file.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ckptsurgeon import dtypes
from ckptsurgeon.checkpoint import FileSpan, TensorRef
from ckptsurgeon.errors import SurgeonError

EXTENSIONS = {".safetensors": "safetensors", ".pt": "pt", ".pth": "pt", ".bin": "pt"}
TMP_MARK = ".ckptsurgeon-tmp-"
DEFAULT_SHARD_SIZE = 5 * 10**9  # transformers' default max_shard_size, "5GB"
_CHUNK = 8 * 1024 * 1024
_KICK = 128 * 1024 * 1024

Advance = Callable[[int], None]


# --- where the output goes -----------------------------------------------------------------------


@dataclass
class Target:
    """Where a command writes: one file, or shards plus an index in ``folder``.

    ``weights_name`` names the shards as transformers does: ``model.safetensors`` gives
    ``model-00001-of-00003.safetensors`` and ``model.safetensors.index.json``.
    """

    path: str  # DST as given
    format: str  # "safetensors" | "pt"
    folder: str | None = None  # set for sharded output
    weights_name: str = ""
    max_shard_size: int | None = None
    single_if_fits: bool = False  # DST named a file: write just that file when one shard holds it all
    files: list[str] = field(default_factory=list)  # what was written, set by ``write``

    @property
    def index_written(self) -> bool:
        return any(f.endswith(".index.json") for f in self.files)

    @property
    def result(self) -> str:
        """The path to open the output with: the file, or the index of a sharded output."""
        return self.files[-1] if self.files else self.path

    @property
    def sharded(self) -> bool:
        return self.folder is not None

    @property
    def index_name(self) -> str:
        return f"{self.weights_name}.index.json"

    def shard_name(self, i: int, n: int) -> str:
        stem, ext = os.path.splitext(self.weights_name)
        return f"{stem}-{i:05d}-of-{n:05d}{ext}"

    def is_shard_name(self, name: str) -> bool:
        stem, ext = os.path.splitext(self.weights_name)
        return re.fullmatch(rf"{re.escape(stem)}-\d{{5}}-of-\d{{5}}{re.escape(ext)}", name) is not None


def parse_size(text: str | int) -> int:
    """Bytes from ``"5GB"`` (10**9, as transformers reads it), ``"500MiB"`` (2**20), ``"1.5GB"`` or ``"1000"``.

    Example:
        >>> parse_size("5GB"), parse_size("2GiB")
        (5000000000, 2147483648)
    """
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*", str(text), re.IGNORECASE)
        if not m:
            raise SurgeonError(
                f"--max-shard-size {text!r} is not a size", hint="write it like 5GB, 500MB, 2GiB or a number of bytes"
            )
        unit = (m.group(2) or "b").lower().rstrip("b") or "b"
        scale = {"b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
        scale.update({"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40})
        value = int(float(m.group(1)) * scale[unit])
    if value <= 0:
        raise SurgeonError(f"--max-shard-size must be more than 0 bytes (got {text!r})")
    return value


def _looks_like_folder(dst: str) -> bool:
    return dst.endswith(("/", os.sep)) or os.path.isdir(dst)


def _is_bare(dst: str) -> bool:
    return not os.path.splitext(dst)[1]


def output_format(dst: str, sharded: bool = False) -> str:
    """``"safetensors"`` or ``"pt"`` from DST: its extension, ``NAME.EXT.index.json``, or a folder (safetensors).

    With ``sharded`` (a shard size was given), a DST without an extension is a folder too.
    """
    if _looks_like_folder(dst) or (sharded and _is_bare(dst)):
        return "safetensors"
    name = dst[: -len(".index.json")] if dst.endswith(".index.json") else dst
    ext = os.path.splitext(name)[1].lower()
    if ext not in EXTENSIONS:
        raise SurgeonError(
            f"cannot tell the output format from the extension {ext or '(none)'!r}",
            path=dst,
            hint="use .safetensors, .pt, .pth or .bin, or end DST with '/' for a sharded folder",
        )
    return EXTENSIONS[ext]


def plan_output(dst: str, max_shard_size: int | str | None = None) -> Target:
    """Decide what writing to ``dst`` means.

    - a folder (existing, ending with '/', or without an extension when ``max_shard_size`` is given):
      safetensors shards ``model-0000i-of-0000N.safetensors``
      and ``model.safetensors.index.json`` (shards of at most ``max_shard_size``, default 5GB);
    - ``DIR/NAME.EXT.index.json``: shards of that weights name (``pytorch_model.bin.index.json``
      gives ``pytorch_model-0000i-of-0000N.bin``);
    - a file with ``max_shard_size``: shards named after it beside it, or just that file if it fits;
    - otherwise one file, its format from its extension.

    Example:
        >>> plan_output("out/").shard_name(1, 3)
        'model-00001-of-00003.safetensors'
    """
    size = parse_size(max_shard_size) if max_shard_size is not None else None
    fmt = output_format(dst, sharded=size is not None)
    if _looks_like_folder(dst) or (size is not None and _is_bare(dst)):
        return Target(dst, fmt, os.path.normpath(dst), "model.safetensors", size or DEFAULT_SHARD_SIZE)
    if dst.endswith(".index.json"):
        weights = os.path.basename(dst)[: -len(".index.json")]
        return Target(dst, fmt, os.path.dirname(dst) or ".", weights, size or DEFAULT_SHARD_SIZE)
    if size is not None:
        return Target(dst, fmt, os.path.dirname(dst) or ".", os.path.basename(dst), size, single_if_fits=True)
    return Target(dst, fmt)


def check_destination(dst: str, sources: list[str], force: bool) -> None:
    """Refuse DST when it is a source (also through a link) or exists without ``force``."""
    _check_not_source(dst, sources)
    if os.path.isdir(dst):
        raise SurgeonError("the output is an existing folder", path=dst)
    if os.path.lexists(dst) and not force:
        raise SurgeonError("the output exists", path=dst, hint="pass --force to replace it")
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        raise SurgeonError("the output's folder does not exist", path=dst)


def _check_not_source(dst: str, sources: list[str]) -> None:
    for src in sources:
        if os.path.exists(dst) and os.path.exists(src):
            if os.path.samefile(dst, src):
                raise SurgeonError("the output is the input file; the input is never modified", path=dst)
        elif os.path.realpath(dst) == os.path.realpath(src):
            raise SurgeonError("the output is the input file; the input is never modified", path=dst)
        if os.path.isdir(src) and os.path.realpath(dst).startswith(os.path.realpath(src) + os.sep):
            raise SurgeonError("the output lies inside the input folder", path=dst)


def check_target(target: Target, sources: list[str], force: bool) -> None:
    """``check_destination`` for a Target: a sharded folder must not be (or hold) the input."""
    if not target.sharded:
        check_destination(target.path, sources, force)
        return
    folder = target.folder
    assert folder is not None
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise SurgeonError("the output folder is an existing file", path=target.path)
    if not os.path.isdir(folder) and not os.path.isdir(os.path.dirname(os.path.abspath(folder))):
        raise SurgeonError("the output's parent folder does not exist", path=target.path)
    real = os.path.realpath(folder)
    for src in sources:
        src_dir = src if os.path.isdir(src) else None
        if src.endswith(".index.json"):
            src_dir = os.path.dirname(os.path.abspath(src))
        if src_dir and real == os.path.realpath(src_dir):
            raise SurgeonError("the output folder is the input folder; the input is never modified", path=target.path)
    index = os.path.join(folder, target.index_name)
    for path in (index, os.path.join(folder, target.weights_name)):
        _check_not_source(path, sources)
    for src in sources:
        beside = os.path.isfile(src) and os.path.realpath(os.path.dirname(os.path.abspath(src))) == real
        if beside and target.is_shard_name(os.path.basename(src)):
            raise SurgeonError("the output's shards would replace the input file", path=target.path)
    if target.single_if_fits:
        check_destination(os.path.join(folder, target.weights_name), sources, force)
    if os.path.isdir(folder) and not force:
        held = sorted(
            (e != target.index_name, e) for e in os.listdir(folder) if e == target.index_name or target.is_shard_name(e)
        )
        held = [e for _, e in held]  # the index first
        if held:
            raise SurgeonError(
                f"the output folder already holds {held[0]}", path=target.path, hint="pass --force to replace it"
            )


# --- streaming output ----------------------------------------------------------------------------


class _Out:
    """An unbuffered output file that copies byte spans from other files without decoding them."""

    def __init__(self, fd: int, progress: Advance | None = None):
        self.fd = fd
        self.written = 0
        self.progress = progress
        self._fast = hasattr(os, "copy_file_range")
        self._kicked = 0

    def _advance(self, n: int) -> None:
        self.written += n
        if self.progress is not None:
            self.progress(n)
        if self.written - self._kicked >= _KICK and hasattr(os, "posix_fadvise"):
            # Start writeback of what is written so far (DONTNEED does, without waiting for it), so
            # the disk works while we copy and the closing fsync waits only for the last stretch.
            with contextlib.suppress(OSError):
                os.posix_fadvise(self.fd, self._kicked, self.written - self._kicked, os.POSIX_FADV_DONTNEED)
            self._kicked = self.written

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            n = os.write(self.fd, view[done : done + _CHUNK * 8])
            done += n
            self._advance(n)
        return done

    def copy_span(self, span: FileSpan, out=None) -> None:
        with open(span.path, "rb") as src:
            pos, left = span.offset, span.length
            while left > 0 and self._fast:
                try:
                    n = os.copy_file_range(src.fileno(), self.fd, min(left, _KICK), pos)
                except OSError as e:
                    if e.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        self._fast = False
                        break
                    raise
                if n == 0:
                    raise SurgeonError(f"source file is shorter than its header says (at byte {pos})", path=span.path)
                pos, left = pos + n, left - n
                self._advance(n)
            buf = memoryview(bytearray(min(left, _CHUNK))) if left > 0 else None
            while left > 0:
                n = os.preadv(src.fileno(), [buf[: min(left, _CHUNK)]], pos)
                if not n:
                    raise SurgeonError(f"source file is shorter than its header says (at byte {pos})", path=span.path)
                self.write(buf[:n])
                pos, left = pos + n, left - n


@contextlib.contextmanager
def atomic_output(dst: str, progress: Advance | None = None) -> Iterator[_Out]:
    """Yield an output stream for a temporary file that becomes ``dst`` only on success."""
    folder = os.path.dirname(os.path.abspath(dst))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst)}{TMP_MARK}", dir=folder)
    except OSError as e:
        raise SurgeonError(f"cannot write: {e.strerror or e}", path=dst) from None
    restore = _raise_on_sigterm()
    try:
        out = _Out(fd, progress)
        yield out
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, dst)
        tmp = ""
        _fsync_dir(folder)
    except OSError as e:
        raise SurgeonError(f"cannot write: {e.strerror or e}", path=dst) from None
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        restore()


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


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


# --- safetensors ---------------------------------------------------------------------------------


def safetensors_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """``metadata`` with ``format: pt`` first unless it names a format: transformers refuses files without it."""
    return metadata if "format" in metadata else {"format": "pt", **metadata}


def write_safetensors(
    refs: list[TensorRef], metadata: dict[str, str], dst: str, progress: Advance | None = None
) -> int:
    """Write ``refs`` as one safetensors file, atomically; returns its size in bytes."""
    from ckptsurgeon.formats import safetensors_io

    with atomic_output(dst, progress) as out:
        safetensors_io.write(out, refs, safetensors_metadata(metadata), out.copy_span, tensor_bytes)
        return out.written


# --- torch zip -----------------------------------------------------------------------------------


def _contiguous_stride(shape) -> tuple[int, ...]:
    stride, acc = [], 1
    for d in reversed(shape):
        stride.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(stride))


def _plan_pt(refs: list[TensorRef]) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """The pickled state ``{name: TensorOut}`` and each storage record's source, in write order.

    Tensors that shared a storage in the source file (or in memory) share one record here, with
    their offsets and strides; a tensor alone on its storage keeps only its own bytes. Nothing is
    decoded: a record's source is a FileSpan, a TensorRef (decoded at write time) or a tensor.
    """
    from ckptsurgeon.formats.torch_write import StorageOut, TensorOut

    def storage_ident(ref: TensorRef):
        if ref.storage is not None:
            return ("file", ref.storage.span.path, ref.storage.key, ref.dtype)
        if ref.tensor is not None and ref.alias is not None:
            return ("mem", ref.alias, ref.dtype)
        return None

    group = collections.Counter(storage_ident(r) for r in refs)
    storages: dict[Any, Any] = {}
    records: list[tuple[str, Any]] = []
    state: dict[str, Any] = {}

    def new_storage(ident, dtype: str, numel: int, source) -> Any:
        st = StorageOut(str(len(records)), dtype, numel)
        if ident is not None:
            storages[ident] = st
        records.append((st.key, source))
        return st

    for ref in refs:
        itemsize = dtypes.get(ref.dtype).itemsize
        ident = storage_ident(ref)
        shared = ident is not None and group[ident] > 1
        if shared and ref.storage is not None:
            whole = ref.storage.span
            st = storages.get(ident) or new_storage(ident, ref.dtype, whole.length // itemsize, whole)
            state[ref.name] = TensorOut(st, ref.storage.offset, ref.shape, ref.storage.stride)
        elif shared or (ref.tensor is not None and not ref.tensor.is_contiguous()):
            t = ref.tensor
            numel = t.untyped_storage().nbytes() // itemsize
            st = storages.get(ident) if shared else None
            st = st or new_storage(ident if shared else None, ref.dtype, numel, t)
            state[ref.name] = TensorOut(st, t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        elif ref.span is not None:
            key = ("span", ref.span, ref.dtype)  # the same bytes under two names: one record
            st = storages.get(key) or new_storage(key, ref.dtype, ref.numel, ref.span)
            state[ref.name] = TensorOut(st, 0, ref.shape, _contiguous_stride(ref.shape))
        elif ref.storage is not None:  # a strided view alone on its storage: keep the storage whole
            whole = ref.storage.span
            st = new_storage(None, ref.dtype, whole.length // itemsize, whole)
            state[ref.name] = TensorOut(st, ref.storage.offset, ref.shape, ref.storage.stride)
        else:
            st = new_storage(None, ref.dtype, ref.numel, ref)
            state[ref.name] = TensorOut(st, 0, ref.shape, _contiguous_stride(ref.shape))
    return state, records


def _storage_bytes(tensor) -> Any:
    """The bytes of a tensor's whole storage, without a copy."""
    import torch

    st = tensor.untyped_storage()
    if st.nbytes() == 0:
        return b""
    return torch.empty(0, dtype=torch.uint8).set_(st).numpy()


class _KnownCRCs:
    """CRCs of whole storage records of the source zips, so copied records need no CRC pass."""

    def __init__(self) -> None:
        self.by_path: dict[str, dict[tuple[int, int], int]] = {}

    def get(self, span: FileSpan) -> int | None:
        from ckptsurgeon.formats.torch_write import record_crcs

        if span.path not in self.by_path:
            self.by_path[span.path] = record_crcs(span.path)
        return self.by_path[span.path].get((span.offset, span.length))


def write_pt(
    refs: list[TensorRef], dst: str, progress: Advance | None = None, module_versions: dict | None = None
) -> int:
    """Write a flat ``{name: tensor}`` torch zip, record by record; returns its size in bytes.

    Storage sharing and strides are kept. Tensors from a source file are copied as bytes, never
    decoded; a tensor a transform made is encoded when its record is written, one at a time.
    torch is imported only for those.
    """
    from ckptsurgeon.formats.torch_write import ZipWriter, pickle_state

    state, records = _plan_pt(refs)
    data_pkl = pickle_state(state, module_versions)
    crcs = _KnownCRCs()
    with atomic_output(dst, progress) as out:
        zw = ZipWriter(out)
        zw.add_bytes("data.pkl", data_pkl)
        zw.add_bytes("byteorder", b"little")
        for key, source in records:
            if isinstance(source, FileSpan):
                zw.add_span(f"data/{key}", source, crcs.get(source))
            elif isinstance(source, TensorRef):
                zw.add_bytes(f"data/{key}", tensor_bytes(source))
            else:
                zw.add_bytes(f"data/{key}", _storage_bytes(source))
        zw.add_bytes("version", b"3\n")
        zw.add_bytes(".format_version", b"1")
        zw.add_bytes(".storage_alignment", b"64")
        zw.close()
        return out.written


# --- any target ----------------------------------------------------------------------------------


def write(
    target: Target,
    refs: list[TensorRef],
    metadata: dict[str, str],
    progress: Advance | None = None,
    module_versions: dict[str, dict] | None = None,
) -> int:
    """Write ``refs`` to ``target`` (one file, or shards and an index); returns the bytes written.

    ``metadata`` goes into every safetensors file (torch files have no place for it);
    ``module_versions`` (torch's ``_metadata``) goes onto a single torch file's state dict.
    """
    if not target.sharded:
        if target.format != "safetensors":
            size = write_pt(refs, target.path, progress, module_versions)
            target.files = [target.path]
            return size
        size = _write_file(target.format, refs, metadata, target.path, progress)
        target.files = [target.path]
        return size
    return _write_sharded(target, refs, metadata, progress)


def _write_file(fmt: str, refs, metadata, path: str, progress: Advance | None) -> int:
    if fmt == "safetensors":
        return write_safetensors(refs, metadata, path, progress)
    return write_pt(refs, path, progress)


def split_shards(refs: list[TensorRef], max_size: int) -> list[list[TensorRef]]:
    """Split in order into shards of at most ``max_size`` bytes, as huggingface_hub does.

    A tensor larger than ``max_size`` gets a shard of its own.
    """
    shards: list[list[TensorRef]] = [[]]
    size = 0
    for ref in refs:
        if shards[-1] and size + ref.nbytes > max_size:
            shards.append([])
            size = 0
        shards[-1].append(ref)
        size += ref.nbytes
    return shards


def _write_sharded(target: Target, refs: list[TensorRef], metadata: dict[str, str], progress) -> int:
    folder = target.folder
    assert folder is not None and target.max_shard_size is not None
    shards = split_shards(refs, target.max_shard_size)
    if target.single_if_fits and len(shards) == 1:
        path = os.path.join(folder, target.weights_name)
        size = _write_file(target.format, refs, metadata, path, progress)
        target.files = [path]
        return size
    n = len(shards)
    names = [target.shard_name(i + 1, n) for i in range(n)]
    exists = os.path.isdir(folder)
    parent = folder if exists else os.path.dirname(os.path.abspath(folder))
    restore = _raise_on_sigterm()
    try:
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(folder))}{TMP_MARK}", dir=parent)
    except OSError as e:
        restore()
        raise SurgeonError(f"cannot write: {e.strerror or e}", path=target.path) from None
    try:
        total = 0
        for name, shard in zip(names, shards):
            total += _write_file(target.format, shard, metadata, os.path.join(tmp, name), progress)
        index = {
            "metadata": {"total_size": sum(r.nbytes for r in refs)},
            "weight_map": {r.name: name for name, shard in zip(names, shards) for r in shard},
        }
        text = (json.dumps(index, indent=2) + "\n").encode()
        with atomic_output(os.path.join(tmp, target.index_name)) as out:
            out.write(text)
        total += len(text)
        if not exists:
            os.chmod(tmp, 0o755 & ~_umask())
            os.rename(tmp, folder)
            tmp = ""
            _fsync_dir(parent)
        else:
            stale = _shards_of(os.path.join(folder, target.index_name)) - set(names)
            for name in [*names, target.index_name]:  # the index last: it never names a missing shard
                os.replace(os.path.join(tmp, name), os.path.join(folder, name))
            for name in stale:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
            _fsync_dir(folder)
        target.files = [os.path.join(folder, name) for name in [*names, target.index_name]]
        return total
    except OSError as e:
        raise SurgeonError(f"cannot write: {e.strerror or e}", path=target.path) from None
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        restore()


def _shards_of(index_path: str) -> set[str]:
    """The plain file names an existing index lists (to remove stale shards it no longer needs)."""
    try:
        with open(index_path, "rb") as f:
            weight_map = json.load(f).get("weight_map", {})
        return {v for v in weight_map.values() if isinstance(v, str) and os.path.basename(v) == v}
    except (OSError, ValueError, AttributeError):
        return set()
