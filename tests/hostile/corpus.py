"""A corpus of hostile and broken checkpoint files, written at test time.

``build_corpus(root, marker)`` writes every case under ``root`` and returns one
:class:`BadFile` per case. Feed ``BadFile.path`` to the tool; it must fail with a
one-line error (exit 2, no traceback) that contains at least one of ``BadFile.expect``
(compare against the lowercased message), and for ``malicious`` cases ``marker`` must
never appear.

What is in it:

* Malicious pickles (``pickle-<technique>-<container>``), written as raw opcode bytes,
  whose payload creates ``marker`` if it ever runs. Techniques cover GLOBAL (``c``),
  STACK_GLOBAL (``\\x93``), REDUCE (``R``), INST (``i``), OBJ (``o``), BUILD (``b``
  with an instance ``__setstate__`` swapped for ``os.system``), NEWOBJ (``\\x81``) and
  NEWOBJ_EX (``\\x92``), calling ``os.system``, ``posix.system``, ``nt.system``,
  ``exec``, ``eval`` (also via the Python 2 name ``__builtin__``), ``subprocess.call``
  and ``builtins.getattr`` chains. Containers: a torch zip whose ``archive/data.pkl``
  is the payload (``torchzip``), the payload as a value in an otherwise valid state
  dict next to real tensors (``torchzip-in-dict``), the payload as a tensor's
  ``_rebuild_tensor_v2`` argument (``torchzip-in-tensor-args``), a legacy (non-zip)
  torch file with the payload in its state dict (``legacy``), and a bare pickle
  named ``.pkl`` (``bare-pkl``) and ``.pt`` (``bare-pt``).
* Broken torch zips, broken safetensors files, Git LFS pointers, empty / text /
  random files, broken sharded folders and a folder that holds no checkpoint.
* An unreadable file (chmod 000) -- only when not running as root: root reads
  a chmod-000 file anyway, so under ``os.geteuid() == 0`` (and on systems without
  ``geteuid``) that case is left out of the list rather than marked.

The torch archives are built by hand, without importing torch (importing torch
alone takes about 2 s): the clean base is the same records, with byte-identical
``data.pkl`` and storage records, that ``torch.save`` (2.x) writes for
``{"w": arange(6.).reshape(2, 3), "b": zeros(3)}``, in the same order and with
torch's 64-byte record alignment; ``test_corpus_selfcheck.py`` checks that against
real ``torch.save`` output and that torch loads the clean base.

The nt payload is live only on Windows (``nt`` does not exist elsewhere) and the
posix one only on POSIX; :func:`is_live_here` says whether a malicious case can
actually run on this machine. Everything is deterministic for a given ``marker``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import pickletools
import random
import shlex
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BadFile", "build_corpus", "write_controls", "payload_pickle", "is_live_here"]


@dataclass(frozen=True)
class BadFile:
    id: str  # short stable id for pytest ids
    path: Path  # the file or folder to feed the tool
    problem: str  # one phrase: what is wrong
    expect: tuple[str, ...]  # lowercase substrings; a good error message contains at least one
    malicious: bool  # True when the file tries to run code (creates the marker if it ever runs)


# --------------------------------------------------------------------------- pickle opcodes


def _u(s: str) -> bytes:
    """BINUNICODE."""
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def _g(module: str, name: str) -> bytes:
    """GLOBAL."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _int(i: int) -> bytes:
    if 0 <= i < 256:
        return b"K" + bytes([i])
    if 0 <= i < 65536:
        return b"M" + struct.pack("<H", i)
    return b"J" + struct.pack("<i", i)


def _put(i: int) -> bytes:
    return b"q" + bytes([i])


def _get(i: int) -> bytes:
    return b"h" + bytes([i])


def _call(fn: bytes, *args: bytes) -> bytes:
    """fn(*args) through MARK ... TUPLE REDUCE."""
    return fn + b"(" + b"".join(args) + b"tR"


def _top(fragment: bytes, proto: int = 2) -> bytes:
    """A whole pickle whose result is the fragment's value."""
    return b"\x80" + bytes([proto]) + fragment + b"."


