"""Property-based fuzzing of the readers with mutated valid (and malicious) files.

The property, for every mutated file: ``open_checkpoint(path)`` and then ``ref.load()`` of every
tensor either succeed, giving tensors of exactly the shape and dtype the reader announced, or
raise ``SurgeonError`` naming a file; no other exception escapes, and no payload's marker appears.

``make test`` runs a bounded, derandomised pass (profile ``fuzz-ci``); ``make fuzz`` runs the same
tests with many more random examples (``CKPTSURGEON_FUZZ_PROFILE=fuzz-long``).
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import struct
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ckptsurgeon import dtypes
from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.formats import open_checkpoint
from tests.conftest import FIXTURES
from tests.hostile.corpus import build_corpus, write_controls

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fuzz-ci", max_examples=120, derandomize=True, database=None, **_COMMON)
settings.register_profile("fuzz-long", max_examples=5000, **_COMMON)
PROFILE = settings.get_profile(os.environ.get("CKPTSURGEON_FUZZ_PROFILE", "fuzz-ci"))

# --------------------------------------------------------------------------- seeds


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """Valid files per container, plus a few malicious torch files (mutating them must not arm them)."""
    root = tmp_path_factory.mktemp("seeds")
    ctl = write_controls(root / "controls")
    corpus = {c.id: c for c in build_corpus(root / "corpus", MARKER)}
    legacy = root / "legacy_torch.pt"
    sd = {"w": torch.arange(12.0).reshape(3, 4), "t": torch.arange(6).reshape(2, 3).t(), "h": torch.ones(2).half()}
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    return _Seeds(
        {
            "safetensors": {
                "control": ctl["safetensors"].read_bytes(),
                "mixed": (FIXTURES / "mixed.safetensors").read_bytes(),
            },
            "torchzip": {
                "control": ctl["torchzip"].read_bytes(),
                "mixed": (FIXTURES / "mixed.pth").read_bytes(),
                "tied": (FIXTURES / "tied.pth").read_bytes(),
                "evil-in-dict": corpus["pickle-os-system-global-torchzip-in-dict"].path.read_bytes(),
                "evil-stack-global": corpus["pickle-os-system-stack-global-torchzip"].path.read_bytes(),
            },
            "legacy": {
                "control": ctl["legacy"].read_bytes(),
                "torch": legacy.read_bytes(),
                "evil": corpus["pickle-exec-global-legacy"].path.read_bytes(),
            },
        }
    )


class _Seeds(dict):
    def __repr__(self) -> str:  # keep hypothesis' failure reports short
        return f"<seeds: {', '.join(f'{k}={sorted(v)}' for k, v in self.items())}>"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# The malicious seeds' payloads create this file if they ever run (an absolute path baked into them).
MARKER = Path(tempfile.gettempdir()) / f"ckptsurgeon-fuzz-marker-{os.getpid()}"


def check(data: bytes, workdir: Path, suffix: str) -> None:
    """The property: success with consistent tensors, or a SurgeonError; never code execution."""
    path = workdir / f"case{suffix}"
    path.write_bytes(data)
    try:
        ckpt = open_checkpoint(path)
        for name, ref in ckpt.tensors.items():
            t = ref.load()
            assert tuple(t.shape) == tuple(ref.shape), name
            assert dtypes.short_name(t.dtype) == ref.dtype, name
        event("read")
    except SurgeonError as e:
        assert e.path, f"error names no file: {e}"
        assert "\n" not in str(e), str(e)
        event("refused")
    finally:
        assert not MARKER.exists(), "a payload ran"


# --------------------------------------------------------------------------- byte-level mutations

_INTERESTING = [0, 1, 7, 8, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1]


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """1-4 random edits: bit flips, byte sets, 8-byte interesting integers, inserts, deletes, truncation."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "int64", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if kind == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and buf:
            buf[pos] = draw(st.integers(0, 255))
        elif kind == "int64":
            buf[pos : pos + 8] = struct.pack("<Q", draw(st.sampled_from(_INTERESTING)))
        elif kind == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del buf[pos : pos + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del buf[pos:]
    return bytes(buf)


# --------------------------------------------------------------------------- safetensors


def _split_st(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from("<Q", data)
    return json.loads(data[8 : 8 + n]), data[8 + n :]


_ST_DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "C64", "F4", "X", ""]
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def st_header_mutated(draw, data: bytes) -> bytes:
    """Structured edits of the JSON header: dtypes, shapes, offsets, metadata, names, length prefix."""
    header, body = _split_st(data)
    names = [k for k in header if k != "__metadata__"]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["dtype", "shape", "offsets", "drop-field", "value", "metadata", "rename"]))
        name = draw(st.sampled_from(names))
        entry = header.get(name)
        if not isinstance(entry, dict):
            continue
        if kind == "dtype":
            entry["dtype"] = draw(st.sampled_from(_ST_DTYPES))
        elif kind == "shape":
            entry["shape"] = draw(st.lists(st.integers(-3, 2**40) | st.sampled_from([0, 1, 2, 3, 6]), max_size=4))
        elif kind == "offsets":
            entry["data_offsets"] = draw(st.lists(st.integers(-1, len(body) + 64), min_size=0, max_size=3))
        elif kind == "drop-field":
            entry.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None)
        elif kind == "value":
            header[name] = draw(_JSON_VALUES)
        elif kind == "metadata":
            header["__metadata__"] = draw(_JSON_VALUES)
        elif kind == "rename":
            header[draw(st.text(max_size=6))] = header.pop(name)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    length = len(raw) + draw(st.sampled_from([0, 0, 0, -1, 1, 8, -8]))
    return struct.pack("<Q", max(length, 0)) + raw + body


