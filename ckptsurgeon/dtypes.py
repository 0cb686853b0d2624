"""Dtype names across torch, safetensors and torch's pickled storage classes, without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str  # torch's short name: "float32"
    itemsize: int
    safetensors: str | None  # code in a safetensors header: "F32"
    storage: str | None  # torch's legacy storage class: "FloatStorage"
    is_floating: bool


_ALL = [
    DType("float64", 8, "F64", "DoubleStorage", True),
    DType("float32", 4, "F32", "FloatStorage", True),
    DType("float16", 2, "F16", "HalfStorage", True),
    DType("bfloat16", 2, "BF16", "BFloat16Storage", True),
    DType("float8_e4m3fn", 1, "F8_E4M3", "Float8_e4m3fnStorage", True),
    DType("float8_e5m2", 1, "F8_E5M2", "Float8_e5m2Storage", True),
    DType("int64", 8, "I64", "LongStorage", False),
    DType("int32", 4, "I32", "IntStorage", False),
    DType("int16", 2, "I16", "ShortStorage", False),
    DType("int8", 1, "I8", "CharStorage", False),
    DType("uint8", 1, "U8", "ByteStorage", False),
    DType("uint16", 2, "U16", None, False),
    DType("uint32", 4, "U32", None, False),
    DType("uint64", 8, "U64", None, False),
    DType("bool", 1, "BOOL", "BoolStorage", False),
    DType("complex64", 8, "C64", "ComplexFloatStorage", False),
    DType("complex128", 16, None, "ComplexDoubleStorage", False),
]

BY_NAME = {d.name: d for d in _ALL}
BY_SAFETENSORS = {d.safetensors: d for d in _ALL if d.safetensors}
BY_STORAGE = {d.storage: d for d in _ALL if d.storage}


def get(name: str) -> DType:
    """Look up a dtype by torch's short name (``"float32"``); KeyError if unknown."""
    return BY_NAME[name]


def torch_dtype(name: str):
    """The ``torch.dtype`` for a short name (imports torch)."""
    import torch

    return getattr(torch, name)


def short_name(dtype) -> str:
    """``torch.float32`` → ``"float32"``."""
    return str(dtype).removeprefix("torch.")
