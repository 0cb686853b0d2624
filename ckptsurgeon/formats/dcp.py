"""torch.distributed.checkpoint (DCP) folders, read as one checkpoint.

Names, shapes and dtypes come from the folder's ``.metadata``; tensors are loaded one at a time,
when a writer asks, through DCP's own reader and planner (which joins a tensor's chunks from every
rank's ``*.distcp`` file). ``.metadata`` is a pickle that torch's ``FileSystemReader`` loads with
plain ``pickle.load``; here it is loaded with a restricted unpickler that builds only DCP's
metadata classes, so a checkpoint's code never runs. Non-tensor entries (saved by DCP as pickled
bytes, which DCP would load with ``weights_only=False``) are listed, never loaded.
"""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Any

from ckptsurgeon import dtypes
from ckptsurgeon.checkpoint import Checkpoint, TensorRef
from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.formats.sniff import DCP

_METADATA = ".metadata"


class _TensorEntry:
    """A tensor listed in ``.metadata``: its flat name in the DCP state dict, shape and dtype."""

    def __init__(self, fqn: str, shape: tuple[int, ...], dtype: str):
        self.fqn, self.shape, self.dtype = fqn, shape, dtype


class _PickledEntry:
    """A non-tensor entry (step counters, configs): DCP stores it pickled; it is not read."""

    summary = "pickled value (not read)"


def _allowed() -> dict[tuple[str, str], Any]:
    import pathlib

    import torch
    from torch.distributed.checkpoint import filesystem, metadata

    names = [
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    ]  # fmt: skip
    allowed: dict[tuple[str, str], Any] = {(metadata.__name__, n): getattr(metadata, n) for n in names}
    allowed[(filesystem.__name__, "_StorageInfo")] = filesystem._StorageInfo
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    allowed[("collections", "OrderedDict")] = __import__("collections").OrderedDict
    for cls in (pathlib.PurePosixPath, pathlib.PosixPath):
        allowed[("pathlib", cls.__name__)] = cls
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata dataclasses, torch dtypes and sizes; refuses every other global."""

    def __init__(self, file: Any, path: str):
        super().__init__(file)
        self.path = path
        self.allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        import torch

        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise SurgeonError(
            f"the DCP metadata needs {module}.{name}, which is not among the classes DCP writes; it was not loaded",
            path=self.path,
            hint="a checkpoint's code never runs here",
        )

    def persistent_load(self, pid: Any) -> Any:
        raise SurgeonError("the DCP metadata holds a persistent reference; it was not loaded", path=self.path)


def _read_metadata(folder: str) -> Any:
    try:
        import torch.distributed.checkpoint as dcp
    except ImportError:
        raise SurgeonError("this torch build has no torch.distributed.checkpoint", path=folder) from None
    meta_path = os.path.join(folder, _METADATA)
    try:
        with open(meta_path, "rb") as f:
            md = _MetadataUnpickler(f, meta_path).load()
    except SurgeonError:
        raise
    except OSError as e:
        raise SurgeonError(f"cannot read: {e.strerror or e}", path=meta_path) from None
    except Exception as e:  # malformed pickle bytes raise many types
        raise SurgeonError(f"corrupt DCP metadata ({type(e).__name__}: {e})", path=meta_path) from None
    if not isinstance(md, dcp.Metadata) or not isinstance(md.state_dict_metadata, dict):
        raise SurgeonError("the .metadata file does not hold DCP metadata", path=meta_path)
    real = os.path.realpath(folder)
    for info in (md.storage_data or {}).values():
        rel = getattr(info, "relative_path", None)
        target = os.path.realpath(os.path.join(folder, str(rel)))
        if not isinstance(rel, str) or os.path.commonpath([target, real]) != real:
            raise SurgeonError(f"the DCP metadata names a data file outside its folder: {rel!r}", path=meta_path)
    return md


def _load_tensor(folder: str, md: Any, fqn: str, shape: tuple[int, ...], dtype: str):
    """One tensor, through DCP's reader and default planner (which assembles its chunks)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class _Reader(dcp.FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            return md  # already read safely; FileSystemReader's own uses plain pickle.load

    tensor = torch.empty(shape, dtype=dtypes.torch_dtype(dtype))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "torch.distributed is not initialized: single process"
            dcp.load({fqn: tensor}, storage_reader=_Reader(folder), planner=DefaultLoadPlanner(), no_dist=True)
    except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SurgeonError(f"cannot load tensor {fqn!r} from the DCP checkpoint: {first}", path=folder) from None
    return tensor


def read(path: str, key: str | None = None) -> Checkpoint:
    """Read a DCP folder's metadata into a lazy Checkpoint; tensors load one at a time on demand.

    The state dict is picked as for torch files (``model``/``state_dict``… or ``key``), from the
    nesting DCP recorded when it flattened the saved dict.

    Example:
        >>> ckpt = read("checkpoints/step_1000")
        >>> ckpt.tensors["fc.weight"].shape
        (10, 64)
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from ckptsurgeon.formats import pick_state_dict

    md = _read_metadata(path)
    planner = md.planner_data if isinstance(md.planner_data, dict) else {}
    nested: dict[str, Any] = {}
    for fqn, item in md.state_dict_metadata.items():
        parts = planner.get(fqn)
        keys = [str(p) for p in parts] if isinstance(parts, (tuple, list)) and parts else [fqn]
        if isinstance(item, TensorStorageMetadata):
            value: Any = _TensorEntry(fqn, tuple(int(d) for d in item.size), dtypes.short_name(item.properties.dtype))
        else:
            value = _PickledEntry()
        node = nested
        for k in keys[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                keys = [fqn]  # a leaf and a prefix at once: fall back to the flat name
                node = nested
                break
            node = nxt
        node[keys[-1]] = value

    def is_tensor(value: Any) -> bool:
        return isinstance(value, _TensorEntry)

    state, container = pick_state_dict(nested, key, is_tensor, path)
    tensors: dict[str, TensorRef] = {}
    skipped: list[str] = []

    def add(prefix: str, node: dict[str, Any]) -> None:
        for k, v in node.items():
            name = f"{prefix}{k}"
            if isinstance(v, dict):
                add(name + ".", v)
            elif isinstance(v, _TensorEntry):
                if v.dtype not in dtypes.BY_NAME:
                    raise SurgeonError(f"tensor {name!r} has dtype {v.dtype}, which is not supported", path=path)

                def loader(e: _TensorEntry = v) -> Any:
                    return _load_tensor(path, md, e.fqn, e.shape, e.dtype)

                tensors[name] = TensorRef(name, v.shape, v.dtype, loader=loader)
            else:
                skipped.append(name)

    add("", state)
    ckpt = Checkpoint(path=path, format=DCP, tensors=tensors, container=container)
    files = {getattr(i, "relative_path", "") for i in (md.storage_data or {}).values()}
    plural = "s" if len(files) != 1 else ""
    ckpt.notes.append(f"torch.distributed.checkpoint folder: {len(files)} data file{plural}; tensors load through DCP")
    if skipped:
        ckpt.notes.append(
            f"{len(skipped)} non-tensor entries in the state dict were left out: {', '.join(skipped[:5])}"
        )
    return ckpt