@settings(PROFILE)
@given(data=st.data())
def test_safetensors_bytes_mutated(seeds, workdir, data):
    seed = data.draw(st.sampled_from(sorted(seeds["safetensors"])))
    check(data.draw(mutated(seeds["safetensors"][seed])), workdir, ".safetensors")


@settings(PROFILE)
@given(data=st.data())
def test_safetensors_header_mutated(seeds, workdir, data):
    seed = data.draw(st.sampled_from(sorted(seeds["safetensors"])))
    check(data.draw(st_header_mutated(seeds["safetensors"][seed])), workdir, ".safetensors")


# --------------------------------------------------------------------------- torch zips


def _members(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def _rezip(members: list[tuple[str, bytes]], deflate: set[str] = frozenset()) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as z:
        warnings.simplefilter("ignore")  # duplicate names are one of the mutations
        for name, body in members:
            z.writestr(name, body, compress_type=zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED)
    return buf.getvalue()


_INT_OPS = {"BININT1", "BININT2", "BININT", "LONG1"}
_STR_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "GLOBAL"}
_NEW_INTS = st.sampled_from([0, 1, 2, 3, 5, 6, 7, 12, 255, 2**16, 2**31 - 1, 2**40, -1, -(2**31)])
_NEW_STRS = st.sampled_from(
    ["0", "1", "7", "../0", "", "cpu", "big", "torch\nHalfStorage", "torch\nLongStorage", "torch\nBoolStorage",
     "torch\nUntypedStorage", "torch\nBFloat16Storage", "torch\nNoSuchStorage", "collections\nOrderedDict",
     "torch._utils\n_rebuild_parameter", "builtins\nset"]
)  # fmt: skip


def _encode_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if -(2**31) <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _encode_str(op: str, v: str) -> bytes:
    if op == "GLOBAL":
        return b"c" + (v if "\n" in v else "torch\n" + v).encode() + b"\n"
    b = v.encode()
    return b"X" + struct.pack("<I", len(b)) + b