# --------------------------------------------------------------------------- payloads
# Each payload is a memo-free opcode fragment that pushes exactly one value, so it can
# stand alone or sit inside a torch state-dict pickle without disturbing its memo.


@dataclass(frozen=True)
class _Payload:
    stem: str
    problem: str
    build: Callable[[str], bytes]  # marker path -> fragment
    names: tuple[str, ...]  # extra lowercase substrings a good refusal may name
    proto: int = 2


def _touch(marker: str) -> str:
    return "touch " + shlex.quote(marker)


def _open_code(marker: str) -> str:
    return f"open({marker!r}, 'w').close()"


def _import_os() -> bytes:
    return _call(_g("builtins", "__import__"), _u("os"))


_PAYLOADS: tuple[_Payload, ...] = (
    _Payload(
        "os-system-global",
        "GLOBAL os.system + REDUCE runs a shell command",
        lambda m: _call(_g("os", "system"), _u(_touch(m))),
        ("os.system",),
    ),
    _Payload(
        "posix-system-global",
        "GLOBAL posix.system + REDUCE runs a shell command",
        lambda m: _call(_g("posix", "system"), _u(_touch(m))),
        ("posix.system",),
    ),
    _Payload(
        "nt-system-global",
        "GLOBAL nt.system + REDUCE runs a shell command (live on Windows only)",
        lambda m: _call(_g("nt", "system"), _u(_touch(m))),
        ("nt.system",),
    ),
    _Payload(
        "exec-global",
        "GLOBAL builtins.exec + REDUCE runs Python source",
        lambda m: _call(_g("builtins", "exec"), _u(_open_code(m))),
        ("exec",),
    ),
    _Payload(
        "eval-global",
        "GLOBAL builtins.eval + REDUCE evaluates Python source",
        lambda m: _call(_g("builtins", "eval"), _u(_open_code(m))),
        ("eval",),
    ),
    _Payload(
        "eval-py2-builtin-global",
        "GLOBAL __builtin__.eval (Python 2 name, remapped to builtins) + REDUCE",
        lambda m: _call(_g("__builtin__", "eval"), _u(_open_code(m))),
        ("eval", "__builtin__"),
    ),
    _Payload(
        "subprocess-call-global",
        "GLOBAL subprocess.call + REDUCE with an argv list",
        lambda m: _call(_g("subprocess", "call"), b"](" + _u("touch") + _u(m) + b"e"),
        ("subprocess",),
    ),
    _Payload(
        "getattr-chain-import-os",
        "builtins.getattr(builtins.__import__('os'), 'system')(cmd)",
        lambda m: _call(_call(_g("builtins", "getattr"), _import_os(), _u("system")), _u(_touch(m))),
        ("getattr", "__import__"),
    ),
    _Payload(
        "getattr-chain-sys-modules",
        "getattr(sys.modules.get('nt', __import__('os')), 'system')(cmd): nt.system or os.system",
        lambda m: _call(
            _call(
                _g("builtins", "getattr"),
                _call(_call(_g("builtins", "getattr"), _g("sys", "modules"), _u("get")), _u("nt"), _import_os()),
                _u("system"),
            ),
            _u(_touch(m)),
        ),
        ("getattr", "sys.modules", "__import__"),
    ),
    _Payload(
        "os-system-stack-global",
        "STACK_GLOBAL os.system (protocol 4) + REDUCE",
        lambda m: _u("os") + _u("system") + b"\x93(" + _u(_touch(m)) + b"tR",
        ("os.system", "stack_global"),
        proto=4,
    ),
    _Payload(
        "os-system-inst",
        "INST os.system calls it with the marked arguments",
        lambda m: b"(" + _u(_touch(m)) + b"ios\nsystem\n",
        ("os.system", "opcode"),
    ),
    _Payload(
        "os-system-obj",
        "OBJ calls os.system with the marked arguments",
        lambda m: b"(" + _g("os", "system") + _u(_touch(m)) + b"o",
        ("os.system", "opcode"),
    ),
    _Payload(
        "os-system-build-setstate",
        "NEWOBJ SimpleNamespace, BUILD sets its __setstate__ to os.system, a second BUILD calls it",
        lambda m: (
            _g("types", "SimpleNamespace")
            + b")\x81}"
            + _u("__setstate__")
            + _g("os", "system")
            + b"sb"
            + _u(_touch(m))
            + b"b"
        ),
        ("os.system", "simplenamespace", "__setstate__", "opcode"),
    ),
    _Payload(
        "os-system-newobj-partial",
        "NEWOBJ builds functools.partial(os.system, cmd), REDUCE calls it",
        lambda m: _g("functools", "partial") + b"(" + _g("os", "system") + _u(_touch(m)) + b"t\x81)R",
        ("os.system", "functools.partial"),
    ),
    _Payload(
        "os-system-newobj-ex-partial",
        "NEWOBJ_EX builds functools.partial(os.system, cmd), REDUCE calls it",
        lambda m: _g("functools", "partial") + b"(" + _g("os", "system") + _u(_touch(m)) + b"t}\x92)R",
        ("os.system", "functools.partial"),
        proto=4,
    ),
)

