"""What speed and memory on big checkpoints rest on, proved on small ones.

- ``inspect`` reads headers only: corrupting every tensor byte changes nothing it prints, and the
  bytes it reads are a tiny fraction of the file;
- ``--help``, ``inspect`` and ``diff --keys-only`` never import torch;
- untouched tensors are copied as bytes (never decoded), bit-identical;
- ``.pt`` → ``.pt`` keeps storage sharing and strides, with valid CRCs, also past zip64 limits;
- progress bars stay off for ``--json``, ``--quiet`` and a stderr that is not a terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch
from safetensors.torch import load_file, save_file

from ckptsurgeon import Pipeline
from ckptsurgeon.checkpoint import TensorRef
from ckptsurgeon.formats import torch_write
from ckptsurgeon.inspection import inspect_checkpoint
from ckptsurgeon.progress import ByteProgress, wanted
from tests.conftest import ROOT, run_cli


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "blocks.0.weight": torch.randn(512, 512, generator=g),
        "blocks.0.bias": torch.randn(512, generator=g),
        "blocks.1.weight": torch.randn(512, 512, generator=g).to(torch.bfloat16),
        "norm.weight": torch.ones(512, dtype=torch.float16),
        "steps": torch.tensor(12),
        "head.weight": torch.randn(10, 512, generator=g),
        "head.bias": torch.zeros(10),
    }


def _zip_data_spans(path) -> list[tuple[int, int]]:
    """(offset, size) of every storage record's bytes in a torch zip."""
    spans = []
    with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
        for info in zf.infolist():
            if "/data/" in info.filename:
                f.seek(info.header_offset + 26)
                name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
                spans.append((info.header_offset + 30 + name_len + extra_len, info.file_size))
    return spans


def _scramble(path, spans) -> None:
    with open(path, "r+b") as f:
        for offset, size in spans:
            f.seek(offset)
            f.write(bytes([0xA5]) * size)


def _bytes_read(fn) -> int:
    with open("/proc/self/io") as f:
        before = int(f.readline().split()[1])
    fn()
    with open("/proc/self/io") as f:
        return int(f.readline().split()[1]) - before


@pytest.mark.parametrize("ext", ["safetensors", "pth"])
def test_inspect_reads_no_tensor_bytes(tmp_path, ext):
    path = tmp_path / f"m.{ext}"
    sd = _state()
    if ext == "safetensors":
        save_file(sd, path)
        header = 8 + int.from_bytes(path.read_bytes()[:8], "little")
        spans = [(header, path.stat().st_size - header)]
    else:
        torch.save(sd, path)
        spans = _zip_data_spans(path)
    data_bytes = sum(size for _, size in spans)
    assert data_bytes > 1_500_000

    before = run_cli("inspect", path, "--json")
    assert before.code == 0, before.err
    inspect_checkpoint(path)  # warm up imports, so the count below is inspect's own reading
    read = _bytes_read(lambda: inspect_checkpoint(path))
    assert read < data_bytes / 20, (read, data_bytes)

    _scramble(path, spans)  # every tensor byte replaced: a reader of data would now see garbage
    after = run_cli("inspect", path, "--json")
    assert after.code == 0, after.err
    assert after.json() == before.json()


