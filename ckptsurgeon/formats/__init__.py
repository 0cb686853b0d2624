"""Open any supported checkpoint lazily, and write one atomically."""

from __future__ import annotations

import os
from typing import Any

from ckptsurgeon.checkpoint import Checkpoint, Container, TensorRef
from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.formats import sniff as _sniff

__all__ = ["open_checkpoint", "pick_state_dict"]

# timm's load_state_dict order: EMA weights first, then the training weights.
STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


def open_checkpoint(path: str | os.PathLike, key: str | None = None) -> Checkpoint:
    """Open ``path`` lazily: names, shapes and dtypes, no tensor data.

    Args:
        path: a .safetensors / torch file, a sharded folder or its ``*.index.json``, a DCP folder.
        key: dotted path of the state dict inside a training checkpoint (``"state_dict"``);
            by default chosen as timm does.

    Example:
        >>> ckpt = open_checkpoint("resnet.pth")
        >>> ckpt.tensors["fc.weight"].shape
        (10, 64)
    """
    path = os.fspath(path)
    fmt = _sniff.sniff(path)
    if fmt == _sniff.SAFETENSORS:
        from ckptsurgeon.formats import safetensors_io

        ckpt = safetensors_io.read(path)
        if key:
            raise SurgeonError("--key applies to torch files; a safetensors file holds one flat state dict", path=path)
        return ckpt
    if fmt == _sniff.SHARDED:
        from ckptsurgeon.formats import sharded

        return sharded.read(path, key=key)
    if fmt == _sniff.DCP:
        from ckptsurgeon.formats import dcp

        return dcp.read(path, key=key)
    return _open_torch(path, fmt, key)


def _open_torch(path: str, fmt: str, key: str | None) -> Checkpoint:
    from ckptsurgeon.formats import torch_io

    obj = None
    if fmt == _sniff.TORCH_ZIP:
        obj, spans = torch_io.read_zip(path)
    if obj is not None:

        def to_ref(name: str, value: Any) -> TensorRef | None:
            if isinstance(value, torch_io.TensorStub):
                return torch_io.stub_to_ref(name, value, spans, path)
            return None

        def is_tensor(value: Any) -> bool:
            return isinstance(value, torch_io.TensorStub)
    else:
        obj = torch_io.torch_load(path, mmap=fmt == _sniff.TORCH_ZIP)
        import torch

        def to_ref(name: str, value: Any) -> TensorRef | None:
            if isinstance(value, torch.Tensor):
                if value.layout != torch.strided or value.is_quantized:
                    raise SurgeonError(
                        f"tensor {name!r} is {value.layout}; only dense tensors are supported", path=path
                    )
                storage_numel = value.untyped_storage().nbytes() // max(value.element_size(), 1)
                torch_io.check_expansion(name, value.numel(), storage_numel, value.element_size(), path)
                return TensorRef.from_tensor(name, value)
            return None

        def is_tensor(value: Any) -> bool:
            return isinstance(value, torch.Tensor)

    state, container = pick_state_dict(obj, key, is_tensor, path)
    tensors: dict[str, TensorRef] = {}
    skipped = []
    for name, value in state.items():
        ref = to_ref(str(name), value)
        if ref is None:
            skipped.append(str(name))
        else:
            tensors[str(name)] = ref
    ckpt = Checkpoint(path=path, format=fmt, tensors=tensors, container=container)
    ckpt.module_versions = _module_versions(state) or (_module_versions(obj) if container.key is None else None)
    if skipped:
        ckpt.notes.append(
            f"{len(skipped)} non-tensor entries in the state dict were left out: {', '.join(skipped[:5])}"
        )
    return ckpt


def _module_versions(state: Any) -> dict[str, dict] | None:
    """The ``_metadata`` table torch.save keeps on a state dict, if it is plain data."""
    table = getattr(state, "_metadata", None)
    if not isinstance(table, dict):
        return None
    out = {}
    for k, v in table.items():
        if isinstance(k, str) and isinstance(v, dict) and all(isinstance(x, (str, int, bool)) for x in v.values()):
            out[k] = dict(v)
    return out or None


def _count_tensors(obj: Any, is_tensor) -> int:
    n, stack, seen = 0, [obj], set()
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if is_tensor(o):
            n += 1
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
    return n


def describe_value(value: Any, is_tensor) -> str:
    """A short summary of a non-weight entry: ``90``, ``161 tensors``, ``dict of 12 keys``."""
    if isinstance(value, (bool, int, float)) or value is None:
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if is_tensor(value):
        return "1 tensor"
    if isinstance(getattr(value, "summary", None), str):  # a placeholder for a value not read
        return value.summary
    if isinstance(value, (dict, list, tuple)):
        n = _count_tensors(value, is_tensor)
        if n:
            return f"{n} tensors"
        kind = type(value).__name__ if not isinstance(value, dict) else "dict"
        return f"{kind} of {len(value)} {'keys' if isinstance(value, dict) else 'items'}"
    return type(value).__name__


def _shown(key: Any) -> str:
    """A key as a message shows it: as is, or quoted when it holds a newline or other control character."""
    text = str(key)
    return text if text.isprintable() else repr(text)


def pick_state_dict(obj: Any, key: str | None, is_tensor, path: str) -> tuple[dict, Container]:
    """Find the weights in a loaded object, as timm's ``load_state_dict`` does, or follow ``key``."""
    if not isinstance(obj, dict):
        raise SurgeonError(f"the file holds a {type(obj).__name__}, not a dict of tensors", path=path)
    if key:
        node: Any = obj
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                top = ", ".join(_shown(k) for k in list(obj)[:12])
                raise SurgeonError(f"--key {key!r} not found (top-level keys: {top})", path=path)
            node = node[part]
        if not isinstance(node, dict):
            raise SurgeonError(f"--key {key!r} holds a {type(node).__name__}, not a state dict", path=path)
        top = key.split(".")[0]
        others = {str(k): describe_value(v, is_tensor) for k, v in obj.items() if k != top}
        return node, Container(key=key, reason="chosen explicitly (--key, or the recipe's key)", others=others)
    for k in STATE_DICT_KEYS:
        if isinstance(obj.get(k), dict):
            others = {str(o): describe_value(v, is_tensor) for o, v in obj.items() if o != k}
            reason = f"'{k}' ({'EMA weights preferred, ' if 'ema' in k else ''}as timm's load_state_dict picks)"
            return obj[k], Container(key=k, reason=reason, others=others)
    tensors = [k for k, v in obj.items() if is_tensor(v)]
    if tensors:
        others = {str(k): describe_value(v, is_tensor) for k, v in obj.items() if not is_tensor(v)}
        state = {k: v for k, v in obj.items() if is_tensor(v)}
        return state, Container(key=None, reason="the file is a plain dict of tensors", others=others)
    summary = ", ".join(f"{_shown(k)} ({describe_value(v, is_tensor)})" for k, v in list(obj.items())[:8])
    raise SurgeonError(
        f"no state dict found; the file holds: {summary}",
        path=path,
        hint="pick one with --key",
    )