# payload stem -> the os.name on which it can run at all
_ONLY_ON = {"nt-system-global": "nt", "posix-system-global": "posix"}


def is_live_here(bad: BadFile) -> bool:
    """Whether a malicious case's payload can run on this machine (it needs POSIX ``touch``
    except for the exec/eval ones; the nt one needs Windows, the posix one POSIX)."""
    if not bad.malicious:
        return False
    for stem, osname in _ONLY_ON.items():
        if bad.id.startswith(f"pickle-{stem}-"):
            return os.name == osname
    return True


# --------------------------------------------------------------------------- torch layout

_W_DATA = struct.pack("<6f", *range(6))  # float32 arange(6), shape (2, 3)
_B_DATA = bytes(12)  # float32 zeros(3)
_SERIALIZATION_ID = b"0561108523619670529414145908056316082535"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_DICT_KEY = "config"  # the state-dict key under which the in-dict payload sits


def _state_pickle(
    *,
    legacy: bool = False,
    keys: tuple[str, str] = ("0", "1"),
    w_offset: int = 0,
    extra: bytes | None = None,
    hooks: bytes | None = None,
) -> bytes:
    """The pickle torch.save writes for {"w": arange(6.).reshape(2, 3), "b": zeros(3)}.

    ``extra`` adds a ``"config"`` entry between the two tensors; ``hooks`` replaces the
    backward-hooks argument of ``b``'s ``_rebuild_tensor_v2`` call. Both are memo-free.
    """
    tail = b"N" if legacy else b""  # legacy persistent ids carry a view_metadata slot
    p = [
        b"\x80\x02}", _put(0), b"(",
        _u("w"), _put(1), _g("torch._utils", "_rebuild_tensor_v2"), _put(2), b"((",
        _u("storage"), _put(3), _g("torch", "FloatStorage"), _put(4), _u(keys[0]), _put(5),
        _u("cpu"), _put(6), _int(6), tail, b"t", _put(7), b"Q",
        _int(w_offset), _int(2), _int(3), b"\x86", _put(8), _int(3), _int(1), b"\x86", _put(9),
        b"\x89", _g("collections", "OrderedDict"), _put(10), b")R", _put(11), b"t", _put(12), b"R", _put(13),
    ]  # fmt: skip
    if extra is not None:
        p += [_u(_DICT_KEY), extra]
    p += [
        _u("b"), _put(14), _get(2), b"((", _get(3), _get(4), _u(keys[1]), _put(15), _get(6),
        _int(3), tail, b"t", _put(16), b"Q",
        _int(0), _int(3), b"\x85", _put(17), _int(1), b"\x85", _put(18), b"\x89",
    ]  # fmt: skip
    p += [hooks] if hooks is not None else [_get(10), b")R", _put(19)]
    p += [b"t", _put(20), b"R", _put(21), b"u."]
    return b"".join(p)


