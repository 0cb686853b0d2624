"""Checkpoint and TensorRef: a lazy view of a checkpoint's tensors.

A TensorRef knows a tensor's name, shape and dtype, and where its bytes are; nothing is read until
a transform or a writer asks for the tensor (``load``) or its bytes (``span``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ckptsurgeon import dtypes

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class FileSpan:
    """``length`` bytes at ``offset`` in ``path``: a tensor's data, contiguous and little-endian."""

    path: str
    offset: int
    length: int

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            return os.pread(f.fileno(), self.length, self.offset) if self.length else b""


@dataclass(frozen=True)
class StorageRef:
    """A storage record inside a torch zip: the tensor is a strided view into it."""

    span: FileSpan  # the whole storage record
    key: str
    offset: int  # storage_offset, in elements
    stride: tuple[int, ...]


@dataclass
class TensorRef:
    """One named tensor of a checkpoint, loaded only on demand.

    ``span``/``storage``/``tensor``/``loader`` say where the data is (a torch-zip tensor may have
    both ``span`` and ``storage``):
    - ``span``: the bytes lie contiguously in a file (copied as bytes by writers);
    - ``storage``: a (possibly strided) view into a torch storage record, kept so `.pt` output can
      preserve sharing;
    - ``tensor``: already in memory (computed by a transform, or loaded by torch);
    - ``loader``: a callable returning the tensor.
    ``alias`` identifies the underlying storage, so tied tensors can be recognised.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    span: FileSpan | None = None
    storage: StorageRef | None = None
    tensor: torch.Tensor | None = None
    loader: Callable[[], torch.Tensor] | None = field(default=None, repr=False)
    alias: Any = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtypes.get(self.dtype).itemsize

    @property
    def in_memory(self) -> bool:
        return self.tensor is not None

    def renamed(self, name: str) -> TensorRef:
        return replace(self, name=name)

    def load(self) -> torch.Tensor:
        """Decode the tensor (imports torch). The result is a tensor the caller may modify."""
        import torch

        if self.tensor is not None:
            return self.tensor
        if self.loader is not None:
            return self.loader()
        tdtype = dtypes.torch_dtype(self.dtype)
        if self.span is not None:
            return _from_bytes(self.span.read(), tdtype).reshape(self.shape)
        if self.storage is not None:
            st = self.storage
            flat = _from_bytes(st.span.read(), tdtype)
            return torch.as_strided(flat, self.shape, st.stride, st.offset).clone()
        raise AssertionError(f"tensor {self.name} has no data source")

    @classmethod
    def from_tensor(cls, name: str, tensor: torch.Tensor) -> TensorRef:
        """Wrap an in-memory tensor."""
        return cls(
            name=name,
            shape=tuple(tensor.shape),
            dtype=dtypes.short_name(tensor.dtype),
            tensor=tensor,
            alias=("mem", tensor.untyped_storage().data_ptr()) if tensor.numel() else None,
        )


def _from_bytes(data: bytes, dtype: torch.dtype) -> torch.Tensor:
    import sys

    import torch

    if not data:
        return torch.empty(0, dtype=dtype)
    t = torch.frombuffer(bytearray(data), dtype=dtype)
    if sys.byteorder != "little":  # pragma: no cover - files are little-endian
        t = t.byteswap() if hasattr(t, "byteswap") else t
    return t


@dataclass
class Container:
    """How the state dict sat in the file: which key held it and what else the file holds."""

    key: str | None = None  # dotted path of the state dict, None when the file is the state dict
    reason: str = ""  # "state_dict_ema (timm's order: EMA weights first)", "--key", ...
    others: dict[str, str] = field(default_factory=dict)  # other top-level entries, summarised


@dataclass
class Checkpoint:
    """A lazily read checkpoint: ordered name → TensorRef, plus file-level facts.

    Example:
        >>> ckpt = open_checkpoint("fixtures/train.pth")
        >>> ckpt.container.key, ckpt.num_params
        ('state_dict_ema', 39142)
    """

    path: str
    format: str  # "safetensors", "torch-zip", "torch-legacy", "sharded-safetensors", ...
    tensors: dict[str, TensorRef]
    metadata: dict[str, str] = field(default_factory=dict)
    container: Container = field(default_factory=Container)
    notes: list[str] = field(default_factory=list)
    # torch's per-module version table (a state dict's ``_metadata``): some modules need it to load
    module_versions: dict[str, dict] | None = None

    @property
    def num_params(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: t.shape for n, t in self.tensors.items()}

    def tied_groups(self) -> list[list[str]]:
        """Names that share one storage, groups of two or more, in checkpoint order."""
        return tied_groups(self.tensors)


def tied_groups(tensors: dict[str, TensorRef]) -> list[list[str]]:
    """Names in ``tensors`` that share one storage, groups of two or more, in order."""
    groups: dict[Any, list[str]] = {}
    for name, ref in tensors.items():
        if ref.alias is not None:
            groups.setdefault(ref.alias, []).append(name)
    return [g for g in groups.values() if len(g) > 1]
