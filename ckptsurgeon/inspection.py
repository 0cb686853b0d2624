"""Inspect a checkpoint from its headers: the data behind ``ckptsurgeon inspect``."""

from __future__ import annotations

import fnmatch
import os
import re
from collections import Counter
from typing import Any

from ckptsurgeon.checkpoint import tied_groups
from ckptsurgeon.formats import open_checkpoint
from ckptsurgeon.pipeline import SHARED_NOTE, Pipeline
from ckptsurgeon.report import shape_str


def inspect_checkpoint(
    path: str | os.PathLike,
    *,
    key: str | None = None,
    strip_prefix: list[str] | tuple[str, ...] = (),
    filters: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Describe a checkpoint without reading tensor data; the JSON contract of ``inspect --json``.

    Totals (``num_tensors``, ``num_params``, ``nbytes``) cover the listed tensors; a tied tensor
    counts once per name.

    Example:
        >>> inspect_checkpoint("resnet.safetensors")["num_tensors"]
        62
    """
    from ckptsurgeon.transforms.keys import StripPrefix

    ckpt = open_checkpoint(path, key=key)
    state, report = Pipeline([StripPrefix(p) for p in strip_prefix]).apply(ckpt)
    refs = list(state.tensors.values())
    total = len(refs)
    if filters:
        refs = [r for r in refs if any(fnmatch.fnmatchcase(r.name, g) for g in filters)]
    tensors = [
        {"name": r.name, "shape": list(r.shape), "dtype": r.dtype, "numel": r.numel, "nbytes": r.nbytes} for r in refs
    ]
    tied = tied_groups({r.name: r for r in refs})
    return {
        "path": os.fspath(path),
        "format": ckpt.format,
        "num_tensors": len(tensors),
        "num_tensors_total": total,
        "num_params": sum(t["numel"] for t in tensors),
        "nbytes": sum(t["nbytes"] for t in tensors),
        "dtypes": dict(Counter(t["dtype"] for t in tensors)),
        "filters": list(filters),
        "container": report.container,
        "metadata": dict(sorted(ckpt.metadata.items())),
        "tied": tied,
        # shared storage has its own entry ("tied"), listed for the filtered names only
        "notes": [n for n in report.notes if not n.startswith(SHARED_NOTE)],
        "tensors": tensors,
    }


_NUM = re.compile(r"^\d+$")


class _Leaf:
    __slots__ = ("t",)

    def __init__(self, t: dict[str, Any]):
        self.t = t


def tree(tensors: list[dict[str, Any]]):
    """A Rich tree grouped by dotted prefix, with parameter counts per subtree.

    Runs of numbered siblings with the same structure (``blocks.0`` … ``blocks.11``) fold into one
    line with their count.
    """
    from rich.tree import Tree

    root: dict[str, Any] = {}
    for t in tensors:
        node = root
        parts = t["name"].split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if isinstance(nxt, _Leaf):  # "a" is a tensor and a prefix: keep the prefix apart
                nxt = node.setdefault(p + ".", {})
            node = nxt
        node[parts[-1] if parts[-1] not in node else t["name"]] = _Leaf(t)

    def params(node) -> int:
        return node.t["numel"] if isinstance(node, _Leaf) else sum(params(v) for v in node.values())

    def signature(node) -> Any:
        if isinstance(node, _Leaf):
            return (tuple(node.t["shape"]), node.t["dtype"])
        return tuple((k, signature(v)) for k, v in node.items())

    def add(parent, node: dict[str, Any]) -> None:
        items = list(node.items())
        i = 0
        while i < len(items):
            k, v = items[i]
            if _NUM.match(k) and not isinstance(v, _Leaf):
                j = i
                while j + 1 < len(items) and _NUM.match(items[j + 1][0]) and signature(items[j + 1][1]) == signature(v):
                    j += 1
                if j > i:
                    run = items[i : j + 1]
                    total = sum(params(x[1]) for x in run)
                    label = f"[bold]{k}…{items[j][0]}[/] ×{len(run)} · {total:,} params ({params(v):,} each, like {k})"
                    add(parent.add(label), v)
                    i = j + 1
                    continue
            if isinstance(v, _Leaf):
                parent.add(f"{k}  {shape_str(v.t['shape'])} {v.t['dtype']} · {v.t['numel']:,}")
            else:
                add(parent.add(f"[bold]{k}[/] · {params(v):,} params"), v)
            i += 1

    total = sum(t["numel"] for t in tensors)
    top = Tree(f"{total:,} params")
    add(top, root)
    return top
