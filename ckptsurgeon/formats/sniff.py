"""Tell a checkpoint's format from its first bytes, never from its extension."""

from __future__ import annotations

import json
import os
import struct

from ckptsurgeon.errors import SurgeonError

SAFETENSORS = "safetensors"
TORCH_ZIP = "torch-zip"
TORCH_LEGACY = "torch-legacy"
SHARDED = "sharded"  # a folder with *.index.json, or the index file itself
DCP = "dcp"  # a torch.distributed.checkpoint folder

# torch's legacy (pre-1.6) files start with a pickled magic number.
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_LFS = b"version https://git-lfs.github.com/spec/"
MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


def sniff(path: str) -> str:
    """Return the format of ``path``; raise SurgeonError saying what the file looks like otherwise."""
    if os.path.isdir(path):
        return _sniff_dir(path)
    if not os.path.exists(path):
        raise SurgeonError("no such file or folder", path=path)
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise SurgeonError(f"cannot read: {e.strerror}", path=path) from None
    if size == 0:
        raise SurgeonError("the file is empty, not a checkpoint", path=path)
    if size < 10:  # the smallest safetensors file is 8 bytes of length and a 2-byte "{}"
        raise SurgeonError(f"the file is only {size} bytes: too short to be a checkpoint (truncated?)", path=path)
    if head.startswith(_LFS):
        raise SurgeonError(
            "this is a Git LFS pointer file, not the weights",
            path=path,
            hint="run 'git lfs pull' to fetch the real file",
        )
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return TORCH_ZIP
    if head[:1] == b"\x80" and _LEGACY_MAGIC in head[:16]:
        return TORCH_LEGACY
    # a safetensors header length can start with byte 0x80 too: its JSON's "{" tells it from a pickle
    n = struct.unpack("<Q", head[:8])[0]
    if head[8:9] == b"{" and n <= size - 8:
        return SAFETENSORS
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        raise SurgeonError(
            "this is a bare pickle, not a torch checkpoint; pickles can run code and are not loaded",
            path=path,
        )
    if len(head) >= 9:
        if head[8:9] == b"{" or 2 <= n <= min(MAX_HEADER, size - 8):
            if n > size - 8:
                raise SurgeonError(
                    f"safetensors header length is {n:,} bytes but the file has {size:,}: a truncated download?",
                    path=path,
                )
            return SAFETENSORS
        if path.endswith(".json"):
            return _sniff_json(path)
    described = _describe(head, size)
    if path.lower().endswith(".safetensors") and described.startswith("unrecognised"):
        described += f"; as safetensors its header length would be {n:,} bytes: a truncated download?"
    raise SurgeonError(described, path=path)


def _describe(head: bytes, size: int) -> str:
    try:
        text = head.decode("utf-8")
        if text.lstrip().startswith(("{", "[")):
            return "this is JSON text, not a checkpoint"
        if text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text):
            first = text.strip().splitlines()[0] if text.strip() else ""
            return f"this is a text file, not a checkpoint (it starts {first[:40]!r})"
    except UnicodeDecodeError:
        pass
    return f"unrecognised format ({size:,} bytes starting {head[:8].hex(' ')}): not safetensors or a torch file"


def _sniff_json(path: str) -> str:
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(16 * 1024 * 1024))
    except (OSError, ValueError, RecursionError) as e:
        raise SurgeonError(f"not a valid index file: {e}", path=path) from None
    if isinstance(doc, dict) and "weight_map" in doc:
        return SHARDED
    raise SurgeonError("a JSON file without 'weight_map': not a sharded checkpoint index", path=path)


def _sniff_dir(path: str) -> str:
    entries = sorted(os.listdir(path))
    if any(e.endswith(".index.json") for e in entries):
        return SHARDED
    if ".metadata" in entries:
        return DCP
    raise SurgeonError(
        "a folder with no '*.index.json' (sharded checkpoint) or '.metadata' "
        "(torch.distributed.checkpoint): not a checkpoint folder",
        path=path,
    )
