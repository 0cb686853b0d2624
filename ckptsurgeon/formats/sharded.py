"""Sharded checkpoints: a folder with ``*.index.json`` (as transformers writes), read as one."""

from __future__ import annotations

import json
import os

from ckptsurgeon.checkpoint import Checkpoint
from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.formats.sniff import SAFETENSORS, SHARDED, TORCH_LEGACY, TORCH_ZIP, sniff


def find_index(path: str) -> str:
    """The index file of a sharded folder (or ``path`` itself when it is the index)."""
    if not os.path.isdir(path):
        return path
    found = sorted(e for e in os.listdir(path) if e.endswith(".index.json"))
    if len(found) > 1:
        raise SurgeonError(f"several index files: {', '.join(map(repr, found))}; name one of them", path=path)
    return os.path.join(path, found[0])


def read(path: str, key: str | None = None) -> Checkpoint:
    """Read every shard's header and join them in the index's order."""
    from ckptsurgeon.formats import open_checkpoint

    index_path = find_index(path)
    folder = os.path.dirname(os.path.abspath(index_path))
    try:
        with open(index_path, "rb") as f:
            index = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise SurgeonError(f"cannot read the shard index: {e}", path=index_path) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise SurgeonError("the shard index has no valid 'weight_map'", path=index_path)
    real_folder = os.path.realpath(folder)
    shards: dict[str, Checkpoint] = {}
    for shard in dict.fromkeys(weight_map.values()):
        shard_path = os.path.join(folder, shard)
        real = os.path.realpath(shard_path)
        if os.path.isabs(shard) or os.path.commonpath([real, real_folder]) != real_folder:
            raise SurgeonError(f"the index names a shard outside its folder: {shard!r}", path=index_path)
        if not os.path.isfile(real):
            raise SurgeonError(f"the index names a missing shard: {shard!r}", path=index_path)
        if sniff(real) not in (SAFETENSORS, TORCH_ZIP, TORCH_LEGACY):  # e.g. an index naming itself
            raise SurgeonError(f"the index names {shard!r} as a shard, but it is not a weights file", path=index_path)
        shards[shard] = open_checkpoint(real, key=key)
    tensors = {}
    metadata: dict[str, str] = {}
    for ckpt in shards.values():
        metadata.update(ckpt.metadata)
    for name, shard in weight_map.items():
        ref = shards[shard].tensors.get(name)
        if ref is None:
            raise SurgeonError(f"the index puts {name!r} in {shard!r}, which does not hold it", path=index_path)
        tensors[name] = ref
    extra = {n for c in shards.values() for n in c.tensors} - set(weight_map)
    ckpt = Checkpoint(
        path=path,
        format=f"{SHARDED}-{next(iter(shards.values())).format if shards else 'empty'}",
        tensors=tensors,
        metadata=metadata,
    )
    plural = "s" if len(shards) != 1 else ""
    ckpt.notes.append(f"{len(shards)} shard{plural} joined by {os.path.basename(index_path)}")
    if extra:
        ckpt.notes.append(f"{len(extra)} tensors in the shards are not in the index and were left out")
    return ckpt