_NO_TORCH = """
import sys
from ckptsurgeon.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(code, "torch" in sys.modules)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["inspect", "fixtures/vit.safetensors"],
        ["inspect", "fixtures/vit.pth", "--json"],
        ["inspect", "fixtures/train.pth", "--tree"],
        ["inspect", "fixtures/sharded"],
        ["diff", "fixtures/vit.safetensors", "fixtures/vit.pth", "--keys-only"],
    ],
)
def test_commands_that_read_headers_never_import_torch(args):
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, *args], capture_output=True, text=True, cwd=ROOT)
    code, imported = proc.stdout.strip().splitlines()[-1].split()
    assert code in ("0", "None"), proc.stderr
    assert imported == "False"


def _raw(t: torch.Tensor) -> list[int]:
    return t.contiguous().reshape(-1).view(torch.uint8).tolist()


def _never_decoded(monkeypatch) -> None:
    def refuse(self):
        raise AssertionError(f"{self.name} was decoded")

    monkeypatch.setattr(TensorRef, "load", refuse)


@pytest.mark.parametrize("src_ext,dst_ext", [("pth", "pth"), ("pth", "safetensors"), ("safetensors", "pth")])
def test_untouched_tensors_are_byte_copied_never_decoded(tmp_path, monkeypatch, src_ext, dst_ext):
    sd = _state()
    sd["nan_payload"] = torch.tensor([0x7FC00001, 0x7F800002, -1], dtype=torch.int32).view(torch.float32)
    src = tmp_path / f"src.{src_ext}"
    (save_file if src_ext == "safetensors" else torch.save)(sd, src)
    dst = tmp_path / f"dst.{dst_ext}"
    _never_decoded(monkeypatch)
    Pipeline([]).run(src, dst)
    monkeypatch.undo()

    out = load_file(dst) if dst_ext == "safetensors" else torch.load(dst, weights_only=True)
    # a .pth keeps its order; safetensors files list tensors by name, so only the set is compared
    assert list(out) == list(sd) if src_ext == "pth" else set(out) == set(sd)
    for name, tensor in sd.items():
        assert out[name].dtype == tensor.dtype and out[name].shape == tensor.shape
        assert _raw(out[name]) == _raw(tensor), name
    if dst_ext == "pth":
        assert zipfile.ZipFile(dst).testzip() is None  # every record's CRC matches its bytes


def test_pt_to_pt_keeps_storage_sharing_and_strides(tmp_path):
    base = torch.arange(24, dtype=torch.float32)
    sd = {
        "w": base.view(4, 6),
        "w_t": base.view(4, 6).t(),  # strided view of the same storage
        "tail": base[18:],  # contiguous view at an offset
        "tied": base.view(4, 6),
        "alone": torch.arange(6, dtype=torch.int64).view(2, 3).t(),
        "scalar": torch.tensor(3.5),
    }
    torch.save(sd, tmp_path / "a.pth")
    Pipeline([]).run(tmp_path / "a.pth", tmp_path / "b.pth")
    out = torch.load(tmp_path / "b.pth", weights_only=True)
    assert list(out) == list(sd)
    for name, tensor in sd.items():
        assert torch.equal(out[name], tensor), name
        assert out[name].stride() == tensor.stride(), name
        assert out[name].storage_offset() == tensor.storage_offset(), name
    ptr = out["w"].untyped_storage().data_ptr()
    assert all(out[n].untyped_storage().data_ptr() == ptr for n in ("w_t", "tail", "tied"))
    assert zipfile.ZipFile(tmp_path / "b.pth").testzip() is None
    with zipfile.ZipFile(tmp_path / "b.pth") as zf:
        assert sum("/data/" in n for n in zf.namelist()) == 3  # one record per storage, as torch writes


def test_pt_writer_zip64_records_load(tmp_path, monkeypatch):
    # Files past 4 GiB need zip64 sizes and offsets; lower the limit so every record uses them.
    monkeypatch.setattr(torch_write, "_ZIP64_LIMIT", 16)
    sd = _state()
    save_file(sd, tmp_path / "a.safetensors")
    Pipeline([]).run(tmp_path / "a.safetensors", tmp_path / "z.pth")
    with zipfile.ZipFile(tmp_path / "z.pth") as zf:
        assert zf.testzip() is None
        assert all(i.file_size == len(zf.read(i)) for i in zf.infolist())
    out = torch.load(tmp_path / "z.pth", weights_only=True)
    mm = torch.load(tmp_path / "z.pth", weights_only=True, mmap=True)  # 64-byte aligned records
    for name, tensor in sd.items():
        assert torch.equal(out[name], tensor) and torch.equal(mm[name], tensor)


def test_dtypes_without_a_storage_class_round_trip_through_pt(tmp_path):
    sd = {
        "u16": torch.arange(5).to(torch.uint16),
        "u32": torch.arange(5).to(torch.uint32),
        "f8": torch.tensor([0.5, -1.0, 2.0]).to(torch.float8_e4m3fn),
        "f32": torch.tensor([1.0, 2.0]),
    }
    save_file(sd, tmp_path / "a.safetensors")
    Pipeline([]).run(tmp_path / "a.safetensors", tmp_path / "b.pt")
    out = torch.load(tmp_path / "b.pt", weights_only=True)
    for name, tensor in sd.items():
        assert out[name].dtype == tensor.dtype
        assert _raw(out[name]) == _raw(tensor)


def test_safetensors_output_says_format_pt_for_transformers(tmp_path):
    torch.save(_state(), tmp_path / "a.pth")
    res = run_cli("convert", tmp_path / "a.pth", tmp_path / "b.safetensors")
    assert res.code == 0, res.err
    with open(tmp_path / "b.safetensors", "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n))["__metadata__"]
    assert meta["format"] == "pt"


def test_no_progress_output_without_a_terminal(tmp_path):
    torch.save(_state(), tmp_path / "a.pth")
    for extra in ([], ["--json"], ["--quiet"]):
        res = run_cli("convert", tmp_path / "a.pth", tmp_path / "b.safetensors", "--force", *extra)
        assert res.code == 0 and res.err == "", res.err


def test_progress_wanted_only_on_a_terminal_without_json_or_quiet():
    class Tty:
        def isatty(self):
            return True

    class Pipe:
        def isatty(self):
            return False

    assert wanted(stream=Tty())
    assert not wanted(stream=Pipe())
    assert not wanted(as_json=True, stream=Tty())
    assert not wanted(quiet=True, stream=Tty())


def test_progress_bar_waits_for_its_delay():
    quiet = ByteProgress(100, "writing", delay=3600)
    quiet(60)
    assert quiet.done == 60 and quiet._bar is None  # short work draws nothing
    off = ByteProgress(100, "writing", enabled=False, delay=0)
    off(10)
    assert off._bar is None
    with ByteProgress(100, "writing", delay=0) as shown:
        shown(40)
        assert shown._bar is not None
        assert shown._bar.tasks[0].completed == 40 and shown._bar.tasks[0].total == 100
    assert shown._bar is None


def test_output_size_reported_is_the_file_size(tmp_path):
    torch.save(_state(), tmp_path / "a.pth")
    report = Pipeline([]).run(tmp_path / "a.pth", tmp_path / "b.pth")
    assert report.output_bytes == os.path.getsize(tmp_path / "b.pth")


def test_copy_falls_back_to_reads_where_copy_file_range_cannot(tmp_path, monkeypatch):
    import errno

    def cross_device(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", cross_device, raising=False)
    sd = _state()
    torch.save(sd, tmp_path / "a.pth")
    Pipeline([]).run(tmp_path / "a.pth", tmp_path / "b.safetensors")
    Pipeline([]).run(tmp_path / "a.pth", tmp_path / "c.pth")
    for out in (load_file(tmp_path / "b.safetensors"), torch.load(tmp_path / "c.pth", weights_only=True)):
        for name, tensor in sd.items():
            assert _raw(out[name]) == _raw(tensor)
