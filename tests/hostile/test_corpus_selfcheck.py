"""Self-check of the hostile corpus: the files are what they claim to be.

* ids are unique, paths exist, expectations are lowercase and non-empty;
* the build is fast and byte-for-byte deterministic;
* every live malicious payload really creates the marker when unpickled in a throwaway
  subprocess (so the corpus is dangerous), and the opcode techniques are all present;
* ``torch.load(..., weights_only=True)`` refuses every malicious file without creating
  the marker; torch's outcome on the broken torch files is recorded;
* the safetensors cases are rejected by ``safetensors.safe_open`` or shown invalid by an
  independent check (the library accepts duplicate tensor names: last one wins);
* the hand-built torch archives match real ``torch.save`` output and load in torch.

Nothing here imports ckptsurgeon; torch is only imported inside subprocesses.
"""

from __future__ import annotations

import json
import os
import pickletools
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from .corpus import BadFile, build_corpus, is_live_here, payload_pickle, write_controls

PY = sys.executable

# Cases the real libraries accept although they are broken (checked independently below).
SAFETENSORS_ACCEPTS = {"st-duplicate-tensor-name"}
TORCH_ACCEPTS = {"torchzip-byteorder-big"}  # torch byte-swaps big-endian archives


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[list[BadFile], Path, Path]:
    root = tmp_path_factory.mktemp("corpus")
    marker = tmp_path_factory.mktemp("marker") / "MARKER"
    return build_corpus(root, marker), root, marker


@pytest.fixture(scope="module")
def cases(built) -> list[BadFile]:
    return built[0]


@pytest.fixture(scope="module")
def marker(built) -> Path:
    return built[2]


def _by_id(cases: list[BadFile]) -> dict[str, BadFile]:
    return {c.id: c for c in cases}


# --------------------------------------------------------------------------- shape of the corpus


def test_ids_unique_paths_exist_expectations_sane(built):
    cases, root, marker = built
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids))
    for c in cases:
        assert c.id and c.id == c.id.lower() and " " not in c.id, c.id
        assert c.path.exists() or c.path.is_symlink(), c.id
        assert c.path.resolve().is_relative_to(root.resolve()), c.id
        assert c.problem.strip(), c.id
        assert c.expect and all(e and e == e.lower() for e in c.expect), c.id
        assert isinstance(c.malicious, bool)
    assert not marker.exists()


def test_expected_groups_present(cases):
    ids = {c.id for c in cases}
    mal = [c for c in cases if c.malicious]
    assert len(mal) == 15 * 6
    for container in ("torchzip", "torchzip-in-dict", "torchzip-in-tensor-args", "legacy", "bare-pkl", "bare-pt"):
        assert any(c.id.endswith("-" + container) for c in mal), container
    for required in (
        "pickle-os-system-global-torchzip", "torchzip-no-data-pkl", "torchzip-storage-record-missing",
        "torchzip-storage-key-out-of-range", "torchzip-storage-record-short", "torchzip-byteorder-big",
        "torchzip-byteorder-middle", "torchzip-truncated-half", "zip-not-torch",
        "st-header-len-beyond-file", "st-header-len-over-100mb", "st-header-not-json", "st-header-json-list",
        "st-duplicate-tensor-name", "st-overlapping-offsets", "st-reversed-offsets", "st-gap-between-offsets",
        "st-offsets-past-end", "st-shape-size-mismatch", "st-unknown-dtype-f19", "st-negative-dimension",
        "st-shape-product-overflows-u64", "st-metadata-non-string", "st-truncated-data",
        "lfs-pointer-safetensors", "lfs-pointer-bin", "empty-file", "text-file-safetensors", "random-bytes",
        "sharded-missing-shard", "sharded-escape-relative", "sharded-escape-absolute",
        "sharded-index-not-json", "sharded-index-without-weight-map", "dir-without-checkpoint",
    ):  # fmt: skip
        assert required in ids, required
    by = _by_id(cases)
    assert by["lfs-pointer-safetensors"].path.name == "model.safetensors"
    assert by["lfs-pointer-bin"].path.name == "pytorch_model.bin"
    assert "git lfs" in by["lfs-pointer-bin"].expect
    assert by["empty-file"].path.name == "empty.pt" and by["empty-file"].path.stat().st_size == 0
    assert by["text-file-safetensors"].path.name == "notes.safetensors"
    assert by["random-bytes"].path.name == "random.pth"
    assert by["pickle-os-system-global-bare-pkl"].path.suffix == ".pkl"
    assert by["pickle-os-system-global-bare-pt"].path.suffix == ".pt"
    lines = by["lfs-pointer-bin"].path.read_text().splitlines()
    assert lines[0] == "version https://git-lfs.github.com/spec/v1"
    assert lines[1].startswith("oid sha256:") and len(lines[1]) == len("oid sha256:") + 64
    assert lines[2] == "size 123456789" and len(lines) == 3


def test_unreadable_case_only_when_it_can_work(cases):
    ids = {c.id for c in cases}
    if not hasattr(os, "geteuid") or os.geteuid() == 0:
        assert "unreadable-file" not in ids
    else:
        path = _by_id(cases)["unreadable-file"].path
        assert not os.access(path, os.R_OK)