def _zip(records: list[tuple[str, bytes]], *, align: int = 64) -> bytes:
    """A stored (uncompressed) zip, deterministic, each record's data aligned like torch's."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in records:
            info = zipfile.ZipInfo(name, _ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0
            if align:
                pad = (-(buf.tell() + 30 + len(name.encode()) + 4)) % align
                info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            z.writestr(info, data)
    return buf.getvalue()


def _torch_zip(
    data_pkl: bytes | None,
    *,
    byteorder: bytes = b"little",
    storages: dict[str, bytes] | None = None,
) -> bytes:
    """A torch.save-style zip (``archive/...`` records, torch's order); None drops data.pkl."""
    if storages is None:
        storages = {"0": _W_DATA, "1": _B_DATA}
    recs = [] if data_pkl is None else [("data.pkl", data_pkl)]
    recs += [(".format_version", b"1"), (".storage_alignment", b"64"), ("byteorder", byteorder)]
    recs += [(f"data/{k}", v) for k, v in storages.items()]
    recs += [("version", b"3\n"), (".data/serialization_id", _SERIALIZATION_ID)]
    return _zip([(f"archive/{n}", d) for n, d in recs])


_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
_LEGACY_PROTOCOL = b"\x80\x02M\xe9\x03."  # 1001
_LEGACY_SYS_INFO = pickle.dumps(
    {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
    protocol=2,
)


def _legacy(obj_pickle: bytes) -> bytes:
    """A legacy (pre-zip) torch file: magic, protocol, sys_info, object, storage keys, storages."""
    keys = pickle.dumps(["0", "1"], protocol=2)
    storages = struct.pack("<q", 6) + _W_DATA + struct.pack("<q", 3) + _B_DATA
    return _LEGACY_MAGIC + _LEGACY_PROTOCOL + _LEGACY_SYS_INFO + obj_pickle + keys + storages


# --------------------------------------------------------------------------- safetensors layout


def _st(header: object = None, data: bytes = b"", *, raw: bytes | None = None, length: int | None = None) -> bytes:
    """A safetensors file: u64 LE header length, JSON header padded with spaces, data."""
    hb = raw if raw is not None else json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    return struct.pack("<Q", len(hb) if length is None else length) + hb + data


def _t(dtype: str, shape: list[int], start: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


_ST_DATA = struct.pack("<6f", *range(6)) + struct.pack("<3f", 7, 8, 9)  # 36 bytes
_ST_GOOD = {"a": _t("F32", [2, 3], 0, 24), "b": _t("F32", [3], 24, 36)}


# --------------------------------------------------------------------------- expectations

_REFUSE = (
    "unsafe", "refus", "not allowed", "disallowed", "forbidden", "untrusted", "malicious",
    "code execution", "arbitrary code", "blocked", "rejected",
)  # fmt: skip
_UNKNOWN = (
    "not a checkpoint", "unrecognised", "unrecognized", "unknown format", "unsupported format",
    "not a pytorch", "not a torch", "not a safetensors",
)  # fmt: skip
_STORAGE = ("storage", "out of range", "out of bounds", "truncat", "too short", "missing", "not found")
_OUTSIDE = ("outside", "escape", "travers", "absolute", "not allowed", "refus", "unsafe")

_CONTAINERS = ("torchzip", "torchzip-in-dict", "torchzip-in-tensor-args", "legacy", "bare-pkl", "bare-pt")


# --------------------------------------------------------------------------- building


class _Builder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cases: list[BadFile] = []

    def write(self, rel: str, data: bytes | str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def add(self, id: str, path: Path, problem: str, expect: tuple[str, ...], malicious: bool = False) -> None:
        assert all(e == e.lower() for e in expect), id
        self.cases.append(BadFile(id, path, problem, tuple(dict.fromkeys(expect)), malicious))

    def file(self, id: str, rel: str, data: bytes | str, problem: str, expect: tuple[str, ...], malicious=False):
        self.add(id, self.write(rel, data), problem, expect, malicious)


def _malicious(b: _Builder, marker: str) -> None:
    for p in _PAYLOADS:
        frag = p.build(marker)
        expect = _REFUSE + p.names
        bodies = {
            "torchzip": _torch_zip(_top(frag, p.proto)),
            "torchzip-in-dict": _torch_zip(_state_pickle(extra=frag)),
            "torchzip-in-tensor-args": _torch_zip(_state_pickle(hooks=frag)),
            "legacy": _legacy(_state_pickle(legacy=True, extra=frag)),
            "bare-pkl": _top(frag, p.proto),
            "bare-pt": _top(frag, p.proto),
        }
        where = {
            "torchzip": "as a torch zip's whole data.pkl",
            "torchzip-in-dict": f"as state_dict[{_DICT_KEY!r}] next to real tensors in a torch zip",
            "torchzip-in-tensor-args": "as a tensor's _rebuild_tensor_v2 argument in a torch zip",
            "legacy": f"as state_dict[{_DICT_KEY!r}] in a legacy (non-zip) torch file",
            "bare-pkl": "as a bare pickle (.pkl)",
            "bare-pt": "as a bare pickle named .pt",
        }
        extra_expect = {"bare-pkl": _UNKNOWN, "bare-pt": _UNKNOWN + ("magic",)}
        for c in _CONTAINERS:
            ext = ".pkl" if c == "bare-pkl" else ".pt"
            id = f"pickle-{p.stem}-{c}"
            problem = f"{p.problem}, {where[c]}"
            b.file(id, f"malicious/{id}{ext}", bodies[c], problem, expect + extra_expect.get(c, ()), malicious=True)


def _torch_broken(b: _Builder) -> None:
    clean = _torch_zip(_state_pickle())
    d = "torchzip"
    b.file(
        "torchzip-no-data-pkl",
        f"{d}/no-data-pkl.pt",
        _torch_zip(None),
        "torch zip without archive/data.pkl",
        ("data.pkl", "missing", "not a torch", "not a pytorch"),
    )
    b.file(
        "torchzip-data-pkl-truncated",
        f"{d}/data-pkl-truncated.pt",
        _torch_zip(_state_pickle()[:-40]),
        "data.pkl cut short (no STOP opcode)",
        ("pickle", "truncat", "corrupt", "unexpected end", "stop"),
    )
    b.file(
        "torchzip-storage-record-missing",
        f"{d}/storage-record-missing.pt",
        _torch_zip(_state_pickle(), storages={"1": _B_DATA}),
        "storage record archive/data/0 is missing",
        ("data/0",) + _STORAGE,
    )
    b.file(
        "torchzip-storage-key-out-of-range",
        f"{d}/storage-key-out-of-range.pt",
        _torch_zip(_state_pickle(keys=("0", "7"))),
        "tensor 'b' references storage key '7' (only data/0 and data/1 exist)",
        ("data/7", "7") + _STORAGE,
    )
    b.file(
        "torchzip-storage-record-short",
        f"{d}/storage-record-short.pt",
        _torch_zip(_state_pickle(), storages={"0": _W_DATA[:12], "1": _B_DATA}),
        "data/0 holds 12 bytes but its storage is 6 float32 (24 bytes)",
        ("data/0",) + _STORAGE + ("bytes",),
    )
    b.file(
        "torchzip-tensor-past-storage-end",
        f"{d}/tensor-past-storage-end.pt",
        _torch_zip(_state_pickle(w_offset=4)),
        "tensor 'w' storage_offset 4 + 6 elements exceeds its 6-element storage",
        _STORAGE + ("offset", "exceed", "bounds"),
    )
    b.file(
        "torchzip-byteorder-big",
        f"{d}/byteorder-big.pt",
        _torch_zip(_state_pickle(), byteorder=b"big"),
        "byteorder record says 'big' (torch itself would byte-swap)",
        ("byteorder", "byte order", "endian"),
    )
    b.file(
        "torchzip-byteorder-middle",
        f"{d}/byteorder-middle.pt",
        _torch_zip(_state_pickle(), byteorder=b"middle"),
        "byteorder record says 'middle'",
        ("byteorder", "byte order", "endian"),
    )
    b.file(
        "torchzip-truncated-half",
        f"{d}/truncated-half.pt",
        clean[: len(clean) // 2],
        "torch zip cut in half (no central directory)",
        ("truncat", "zip", "corrupt", "damaged", "incomplete", "end of file"),
    )
    b.file(
        "zip-not-torch",
        f"{d}/plain-zip.pt",
        _zip([("notes/readme.txt", b"Just some notes, zipped.\n")], align=0),
        "a plain zip holding a text file, no torch archive",
        _UNKNOWN + ("data.pkl",),
    )


def _safetensors_broken(b: _Builder) -> None:
    d = "safetensors"
    hdr = ("header",)
    good = _st(_ST_GOOD, _ST_DATA)
    cases: list[tuple[str, bytes, str, tuple[str, ...]]] = [
        ("st-shorter-than-length-prefix", b"\x10\x00\x00", "3-byte file, shorter than the 8-byte header length",
         hdr + ("truncat", "too short", "too small", "empty")),
        ("st-header-len-beyond-file", _st(_ST_GOOD, _ST_DATA, length=len(good) + 1000),
         "header length larger than the whole file", hdr),
        ("st-header-len-over-100mb", _st(_ST_GOOD, _ST_DATA, length=100 * 1024 * 1024 + 8),
         "header length just over 100 MB in a 156-byte file", hdr),
        ("st-header-len-u64-max", _st(_ST_GOOD, _ST_DATA, length=2**64 - 1),
         "header length 2**64-1", hdr),
        ("st-header-not-json", _st(raw=b"\xff\xfe not json {", data=_ST_DATA),
         "header bytes are not JSON (nor UTF-8)", hdr + ("json", "utf")),
        ("st-header-json-list", _st([_ST_GOOD], _ST_DATA),
         "header is a JSON list, not an object", hdr + ("json", "object")),
        ("st-duplicate-tensor-name",
         _st(raw=b'{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},'
                 b'"b":{"dtype":"F32","shape":[3],"data_offsets":[12,24]},'
                 b'"a":{"dtype":"I32","shape":[3],"data_offsets":[0,12]}}', data=_ST_DATA[:24]),
         "tensor name 'a' appears twice in the header (F32 and I32 over the same bytes)", ("duplicate",)),
        ("st-overlapping-offsets", _st({"a": _t("F32", [2, 3], 0, 24), "b": _t("F32", [3], 16, 28)}, _ST_DATA[:28]),
         "tensor byte ranges overlap ([0,24] and [16,28])", ("overlap", "offset")),
        ("st-reversed-offsets", _st({"a": _t("F32", [2, 3], 24, 0), "b": _t("F32", [3], 24, 36)}, _ST_DATA),
         "data_offsets out of order: begin 24 > end 0", ("offset",)),
        ("st-gap-between-offsets", _st({"a": _t("F32", [2, 3], 0, 24), "b": _t("F32", [3], 28, 40)},
                                       _ST_DATA + bytes(4)),
         "4-byte hole between tensors ([0,24] then [28,40])", ("gap", "hole", "offset", "contiguous")),
        ("st-offsets-past-end", _st({"a": _t("F32", [2, 3], 0, 24), "b": _t("F32", [2**20], 24, 24 + 4 * 2**20)},
                                    _ST_DATA),
         "tensor 'b' ends 4 MiB past the end of the 36-byte data",
         ("offset", "past the end", "beyond", "exceed", "truncat", "out of bounds", "larger than", "end of file")),
        ("st-shape-size-mismatch", _st({"a": _t("F32", [2, 3], 0, 20), "b": _t("F32", [3], 20, 32)}, _ST_DATA[:32]),
         "F32 [2,3] needs 24 bytes but data_offsets span 20",
         ("size", "shape", "bytes", "offset", "mismatch")),
        ("st-unknown-dtype-f19", _st({"a": _t("F19", [2, 3], 0, 24), "b": _t("F32", [3], 24, 36)}, _ST_DATA),
         "unknown dtype 'F19'", ("dtype", "f19")),
        ("st-negative-dimension", _st({"a": _t("F32", [-2, 3], 0, 24), "b": _t("F32", [3], 24, 36)}, _ST_DATA),
         "shape [-2, 3] has a negative dimension", ("shape", "negative", "dimension")),
        ("st-shape-product-overflows-u64",
         _st({"a": _t("F32", [2**32, 2**32, 16], 0, 24), "b": _t("F32", [3], 24, 36)}, _ST_DATA),
         "shape [2**32, 2**32, 16] element count overflows u64",
         ("overflow", "too large", "too big", "shape")),
        ("st-metadata-non-string",
         _st({"__metadata__": {"format": "pt", "step": 1000, "tags": ["a", "b"]}, **_ST_GOOD}, _ST_DATA),
         "__metadata__ has non-string values (int, list)", ("metadata",)),
        ("st-truncated-data", good[: len(good) - 18],
         "valid header but the data is cut short by 18 bytes",
         ("truncat", "too short", "offset", "end of file", "size", "incomplete")),
    ]  # fmt: skip
    for id, data, problem, expect in cases:
        b.file(id, f"{d}/{id[3:]}.safetensors", data, problem, expect)


_LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    f"oid sha256:{hashlib.sha256(b'ckptsurgeon hostile corpus').hexdigest()}\n"
    "size 123456789\n"
)


def _odd_files(b: _Builder) -> None:
    lfs = ("git lfs", "git-lfs", "lfs pointer")
    b.file(
        "lfs-pointer-safetensors",
        "lfs-safetensors/model.safetensors",
        _LFS_POINTER,
        "Git LFS pointer text instead of the safetensors file",
        lfs,
    )
    b.file(
        "lfs-pointer-bin",
        "lfs-bin/pytorch_model.bin",
        _LFS_POINTER,
        "Git LFS pointer text instead of the torch file",
        lfs,
    )
    b.file("empty-file", "misc/empty.pt", b"", "empty file (0 bytes)", ("empty", "0 bytes", "zero"))
    b.file(
        "text-file-safetensors",
        "misc/notes.safetensors",
        "These are my notes about the fine-tuning run.\nThe real weights live on the shared drive.\n",
        "English prose named .safetensors",
        _UNKNOWN + ("header", "text"),
    )
    rnd = random.Random(20240611).randbytes(4096)
    assert rnd[:1] not in (b"\x80", b"P", b"{"), "seeded random bytes look like a known format"
    b.file("random-bytes", "misc/random.pth", rnd, "4096 seeded random bytes named .pth", _UNKNOWN + ("magic",))
    d = b.root / "not-a-checkpoint-dir"
    b.write("not-a-checkpoint-dir/README.txt", "This folder holds documentation only.\n")
    b.add(
        "dir-without-checkpoint",
        d,
        "a directory holding only README.txt",
        _UNKNOWN
        + (
            "no checkpoint",
            "no model",
            "nothing to",
            "no .safetensors",
            "no weights",
            "found no",
            "contains no",
            "holds no",
        ),
    )


_SHARD1 = "model-00001-of-00002.safetensors"
_SHARD2 = "model-00002-of-00002.safetensors"


def _sharded(b: _Builder) -> None:
    shard1 = _st({"a": _t("F32", [2, 3], 0, 24)}, _ST_DATA[:24])
    outside = _st({"b": _t("F32", [3], 0, 12)}, _ST_DATA[24:])
    b.write("sharded/outside.safetensors", outside)  # a real file a ../ path can reach

    def folder(id: str, index: bytes | str | None, problem: str, expect: tuple[str, ...]) -> None:
        b.write(f"sharded/{id}/{_SHARD1}", shard1)
        if index is not None:
            b.write(f"sharded/{id}/model.safetensors.index.json", index)
        b.add(f"sharded-{id}", b.root / "sharded" / id, problem, expect)

    def index(weight_map: dict[str, str]) -> str:
        return json.dumps({"metadata": {"total_size": 36}, "weight_map": weight_map}, indent=2)

    folder(
        "missing-shard",
        index({"a": _SHARD1, "b": _SHARD2}),
        f"index names {_SHARD2}, which is not there",
        ("missing", "not found", "no such file", "does not exist", "model-00002-of-00002"),
    )
    folder(
        "escape-relative",
        index({"a": _SHARD1, "b": "../../etc/passwd"}),
        "weight_map points outside the folder (../../etc/passwd)",
        _OUTSIDE,
    )
    folder(
        "escape-absolute",
        index({"a": _SHARD1, "b": "/etc/passwd"}),
        "weight_map names an absolute path (/etc/passwd)",
        _OUTSIDE,
    )
    folder(
        "escape-to-real-file",
        index({"a": _SHARD1, "b": "../outside.safetensors"}),
        "weight_map points to a valid safetensors file outside the folder",
        _OUTSIDE,
    )
    folder(
        "index-not-json",
        '{"weight_map": {"a": "model-00001-of-00002.safetensors",',
        "model.safetensors.index.json is not valid JSON",
        ("json", "index"),
    )
    folder(
        "index-without-weight-map",
        json.dumps({"metadata": {"total_size": 36}}),
        "model.safetensors.index.json has no weight_map",
        ("weight_map", "weight map"),
    )


def _unreadable(b: _Builder) -> None:
    if not hasattr(os, "geteuid") or os.geteuid() == 0:
        return  # root reads chmod-000 files anyway; see the module docstring
    path = b.write("misc/unreadable.safetensors", _st(_ST_GOOD, _ST_DATA))
    path.chmod(0)
    b.add(
        "unreadable-file",
        path,
        "a valid file without read permission (chmod 000)",
        ("permission", "denied", "cannot read", "can't read", "not readable", "unreadable"),
    )


def build_corpus(root: Path, marker: Path) -> list[BadFile]:
    """Write every bad file under root; malicious payloads create `marker` if ever executed.

    ``marker`` is made absolute and baked into the payloads (shell-quoted for the
    ``touch`` commands, repr'd for exec/eval). ``root`` is created if needed and should
    be empty. The unreadable-file case is included only when not running as root
    (``os.geteuid() != 0``), since root can read a chmod-000 file.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    b = _Builder(root)
    _malicious(b, os.fspath(Path(marker).absolute()))
    _torch_broken(b)
    _safetensors_broken(b)
    _odd_files(b)
    _sharded(b)
    _unreadable(b)
    ids = [c.id for c in b.cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    return b.cases


def write_controls(root: Path) -> dict[str, Path]:
    """Write well-formed counterparts (positive controls) of the corpus's containers.

    Returns ``{"torchzip": .pt, "legacy": .pt, "safetensors": .safetensors,
    "sharded": folder}``; all hold w/a = arange(6.).reshape(2, 3) and b = [0, 0, 0]
    (torch) or [7, 8, 9] (safetensors).
    """
    root = Path(root)
    b = _Builder(root)
    out = {
        "torchzip": b.write("torchzip.pt", _torch_zip(_state_pickle())),
        "legacy": b.write("legacy.pt", _legacy(_state_pickle(legacy=True))),
        "safetensors": b.write("model.safetensors", _st(_ST_GOOD, _ST_DATA)),
    }
    b.write(f"sharded/{_SHARD1}", _st({"a": _t("F32", [2, 3], 0, 24)}, _ST_DATA[:24]))
    b.write(f"sharded/{_SHARD2}", _st({"b": _t("F32", [3], 0, 12)}, _ST_DATA[24:]))
    b.write(
        "sharded/model.safetensors.index.json",
        json.dumps({"metadata": {"total_size": 36}, "weight_map": {"a": _SHARD1, "b": _SHARD2}}),
    )
    out["sharded"] = root / "sharded"
    return out


def payload_pickle(path: Path) -> bytes:
    """The pickle stream in a malicious file that holds the payload, extracted without
    running it: a zip's ``*/data.pkl``, a legacy file's object pickle, else the file."""
    data = Path(path).read_bytes()
    if data[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            name = next(n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
            return z.read(name)
    if data.startswith(_LEGACY_MAGIC):
        f = io.BytesIO(data)
        for _ in range(3):  # magic, protocol, sys_info
            for _op in pickletools.genops(f):
                pass
        start = f.tell()
        for _op in pickletools.genops(f):
            pass
        return data[start : f.tell()]
    return data
