"""Data safety: atomic writes under SIGKILL / Ctrl-C / SIGTERM, out-of-space, the input never
modified, DST that is SRC refused, and ``--verify``.

Kill tests write a real ~200 MB output through the real command in a subprocess. To kill it at a
known point rather than by racing it, a test-only ``sitecustomize`` (put on the child's
PYTHONPATH, see ``_PAUSE``) stops the child with SIGSTOP when the temporary file has reached N
bytes, or just before the temporary file is renamed over DST. The test then sends the signal and
looks at what is left: after SIGKILL, DST is absent (or, with ``--force``, the old DST is intact)
and the temporary file, named ``.DST.ckptsurgeon-tmp-*``, is the only leftover (nothing can clean
up after SIGKILL); after SIGINT or SIGTERM, nothing is left at all and the exit code is 130.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ckptsurgeon.checkpoint import TensorRef
from ckptsurgeon.cli import main
from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.formats import open_checkpoint
from ckptsurgeon.pipeline import Pipeline
from ckptsurgeon.transforms.cast import Cast
from ckptsurgeon.verify import verify_output
from tests.conftest import FIXTURES, ROOT, Result, assert_one_line_error, run_cli

TMP_MARK = ".ckptsurgeon-tmp-"
MiB = 1024 * 1024

# --------------------------------------------------------------------------- the pause harness

_PAUSE = textwrap.dedent(
    '''
    """Test-only: stop this process (SIGSTOP) at a chosen point of writing DST's temporary file."""
    import os, signal, threading, time

    _spec = os.environ.get("CKPTSURGEON_TEST_PAUSE", "")
    _mark = ".ckptsurgeon-tmp-"

    def _stop():
        os.kill(os.getpid(), signal.SIGSTOP)

    if _spec.startswith("bytes:"):
        _threshold = int(_spec.split(":", 1)[1])
        _folder = os.environ["CKPTSURGEON_TEST_PAUSE_DIR"]

        def _watch():
            while True:
                for entry in os.scandir(_folder):
                    try:
                        if _mark in entry.name and entry.stat().st_size >= _threshold:
                            _stop()
                            return
                    except FileNotFoundError:
                        pass
                time.sleep(0.0005)

        threading.Thread(target=_watch, daemon=True).start()
    elif _spec == "rename":
        for _name in ("replace", "rename"):
            def _wrap(real):
                def wrapped(src, dst, *args, **kwargs):
                    if _mark in os.fspath(src):
                        _stop()
                    return real(src, dst, *args, **kwargs)
                return wrapped
            setattr(os, _name, _wrap(getattr(os, _name)))
    '''
)


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("harness")
    (d / "sitecustomize.py").write_text(_PAUSE)
    return d


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict[str, Path]:
    """A ~200 MB checkpoint as .pth and as .safetensors (5 float32 tensors of 40 MB)."""
    d = tmp_path_factory.mktemp("big")
    sd = {f"layer{i}.weight": torch.arange(10 * MiB, dtype=torch.float32).add_(i).reshape(-1, 1024) for i in range(5)}
    torch.save(sd, d / "big.pth")
    save_file(sd, d / "big.safetensors")
    return {"pth": d / "big.pth", "safetensors": d / "big.safetensors"}


@pytest.fixture
def children():
    """Children started by a test; any still alive (stopped, say, after a failed assertion) are killed."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_file():
            h.update(os.fsencode(p.name) + b"\0" + p.read_bytes())
    return h.hexdigest()


def _start_paused(children: list, harness: Path, src: Path, dst: Path, point: str, *extra: str) -> subprocess.Popen:
    """Start ``convert SRC DST`` and return once the child has stopped itself at ``point``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(harness), str(ROOT)]),
        "CKPTSURGEON_TEST_PAUSE": point,
        "CKPTSURGEON_TEST_PAUSE_DIR": str(dst.parent),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckptsurgeon", "convert", src, dst, "--quiet", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children.append(proc)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        pid, status = os.waitpid(proc.pid, os.WNOHANG | os.WUNTRACED)
        if pid:
            if os.WIFSTOPPED(status):
                return proc
            proc.returncode = os.waitstatus_to_exitcode(status)
            raise AssertionError(f"the child ended before pausing at {point} (exit {proc.returncode})")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"the child never paused at {point}")


def _temp_files(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if TMP_MARK in n)


# The pause points: early in the data, half way through, and all bytes written but not yet renamed.
POINTS = {"1MiB": f"bytes:{MiB}", "half": f"bytes:{100 * MiB}", "before-rename": "rename"}
CONVERSIONS = {"pth-to-safetensors": ("pth", "out.safetensors"), "safetensors-to-pt": ("safetensors", "out.pt")}


@pytest.mark.parametrize("point", list(POINTS))
@pytest.mark.parametrize("conversion", list(CONVERSIONS))
def test_sigkill_leaves_no_dst_only_a_named_temp_file(children, harness, big, tmp_path, conversion, point):
    kind, name = CONVERSIONS[conversion]
    dst = tmp_path / name
    proc = _start_paused(children, harness, big[kind], dst, POINTS[point])
    partial = _temp_files(tmp_path)
    assert len(partial) == 1 and partial[0].startswith(f".{name}{TMP_MARK}"), os.listdir(tmp_path)
    if point == "before-rename":  # every byte is there; only the rename is missing
        assert (tmp_path / partial[0]).stat().st_size > 200 * MiB
    proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not dst.exists()
    assert os.listdir(tmp_path) == partial  # the recognisable temp file is the only trace


@pytest.mark.parametrize(
    ("conversion", "point"), [("pth-to-safetensors", "half"), ("safetensors-to-pt", "before-rename")]
)
def test_sigkill_with_force_keeps_the_old_dst(children, harness, big, tmp_path, conversion, point):
    kind, name = CONVERSIONS[conversion]
    dst = tmp_path / name
    old = b"the old output, which must survive a killed --force run"
    dst.write_bytes(old)
    proc = _start_paused(children, harness, big[kind], dst, POINTS[point], "--force")
    proc.kill()
    proc.wait(timeout=60)
    assert dst.read_bytes() == old
    assert len(_temp_files(tmp_path)) == 1


@pytest.mark.parametrize(
    ("sig", "conversion", "point", "force"),
    [
        (signal.SIGINT, "pth-to-safetensors", "half", False),
        (signal.SIGINT, "safetensors-to-pt", "before-rename", True),
        (signal.SIGTERM, "safetensors-to-pt", "1MiB", False),
        (signal.SIGTERM, "pth-to-safetensors", "before-rename", True),
    ],
    ids=["int-half", "int-before-rename-force", "term-1MiB", "term-before-rename-force"],
)
def test_ctrl_c_and_sigterm_clean_up(children, harness, big, tmp_path, sig, conversion, point, force):
    kind, name = CONVERSIONS[conversion]
    dst = tmp_path / name
    old = b"old output"
    if force:
        dst.write_bytes(old)
    proc = _start_paused(children, harness, big[kind], dst, POINTS[point], *(["--force"] if force else []))
    os.kill(proc.pid, sig)
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.strip() == "ckptsurgeon: interrupted; nothing was written"
    assert "Traceback" not in err
    assert _temp_files(tmp_path) == []
    if force:
        assert dst.read_bytes() == old and os.listdir(tmp_path) == [name]
    else:
        assert os.listdir(tmp_path) == []


def test_unpaused_run_writes_the_whole_file(harness, big, tmp_path):
    """Positive control for the harness: with no pause point the same command completes."""
    res = run_cli("convert", big["pth"], tmp_path / "out.safetensors", "--quiet")
    assert res.code == 0, res.err
    got = load_file(tmp_path / "out.safetensors")
    assert list(got) == [f"layer{i}.weight" for i in range(5)]
    assert torch.equal(got["layer3.weight"].reshape(-1)[:4], torch.tensor([3.0, 4.0, 5.0, 6.0]))
    assert os.listdir(tmp_path) == ["out.safetensors"]


# --------------------------------------------------------------------------- out of space


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> Path:
    """A 4 MB checkpoint: bigger than the file size limit below."""
    p = tmp_path_factory.mktemp("medium") / "m.pth"
    torch.save({"a": torch.randn(512, 1024), "b": torch.randn(512, 1024)}, p)
    return p


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, MiB))


@pytest.mark.parametrize("name", ["out.safetensors", "out.pt"])
def test_file_size_limit_ends_with_exit_2_and_no_output(medium, tmp_path, name):
    proc = subprocess.run(
        [sys.executable, "-m", "ckptsurgeon", "convert", medium, tmp_path / name],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=300,
    )
    res = Result(proc.returncode, proc.stdout, proc.stderr)
    assert_one_line_error(res, str(tmp_path / name), "cannot write", "file too large")
    assert os.listdir(tmp_path) == []


def _run(capsys, *args) -> Result:
    with pytest.raises(SystemExit) as exc:
        main([os.fspath(a) for a in args])
    out, err = capsys.readouterr()
    return Result(exc.value.code, out, err)


def _fail_temp_writes(monkeypatch, code: int, after: int = 64 * 1024) -> None:
    """Writes to our temporary files fail with ``code`` once ``after`` bytes are in (a full disk)."""
    written: dict[int, int] = {}

    def is_temp(fd: int) -> bool:
        try:
            return TMP_MARK in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False

    def guard(real, fd_arg: int):
        def wrapped(*args, **kwargs):
            fd = args[fd_arg]
            if is_temp(fd):
                if written.get(fd, 0) >= after:
                    raise OSError(code, os.strerror(code))
                n = real(*args, **kwargs)
                written[fd] = written.get(fd, 0) + n
                return n
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(os, "write", guard(os.write, 0))
    monkeypatch.setattr(os, "copy_file_range", guard(os.copy_file_range, 1))
    monkeypatch.setattr(os, "pwrite", guard(os.pwrite, 0))
    monkeypatch.setattr(os, "writev", guard(os.writev, 0))
    monkeypatch.setattr(os, "sendfile", guard(os.sendfile, 0))


@pytest.mark.parametrize("name", ["out.safetensors", "out.pt", "out.bin"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_full_disk_ends_with_exit_2_and_no_output(medium, tmp_path, capsys, monkeypatch, name, code):
    _fail_temp_writes(monkeypatch, code)
    res = _run(capsys, "convert", medium, tmp_path / name, "--force")
    assert_one_line_error(res, str(tmp_path / name), "cannot write", os.strerror(code))
    assert os.listdir(tmp_path) == []


def test_full_disk_with_force_keeps_the_old_dst(medium, tmp_path, capsys, monkeypatch):
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"old")
    _fail_temp_writes(monkeypatch, errno.ENOSPC)
    assert_one_line_error(_run(capsys, "convert", medium, dst, "--force"), "no space left")
    assert dst.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.safetensors"]


# --------------------------------------------------------------------------- the input is never modified

WRITERS = {
    "convert": [],
    "adapt-head": ["--num-classes", "5"],
    "adapt-stem": ["--in-chans", "1"],
}


@pytest.mark.parametrize("command", list(WRITERS))
def test_dst_that_resolves_to_src_is_refused(tmp_path, capsys, monkeypatch, command):
    src = tmp_path / "m.pth"
    src.write_bytes((FIXTURES / "resnet.pth").read_bytes())
    before = src.read_bytes()
    (tmp_path / "sub").mkdir()
    os.symlink(src, tmp_path / "link.pth")
    os.link(src, tmp_path / "hard.pth")
    os.symlink(tmp_path, tmp_path / "dirlink")
    monkeypatch.chdir(tmp_path)
    spellings = [
        src,
        "m.pth",
        "./m.pth",
        "sub/../m.pth",
        f"{tmp_path}//m.pth",
        tmp_path / "link.pth",
        tmp_path / "hard.pth",
        tmp_path / "dirlink" / "m.pth",
    ]
    for dst in spellings:
        for force in ([], ["--force"]):
            res = _run(capsys, command, src, dst, *WRITERS[command], *force)
            assert_one_line_error(res, "the output is the input")
    assert src.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["dirlink", "hard.pth", "link.pth", "m.pth", "sub"]


@pytest.mark.parametrize("command", list(WRITERS))
def test_dst_inside_a_sharded_input_folder_is_refused(tmp_path, capsys, command):
    src = tmp_path / "sharded"
    src.mkdir()
    for p in (FIXTURES / "sharded").iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    before = _digest(src)
    res = _run(capsys, command, src, src / "out.safetensors", *WRITERS[command])
    assert_one_line_error(res, "inside the input folder")
    assert _digest(src) == before


GOOD_INPUTS = ["resnet.pth", "resnet.safetensors", "train.pth", "ddp.pth", "tied.pth", "mixed.pth", "sharded"]


@pytest.mark.parametrize("name", GOOD_INPUTS)
def test_input_bytes_unchanged_by_every_command(tmp_path, capsys, name):
    src = FIXTURES / name
    before = _digest(src)
    runs = [
        ["inspect", src],
        ["inspect", src, "--json"],
        ["diff", src, src],
        ["convert", src, tmp_path / "a.safetensors", "--verify"],
        ["convert", src, tmp_path / "a.pt", "--verify"],
    ]
    if name.startswith(("resnet", "train", "ddp")):
        prefix = ["--strip-prefix", "module."] if name == "ddp.pth" else []
        runs += [
            ["adapt-head", src, tmp_path / "h.safetensors", "--num-classes", "5", "--verify", *prefix],
            ["adapt-stem", src, tmp_path / "s.pt", "--in-chans", "1", "--verify", *prefix],
        ]
    for args in runs:
        res = _run(capsys, *args)
        assert res.code == 0, (args, res.err)
        assert _digest(src) == before, args
    assert not [n for n in os.listdir(tmp_path) if TMP_MARK in n]


# --------------------------------------------------------------------------- --verify


@pytest.mark.parametrize(
    "args",
    [
        ["convert", FIXTURES / "mixed.pth", "{dst}.safetensors"],
        ["convert", FIXTURES / "tied.pth", "{dst}.pt"],
        ["convert", FIXTURES / "resnet.safetensors", "{dst}.pt", "--dtype", "bfloat16"],
        ["adapt-head", FIXTURES / "vit.safetensors", "{dst}.safetensors", "--num-classes", "3"],
        ["adapt-stem", FIXTURES / "resnet.pth", "{dst}.pt", "--in-chans", "1"],
    ],
    ids=["copied-safetensors", "tied-pt", "cast-pt", "new-head", "new-stem"],
)
def test_verify_passes_on_a_good_write(tmp_path, capsys, args):
    args = [str(a).format(dst=tmp_path / "out") for a in args]
    res = _run(capsys, *args, "--verify")
    assert res.code == 0, res.err
    assert "verified: every tensor in the output matches what was intended" in res.out


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def test_verify_catches_a_corrupted_copied_tensor(tmp_path):
    src = FIXTURES / "resnet.safetensors"
    dst = tmp_path / "out.pt"
    Pipeline([]).run(src, dst)
    refs = list(open_checkpoint(src).tensors.values())
    verify_output(dst, refs)  # the untouched output passes
    span = open_checkpoint(dst).tensors["layer1.0.conv2.weight"].span
    _flip_byte(dst, span.offset + 17)
    with pytest.raises(SurgeonError) as e:
        verify_output(dst, refs)
    msg = str(e.value)
    assert "layer1.0.conv2.weight" in msg and "bytes copied from the source" in msg and "first at byte 17" in msg
    assert e.value.path == str(dst) and "the output was removed" in msg
    assert not dst.exists()


def test_verify_catches_a_corrupted_computed_tensor(tmp_path):
    src = FIXTURES / "resnet.pth"
    dst = tmp_path / "out.safetensors"
    Pipeline([Cast("float16")]).run(src, dst)
    state, _ = Pipeline([Cast("float16")]).apply(open_checkpoint(src))
    refs = list(state.tensors.values())
    assert refs[0].span is None  # computed by the cast, so compared by value
    out = open_checkpoint(dst).tensors[refs[0].name]
    _flip_byte(dst, out.span.offset + 2)
    with pytest.raises(SurgeonError) as e:
        verify_output(dst, refs, remove_on_failure=False)
    assert f"tensor {refs[0].name!r} differs from the computed values (first at byte 2)" in str(e.value)
    assert dst.exists()


def test_verify_catches_wrong_names_shapes_and_dtypes(tmp_path):
    src = FIXTURES / "resnet.safetensors"
    dst = tmp_path / "out.safetensors"
    Pipeline([]).run(src, dst)
    refs = list(open_checkpoint(src).tensors.values())
    extra = refs + [refs[0].renamed("extra.weight")]
    with pytest.raises(SurgeonError, match="names differ.*missing 'extra.weight'"):
        verify_output(dst, extra, remove_on_failure=False)
    with pytest.raises(SurgeonError, match="unexpected 'fc.bias'"):
        verify_output(dst, [r for r in refs if r.name != "fc.bias"], remove_on_failure=False)
    half = TensorRef.from_tensor("conv1.weight", torch.zeros(16, 3, 7, 7, dtype=torch.float16))
    wrong = [half if r.name == "conv1.weight" else r for r in refs]
    with pytest.raises(SurgeonError, match=r"float32 \[16, 3, 7, 7\] in the output, float16 \[16, 3, 7, 7\] was"):
        verify_output(dst, wrong, remove_on_failure=False)
    dst.write_bytes(b"garbage")
    with pytest.raises(SurgeonError, match="cannot reopen the output"):
        verify_output(dst, refs)
    assert not dst.exists()