def test_build_is_fast_and_deterministic(tmp_path):
    marker = tmp_path / "MARKER"
    trees = []
    for name in ("a", "b"):
        t0 = time.perf_counter()
        got = build_corpus(tmp_path / name, marker)
        assert time.perf_counter() - t0 < 2.0
        root = tmp_path / name
        trees.append(
            (
                [(c.id, c.path.relative_to(root), c.problem, c.expect, c.malicious) for c in got],
                {
                    p.relative_to(root): p.read_bytes()
                    for p in sorted(root.rglob("*"))
                    if p.is_file() and os.access(p, os.R_OK)
                },
            )
        )
    assert trees[0] == trees[1]
    assert not marker.exists()


def test_opcode_techniques_covered(cases):
    ops: set[str] = set()
    for c in cases:
        if c.malicious:
            ops |= {op.name for op, _arg, _pos in pickletools.genops(payload_pickle(c.path))}
    for name in ("GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "BUILD", "NEWOBJ", "NEWOBJ_EX"):
        assert name in ops, name


def _local_data_offsets(path: Path) -> dict[str, int]:
    data = path.read_bytes()
    out = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            o = info.header_offset
            assert data[o : o + 4] == b"PK\x03\x04"
            n, m = struct.unpack_from("<HH", data, o + 26)
            out[info.filename] = o + 30 + n + m
    return out


def test_torch_zips_are_aligned_like_torch(cases, tmp_path):
    controls = write_controls(tmp_path)
    paths = [controls["torchzip"]] + [c.path for c in cases if c.id.endswith("-torchzip")]
    for p in paths:
        for name, off in _local_data_offsets(p).items():
            assert off % 64 == 0, (p.name, name, off)


# --------------------------------------------------------------------------- payloads are live

_LOADER = textwrap.dedent(
    """
    import io, pickle, sys
    data = sys.stdin.buffer.read()
    if sys.argv[1] == "plain":
        pickle.loads(data)
    else:
        # torch state-dict pickles: stub only torch's persistent ids and torch.* globals
        class U(pickle.Unpickler):
            def persistent_load(self, pid):
                return pid
            def find_class(self, module, name):
                if module == "torch" or module.startswith("torch."):
                    return lambda *a, **k: None
                return super().find_class(module, name)
        U(io.BytesIO(data)).load()
    """
)


def _needs_stubs(data: bytes) -> bool:
    for op, arg, _pos in pickletools.genops(data):
        if op.name in ("PERSID", "BINPERSID") or (op.name == "GLOBAL" and str(arg).startswith("torch")):
            return True
    return False


def _unpickle_in_subprocess(data: bytes, cwd: Path) -> subprocess.CompletedProcess:
    mode = "stubbed" if _needs_stubs(data) else "plain"
    return subprocess.run([PY, "-I", "-S", "-c", _LOADER, mode], input=data, capture_output=True, timeout=60, cwd=cwd)


def test_malicious_payloads_really_create_the_marker(cases, marker, tmp_path):
    """Plain ``pickle.loads`` of each payload pickle (zip: data.pkl; legacy: the object
    pickle) in a throwaway subprocess creates the marker. Pickles that carry torch's
    persistent ids go through a ``pickle.Unpickler`` that only stubs those and ``torch.*``
    globals; os/builtins/subprocess/functools/types resolve for real."""
    failures, inert = [], []
    live_count = 0
    for c in (c for c in cases if c.malicious):
        marker.unlink(missing_ok=True)
        proc = _unpickle_in_subprocess(payload_pickle(c.path), tmp_path)
        created = marker.exists()
        marker.unlink(missing_ok=True)
        if is_live_here(c):
            live_count += 1
            if not created:
                failures.append((c.id, proc.returncode, proc.stderr.decode(errors="replace")[-300:]))
        else:
            inert.append(c.id)
            # e.g. nt.system on POSIX: the payload is real, but its module does not exist here
            assert not created, c.id
            assert b"ModuleNotFoundError" in proc.stderr, (c.id, proc.stderr[-300:])
    assert not failures, failures
    assert live_count >= 14 * 6
    assert all(i.startswith(("pickle-nt-system-global-", "pickle-posix-system-global-")) for i in inert)


# --------------------------------------------------------------------------- torch

_TORCH_SCRIPT = textwrap.dedent(
    """
    import io, json, sys, warnings, zipfile
    from pathlib import Path
    warnings.simplefilter("ignore")
    import torch
    cases, marker, controls = json.loads(sys.stdin.read())
    marker = Path(marker)
    out = {"cases": {}, "controls": {}}
    for id, path in cases:
        marker.unlink(missing_ok=True)
        try:
            obj = torch.load(path, weights_only=True)
            res = {"loaded": True, "type": type(obj).__name__}
        except BaseException as e:
            res = {"loaded": False, "error": type(e).__name__, "message": str(e)}
        res["marker"] = marker.exists()
        marker.unlink(missing_ok=True)
        out["cases"][id] = res
    # the hand-built archives against real torch.save output
    sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)}
    buf = io.BytesIO()
    torch.save(sd, buf)
    real = zipfile.ZipFile(buf)
    ours = zipfile.ZipFile(controls["torchzip"])
    out["controls"]["names_equal"] = real.namelist() == ours.namelist()
    out["controls"]["differing_records"] = [
        n for n in real.namelist() if n in ours.namelist() and real.read(n) != ours.read(n)
    ]
    for kind in ("torchzip", "legacy"):
        got = torch.load(controls[kind], weights_only=True)
        out["controls"][kind] = sorted(got) == sorted(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    got = torch.load(controls["torchzip"], weights_only=True, mmap=True)
    out["controls"]["torchzip_mmap"] = all(torch.equal(got[k], sd[k]) for k in sd)
    print(json.dumps(out))
    """
)

_TORCHISH = (".pt", ".pth", ".bin", ".pkl")


@pytest.fixture(scope="module")
def torch_report(cases, marker, tmp_path_factory) -> dict:
    controls = write_controls(tmp_path_factory.mktemp("controls"))
    todo = [(c.id, os.fspath(c.path)) for c in cases if c.path.is_file() and c.path.suffix in _TORCHISH]
    payload = json.dumps([todo, os.fspath(marker), {k: os.fspath(v) for k, v in controls.items()}])
    proc = subprocess.run([PY, "-c", _TORCH_SCRIPT], input=payload.encode(), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    marker.unlink(missing_ok=True)
    return json.loads(proc.stdout)


def test_torch_weights_only_refuses_every_malicious_file(cases, torch_report):
    results = torch_report["cases"]
    malicious = [c for c in cases if c.malicious]
    assert all(c.id in results for c in malicious)
    for c in malicious:
        r = results[c.id]
        assert not r["marker"], c.id
        assert not r["loaded"], c.id
        assert r["error"] == "UnpicklingError", (c.id, r)
        assert "weights only load failed" in r["message"].lower(), c.id


def test_torch_on_broken_torch_files(cases, torch_report):
    results = torch_report["cases"]
    broken = [c for c in cases if not c.malicious and c.id in results]
    accepted = {c.id for c in broken if results[c.id]["loaded"]}
    assert not any(results[c.id]["marker"] for c in broken)
    assert accepted <= TORCH_ACCEPTS, accepted
    assert {c.id for c in broken} >= {
        "torchzip-no-data-pkl", "torchzip-storage-record-missing", "torchzip-storage-key-out-of-range",
        "torchzip-storage-record-short", "torchzip-byteorder-middle", "torchzip-truncated-half", "zip-not-torch",
    }  # fmt: skip


def test_hand_built_torch_archives_match_torch_save(torch_report):
    ctl = torch_report["controls"]
    assert ctl["names_equal"]
    assert ctl["differing_records"] == []  # data.pkl, storages, version files, serialization id
    assert ctl["torchzip"] and ctl["legacy"] and ctl["torchzip_mmap"]


# --------------------------------------------------------------------------- safetensors


def _strict_duplicate_keys(path: Path) -> list[str]:
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    dupes: list[str] = []

    def hook(pairs):
        seen = set()
        for k, _v in pairs:
            if k in seen:
                dupes.append(k)
            seen.add(k)
        return dict(pairs)

    json.loads(raw[8 : 8 + n], object_pairs_hook=hook)
    return dupes


def test_safetensors_cases_rejected_by_the_library(cases):
    safetensors = pytest.importorskip("safetensors")
    st_cases = [c for c in cases if c.path.is_file() and c.path.suffix == ".safetensors" and not c.malicious]
    assert len(st_cases) >= 17
    accepted, rejected = set(), {}
    for c in st_cases:
        try:
            with safetensors.safe_open(os.fspath(c.path), framework="np") as f:
                for k in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                    f.get_tensor(k)
            accepted.add(c.id)
        except Exception as e:  # SafetensorError, or OSError for unreadable files
            rejected[c.id] = str(e)
    assert accepted <= SAFETENSORS_ACCEPTS, accepted
    # what the library accepts is still invalid: the duplicate name is silently resolved
    assert _strict_duplicate_keys(_by_id(cases)["st-duplicate-tensor-name"].path) == ["a"]


def test_sharded_cases_are_invalid(cases):
    for c in cases:
        if not c.id.startswith("sharded-"):
            continue
        index = c.path / "model.safetensors.index.json"
        try:
            doc = json.loads(index.read_text())
        except ValueError:
            assert c.id == "sharded-index-not-json"
            continue
        if "weight_map" not in doc:
            assert c.id == "sharded-index-without-weight-map"
            continue
        problems = []
        for shard in set(doc["weight_map"].values()):
            target = (c.path / shard).resolve()
            if os.path.isabs(shard) or not target.is_relative_to(c.path.resolve()):
                problems.append(f"outside: {shard}")
            elif not target.is_file():
                problems.append(f"missing: {shard}")
        assert problems, c.id


def test_directory_case_has_no_checkpoint(cases):
    d = _by_id(cases)["dir-without-checkpoint"].path
    assert d.is_dir() and [p.name for p in d.iterdir()] == ["README.txt"]
