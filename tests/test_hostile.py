"""Every hostile or broken file (tests/hostile/corpus.py) against every command.

For each file and each of ``inspect``, ``convert``, ``diff`` (the bad file as A and as B),
``adapt-head`` and ``adapt-stem``: exit 2, one line on stderr that names the file and says what is
wrong (one of the case's expected phrases), no traceback, no stray warning, the payload's marker
never appears, nothing is left in the output folder, and the bad file's bytes are unchanged.

The full matrix runs in-process (``ckptsurgeon.cli.main``, ~10 ms a run instead of ~1 s for a
fresh interpreter); a small subset runs the real command in a subprocess to show it behaves the same.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

from ckptsurgeon.cli import main
from tests.conftest import Result, assert_one_line_error
from tests.hostile.corpus import BadFile, build_corpus, is_live_here, write_controls

COMMANDS = ("inspect", "convert", "diff-a", "diff-b", "adapt-head", "adapt-stem")


def _case_ids() -> list[str]:
    """The corpus's ids, for test ids (deterministic; the cases are written again per module)."""
    root = Path(tempfile.mkdtemp(prefix="ckptsurgeon-ids-"))
    try:
        return [c.id for c in build_corpus(root, root / "MARKER")]
    finally:
        for p in root.rglob("*"):  # the unreadable case (non-root only) needs its mode back to be removed
            if p.is_file():
                p.chmod(0o600)
        shutil.rmtree(root)