@st.composite
def pickle_mutated(draw, pkl: bytes) -> bytes:
    """Opcode-aware edits of data.pkl: replace an integer (shape, stride, offset, numel) or a string
    (storage key, location, global name), or fall back to raw byte edits."""
    try:
        ops = list(pickletools.genops(pkl))
    except Exception:  # already broken (e.g. a mutated duplicate record)
        return draw(mutated(pkl))
    out = pkl
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["int", "str", "bytes"]))
        if kind == "bytes":
            return draw(mutated(out))
        cand = [(op, pos) for op, _arg, pos in ops if op.name in (_INT_OPS if kind == "int" else _STR_OPS)]
        if not cand:
            continue
        op, pos = draw(st.sampled_from(cand))
        end = next((p for _o, _a, p in ops if p > pos), len(out))
        new = _encode_int(draw(_NEW_INTS)) if kind == "int" else _encode_str(op.name, draw(_NEW_STRS))
        out = out[:pos] + new + out[end:]
        try:
            ops = list(pickletools.genops(out))
        except Exception:
            return out
    return out


@st.composite
def zip_mutated(draw, data: bytes) -> bytes:
    """Member-level edits of a torch zip: data.pkl, storage records, byteorder, names, compression."""
    members = _members(data)
    deflate: set[str] = set()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(members) - 1))
        name, body = members[i]
        kind = draw(st.sampled_from(["pickle", "body", "drop", "truncate", "extend", "rename", "dup", "deflate"]))
        if name.endswith("data.pkl") and kind in ("pickle", "body"):
            members[i] = (name, draw(pickle_mutated(body)))
        elif kind in ("pickle", "body"):
            members[i] = (name, draw(mutated(body)) if body else draw(st.binary(max_size=8)))
        elif kind == "drop":
            del members[i]
        elif kind == "truncate":
            members[i] = (name, body[: draw(st.integers(0, max(len(body) - 1, 0)))])
        elif kind == "extend":
            members[i] = (name, body + draw(st.binary(min_size=1, max_size=64)))
        elif kind == "rename":
            members[i] = (draw(st.sampled_from(["archive/data/9", "other/data.pkl", "data.pkl", name + "x"])), body)
        elif kind == "dup":
            members.append((name, draw(mutated(body)) if body else body))
        elif kind == "deflate":
            deflate.add(name)
        if not members:
            break
    return _rezip(members, deflate)


@settings(PROFILE)
@given(data=st.data())
def test_torch_zip_members_mutated(seeds, workdir, data):
    seed = data.draw(st.sampled_from(sorted(seeds["torchzip"])))
    check(data.draw(zip_mutated(seeds["torchzip"][seed])), workdir, ".pt")


@settings(PROFILE)
@given(data=st.data())
def test_torch_zip_bytes_mutated(seeds, workdir, data):
    seed = data.draw(st.sampled_from(sorted(seeds["torchzip"])))
    check(data.draw(mutated(seeds["torchzip"][seed])), workdir, ".pth")


@settings(PROFILE)
@given(data=st.data())
def test_torch_legacy_mutated(seeds, workdir, data):
    seed = data.draw(st.sampled_from(sorted(seeds["legacy"])))
    check(data.draw(mutated(seeds["legacy"][seed])), workdir, ".pt")


# --------------------------------------------------------------------------- the harness itself


def test_seeds_are_valid(seeds, workdir):
    """Unmutated good seeds load (so mutations start from real files); the evil ones are refused."""
    for kind in seeds:
        for name, data in seeds[kind].items():
            path = workdir / f"{kind}-{name}.bin"
            path.write_bytes(data)
            if name.startswith("evil"):
                with pytest.raises(SurgeonError, match="refused"):
                    open_checkpoint(path)
                continue
            ckpt = open_checkpoint(path)
            assert ckpt.tensors and all(r.load().shape == r.shape for r in ckpt.tensors.values())
    assert not MARKER.exists()


def test_the_property_rejects_any_other_exception(seeds, workdir, monkeypatch):
    """The harness can fail: a reader letting a foreign exception escape breaks the property."""

    def broken(path):
        raise IndexError("list index out of range")

    monkeypatch.setattr(sys.modules[__name__], "open_checkpoint", broken)
    with pytest.raises(IndexError):
        check(seeds["safetensors"]["control"], workdir, ".safetensors")