IDS = _case_ids()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[dict[str, BadFile], Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("corpus")
    marker = tmp_path_factory.mktemp("marker") / "MARKER"
    cases = {c.id: c for c in build_corpus(root / "cases", marker)}
    cases.update((c.id, c) for c in _extra_cases(root / "extra", marker))
    assert sorted(cases) == sorted(IDS + EXTRA_IDS)
    controls = write_controls(root / "controls")
    return cases, marker, controls


def _extra_cases(root: Path, marker: Path) -> list[BadFile]:
    """Cases found while fuzzing and reviewing the readers, beyond the shared corpus."""
    import io
    import json
    import struct
    import zipfile

    import torch

    root.mkdir(parents=True)
    cases = []

    def add(id: str, path: Path, problem: str, expect: tuple[str, ...], malicious: bool = False) -> None:
        cases.append(BadFile(id, path, problem, expect, malicious))

    d = root / "index-names-itself"
    d.mkdir()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model.safetensors.index.json"}}))
    add("x-index-names-itself", d, "the index lists itself as a shard", ("not a weights file",))

    d = root / "symlink-shard"
    d.mkdir()
    outside = root / "outside.safetensors"
    shutil.copyfile(write_controls(root / "ctl")["safetensors"], outside)
    os.symlink(outside, d / "model-00001-of-00001.safetensors")
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"}})
    )
    add("x-symlinked-shard-outside", d, "the shard is a symlink to a file outside the folder", ("outside",))

    header = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    p = root / "deep.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header)
    add("x-st-deeply-nested-header", p, "100,000 nested JSON arrays in the header", ("json",))

    for legacy in (False, True):
        p = root / f"view-bomb-{'legacy' if legacy else 'zip'}.pt"
        torch.save({"w": torch.zeros(1).expand(2**38)}, p, _use_new_zipfile_serialization=not legacy)
        add(
            f"x-view-bomb-{'legacy' if legacy else 'zip'}",
            p,
            "a 4-byte storage viewed as 1 TiB (stride 0)",
            ("expanding it would take",),
        )

    control = write_controls(root / "ctl2")["torchzip"]
    p = root / "duplicate-record.pt"
    shutil.copyfile(control, p)
    with warnings.catch_warnings(), zipfile.ZipFile(p, "a") as z:
        warnings.simplefilter("ignore")
        z.writestr("archive/data/0", bytes(24))
    add(
        "x-torchzip-duplicate-record",
        p,
        "archive/data/0 appears twice (zipfile reads one, torch the other)",
        ("two records named",),
    )

    payload = (
        b"\x80\x04X\x11\x00\x00\x00torch\nHalfStorageX\x06\x00\x00\x00system\x93("
        + b"X"
        + struct.pack("<I", len(f"touch {marker}"))
        + f"touch {marker}".encode()
        + b"tR."
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(control) as src, zipfile.ZipFile(buf, "w") as z:  # the control with this data.pkl
        for name in src.namelist():
            z.writestr(name, payload if name.endswith("data.pkl") else src.read(name))
    p = root / "newline-global.pt"
    p.write_bytes(buf.getvalue())
    problem = "STACK_GLOBAL of a name holding a newline ('torch\\nHalfStorage'), which must not break the line"
    add("x-pickle-global-name-with-newline", p, problem, ("refused",))
    return cases


EXTRA_IDS = [
    "x-index-names-itself", "x-symlinked-shard-outside", "x-st-deeply-nested-header", "x-view-bomb-zip",
    "x-view-bomb-legacy", "x-torchzip-duplicate-record", "x-pickle-global-name-with-newline",
]  # fmt: skip


def _digest(path: Path) -> str:
    """A hash of a file, or of every file under a folder (names and bytes)."""
    h = hashlib.sha256()
    paths = sorted(path.rglob("*")) if path.is_dir() else [path]
    for p in paths:
        if p.is_file() and os.access(p, os.R_OK):
            h.update(os.fsencode(p.relative_to(path) if path.is_dir() else p.name) + b"\0" + p.read_bytes())
    return h.hexdigest()


def command_args(command: str, bad: Path, good: Path, out: Path) -> list[str | os.PathLike]:
    return {
        "inspect": ["inspect", bad],
        "convert": ["convert", bad, out / "out.safetensors"],
        "diff-a": ["diff", bad, good],
        "diff-b": ["diff", good, bad],
        "adapt-head": ["adapt-head", bad, out / "out.pt", "--num-classes", "5"],
        "adapt-stem": ["adapt-stem", bad, out / "out.safetensors", "--in-chans", "1"],
    }[command]


@pytest.fixture(scope="module", autouse=True)
def built_once():
    """Typer builds the click command tree on every ``main()`` call (~50 ms, most of an in-process
    run); build it once for this module's ~800 runs. Parsing and error handling stay the real ones."""
    import typer.main

    real, built = typer.main.get_command, {}

    def get_command(app):
        if id(app) not in built:
            built[id(app)] = real(app)
        return built[id(app)]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(typer.main, "get_command", get_command)
        yield


_SILENT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)  # hidden by default


def run_in_process(capsys, *args: str | os.PathLike) -> Result:
    """``ckptsurgeon ARGS`` through the real entry point, in this interpreter; warnings a user
    would see on stderr are added to ``err`` as Python would print them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit) as exc:
            main([os.fspath(a) for a in args])
    out, err = capsys.readouterr()
    for w in caught:
        if not issubclass(w.category, _SILENT):
            err += f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n"
    return Result(exc.value.code, out, err)


def assert_refused(res: Result, bad: BadFile) -> None:
    """Exit 2, one stderr line naming the file and the problem, nothing on stdout."""
    assert_one_line_error(res)
    line = res.err.strip()
    assert line.startswith("ckptsurgeon: error: "), line
    assert os.fspath(bad.path) in line, f"the message does not name the file: {line}"
    assert any(e in line.lower() for e in bad.expect), f"{bad.problem!r}: none of {bad.expect} in: {line}"
    assert res.out == ""


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case_id", IDS + EXTRA_IDS)
def test_bad_file_is_refused_in_process(corpus, capsys, tmp_path, case_id, command):
    cases, marker, controls = corpus
    bad = cases[case_id]
    before = _digest(bad.path)
    res = run_in_process(capsys, *command_args(command, bad.path, controls["safetensors"], tmp_path))
    try:
        assert_refused(res, bad)
        assert not marker.exists(), "the payload ran"
        assert os.listdir(tmp_path) == [], "the output folder is not empty"
        assert _digest(bad.path) == before, "the input changed"
    finally:
        marker.unlink(missing_ok=True)


# One malicious file per container (a different payload technique each) and a few broken files,
# each through the real command; together they use every command.
SUBPROCESS_CASES = [
    ("pickle-os-system-global-torchzip", "convert"),
    ("pickle-subprocess-call-global-torchzip-in-dict", "adapt-head"),
    ("pickle-os-system-newobj-partial-torchzip-in-tensor-args", "adapt-stem"),
    ("pickle-os-system-stack-global-torchzip", "inspect"),
    ("pickle-exec-global-legacy", "diff-a"),
    ("pickle-getattr-chain-import-os-bare-pkl", "inspect"),
    ("pickle-os-system-build-setstate-bare-pt", "diff-b"),
    ("torchzip-truncated-half", "convert"),
    ("st-offsets-past-end", "adapt-head"),
    ("st-duplicate-tensor-name", "inspect"),
    ("sharded-escape-to-real-file", "adapt-stem"),
    ("lfs-pointer-bin", "diff-b"),
]


@pytest.fixture(scope="module")
def real_runs(corpus, tmp_path_factory) -> dict[tuple[str, str], tuple[Result, Path, bool, bool]]:
    """Run the subset through the real command, all at once (each is mostly interpreter start-up).

    Returns ``(result, output folder, input unchanged, marker absent)`` per case and command; the
    marker is checked once all have finished, so a payload that ran fails every one of them.
    """
    cases, marker, controls = corpus
    env = {**os.environ, "COLUMNS": "200"}
    started = []
    for case_id, command in SUBPROCESS_CASES:
        bad = cases[case_id]
        out = tmp_path_factory.mktemp("out")
        args = [os.fspath(a) for a in command_args(command, bad.path, controls["safetensors"], out)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "ckptsurgeon", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=out,
            env=env,
        )
        started.append((case_id, command, bad, out, _digest(bad.path), proc))
    results = {}
    for case_id, command, bad, out, before, proc in started:
        stdout, stderr = proc.communicate(timeout=300)
        results[(case_id, command)] = (Result(proc.returncode, stdout, stderr), out, _digest(bad.path) == before)
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return {k: (*v, not ran) for k, v in results.items()}


@pytest.mark.parametrize(("case_id", "command"), SUBPROCESS_CASES)
def test_bad_file_is_refused_by_the_real_command(corpus, real_runs, case_id, command):
    cases, _marker, _controls = corpus
    res, out, unchanged, no_marker = real_runs[(case_id, command)]
    assert_refused(res, cases[case_id])
    assert no_marker, "a payload ran"
    assert os.listdir(out) == []
    assert unchanged


def test_subprocess_subset_covers_every_container_and_command(corpus):
    cases, _marker, _controls = corpus
    assert {cmd for _id, cmd in SUBPROCESS_CASES} == set(COMMANDS)
    containers = ("-torchzip", "-torchzip-in-dict", "-torchzip-in-tensor-args", "-legacy", "-bare-pkl", "-bare-pt")
    for c in containers:
        assert any(i.endswith(c) and cases[i].malicious and is_live_here(cases[i]) for i, _ in SUBPROCESS_CASES), c


def test_controls_are_accepted_by_every_command(corpus, capsys, tmp_path):
    """The positive controls pass the same commands (so the refusals above are about the damage)."""
    _cases, marker, controls = corpus
    for kind, path in controls.items():
        before = _digest(path)
        for command in ("inspect", "convert", "diff-a"):
            out = tmp_path / f"{kind}-{command}"
            out.mkdir()
            res = run_in_process(capsys, *command_args(command, path, path, out))
            assert res.code == 0, (kind, command, res.err)
            assert "Traceback" not in res.err
        assert _digest(path) == before
    assert not marker.exists()
