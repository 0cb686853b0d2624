"""Sharded output, as transformers writes and reads it, and sharded input read as one checkpoint.

transformers is not installed here, so the format is checked by hand: shard names
``model-0000i-of-0000N.safetensors`` (``pytorch_model-…bin``), an index with
``metadata.total_size`` (the sum of tensor bytes) and a ``weight_map`` naming every tensor's shard,
and ``format: pt`` in each safetensors shard's metadata (transformers refuses shards without it).
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ckptsurgeon import Pipeline, SurgeonError
from ckptsurgeon.checkpoint import TensorRef
from ckptsurgeon.formats.writer import TMP_MARK, parse_size
from ckptsurgeon.report import Change
from ckptsurgeon.transforms import State, StepResult, Transform
from tests.conftest import FIXTURES, assert_one_line_error, run_cli


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    sd = {}
    for i in range(5):
        sd[f"blocks.{i}.weight"] = torch.randn(40, 50, generator=g)  # 8000 bytes
        sd[f"blocks.{i}.bias"] = torch.randn(40, generator=g)  # 160 bytes
    sd["embed"] = torch.randn(100, 60, generator=g)  # 24000 bytes: larger than a 10 kB shard
    sd["head.weight"] = torch.randn(10, 40, generator=g).half()
    sd["steps"] = torch.tensor(3)
    return sd


def _nbytes(sd) -> int:
    return sum(t.numel() * t.element_size() for t in sd.values())


def _index(folder, name="model.safetensors.index.json") -> dict:
    return json.loads((folder / name).read_text())


def test_folder_output_is_a_transformers_sharded_checkpoint(tmp_path):
    sd = _state()
    torch.save(sd, tmp_path / "src.pth")
    res = run_cli("convert", tmp_path / "src.pth", f"{tmp_path / 'out'}/", "--json")
    assert res.code == 0, res.err
    folder = tmp_path / "out"
    assert sorted(os.listdir(folder)) == ["model-00001-of-00001.safetensors", "model.safetensors.index.json"]
    index = _index(folder)
    assert index["metadata"] == {"total_size": _nbytes(sd)}
    assert list(index["weight_map"]) == list(sd)
    assert set(index["weight_map"].values()) == {"model-00001-of-00001.safetensors"}
    with safe_open(folder / "model-00001-of-00001.safetensors", "pt") as f:
        assert f.metadata()["format"] == "pt"
    loaded = load_file(folder / "model-00001-of-00001.safetensors")
    for name, tensor in sd.items():
        assert torch.equal(loaded[name], tensor)
    assert res.json()["output"] == f"{folder}/"


def test_max_shard_size_splits_in_order_like_huggingface_hub(tmp_path):
    sd = _state()
    torch.save(sd, tmp_path / "src.pth")
    report = Pipeline([]).run(tmp_path / "src.pth", tmp_path / "out", max_shard_size="10kB")
    folder = tmp_path / "out"
    index = _index(folder)
    names = sorted(set(index["weight_map"].values()))
    n = len(names)
    assert names == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert sorted(os.listdir(folder)) == [*names, "model.safetensors.index.json"]
    assert index["metadata"]["total_size"] == _nbytes(sd)

    # Expected split, by hand: fill a shard in order until the next tensor would pass 10 kB.
    expected, size = [[]], 0
    for name, t in sd.items():
        b = t.numel() * t.element_size()
        if expected[-1] and size + b > 10_000:
            expected.append([])
            size = 0
        expected[-1].append(name)
        size += b
    assert n == len(expected) > 2
    for shard, want in zip(names, expected):
        got = load_file(folder / shard)
        assert sorted(got) == sorted(want)
        assert all(index["weight_map"][k] == shard for k in want)
        for k in want:
            assert torch.equal(got[k], sd[k])
    assert report.output_bytes == sum(os.path.getsize(folder / f) for f in os.listdir(folder))


def test_sharded_round_trip_reads_as_one_checkpoint(tmp_path):
    sd = _state()
    torch.save(sd, tmp_path / "src.pth")
    Pipeline([]).run(tmp_path / "src.pth", tmp_path / "out", max_shard_size="10kB")
    res = run_cli("inspect", tmp_path / "out", "--json")
    assert res.code == 0, res.err
    assert [t["name"] for t in res.json()["tensors"]] == list(sd)
    back = run_cli("convert", tmp_path / "out", tmp_path / "back.pth")
    assert back.code == 0, back.err
    out = torch.load(tmp_path / "back.pth", weights_only=True)
    assert list(out) == list(sd)
    for name, tensor in sd.items():
        assert torch.equal(out[name], tensor) and out[name].dtype == tensor.dtype


def test_pt_shards_named_like_transformers_bin_shards(tmp_path):
    sd = _state()
    save_file(sd, tmp_path / "src.safetensors")
    dst = tmp_path / "out" / "pytorch_model.bin.index.json"
    (tmp_path / "out").mkdir()
    Pipeline([]).run(tmp_path / "src.safetensors", dst, max_shard_size="20kB")
    index = json.loads(dst.read_text())
    shards = sorted(set(index["weight_map"].values()))
    n = len(shards)
    assert n > 1 and shards == [f"pytorch_model-{i:05d}-of-{n:05d}.bin" for i in range(1, n + 1)]
    assert index["metadata"]["total_size"] == _nbytes(sd)
    seen = {}
    for shard in shards:
        seen.update(torch.load(tmp_path / "out" / shard, weights_only=True))
    assert set(seen) == set(sd) == set(index["weight_map"])
    for name, tensor in sd.items():
        assert torch.equal(seen[name], tensor)


def test_a_file_dst_that_fits_in_one_shard_is_just_that_file(tmp_path):
    torch.save(_state(), tmp_path / "src.pth")
    report = Pipeline([]).run(tmp_path / "src.pth", tmp_path / "one.safetensors", max_shard_size="5GB")
    assert sorted(os.listdir(tmp_path)) == ["one.safetensors", "src.pth"]
    assert "fits in one shard" in " ".join(report.notes)


def test_a_file_dst_that_does_not_fit_gets_shards_named_after_it(tmp_path):
    torch.save(_state(), tmp_path / "src.pth")
    Pipeline([]).run(tmp_path / "src.pth", tmp_path / "w.safetensors", max_shard_size="50kB")
    files = sorted(os.listdir(tmp_path))
    assert files == [
        "src.pth",
        "w-00001-of-00002.safetensors",
        "w-00002-of-00002.safetensors",
        "w.safetensors.index.json",
    ]


def test_existing_output_folder_needs_force_and_loses_stale_shards(tmp_path):
    torch.save(_state(), tmp_path / "src.pth")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    Pipeline([]).run(tmp_path / "src.pth", folder, max_shard_size="10kB")
    many = set(os.listdir(folder))
    assert len(many) > 3

    res = run_cli("convert", tmp_path / "src.pth", folder)
    assert_one_line_error(res, "model.safetensors.index.json", "--force")

    res = run_cli("convert", tmp_path / "src.pth", folder, "--force")
    assert res.code == 0, res.err
    assert sorted(os.listdir(folder)) == [
        "config.json",
        "model-00001-of-00001.safetensors",
        "model.safetensors.index.json",
    ]


def test_refuses_to_write_into_the_input_folder(tmp_path):
    torch.save(_state(), tmp_path / "src.pth")
    Pipeline([]).run(tmp_path / "src.pth", tmp_path / "out", max_shard_size="10kB")
    before = {f: (tmp_path / "out" / f).read_bytes() for f in os.listdir(tmp_path / "out")}
    res = run_cli("convert", tmp_path / "out", f"{tmp_path / 'out'}/", "--force")
    assert_one_line_error(res, "input folder")
    assert {f: (tmp_path / "out" / f).read_bytes() for f in os.listdir(tmp_path / "out")} == before


class _Broken(Transform):
    """Adds a tensor whose data cannot be produced: the write fails part-way."""

    op = "broken"

    def params(self):
        return {}

    def apply(self, state: State) -> StepResult:
        def fail():
            raise SurgeonError("no data for this tensor")

        tensors = dict(state.tensors)
        tensors["zz_broken"] = TensorRef("zz_broken", (4,), "float32", loader=fail)
        return StepResult(State(tensors, dict(state.metadata)), [Change("added", "zz_broken")], [], {})


def test_a_failed_sharded_write_leaves_nothing_behind(tmp_path):
    torch.save(_state(), tmp_path / "src.pth")
    with pytest.raises(SurgeonError, match="no data"):
        Pipeline([_Broken()]).run(tmp_path / "src.pth", tmp_path / "out", max_shard_size="10kB")
    assert sorted(os.listdir(tmp_path)) == ["src.pth"]
    assert not any(TMP_MARK in f for f in os.listdir(tmp_path))


def test_sharded_fixture_converts_to_one_file(tmp_path):
    res = run_cli("convert", FIXTURES / "sharded", tmp_path / "one.safetensors")
    assert res.code == 0, res.err
    index = json.loads((FIXTURES / "sharded" / "model.safetensors.index.json").read_text())
    want = {}
    for shard in set(index["weight_map"].values()):
        want.update(load_file(FIXTURES / "sharded" / shard))
    got = load_file(tmp_path / "one.safetensors")
    assert set(got) == set(index["weight_map"])
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor)


@pytest.mark.parametrize(
    "text,size",
    [("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("2GiB", 2 * 2**30), ("1.5GB", 1_500_000_000), ("100", 100)],
)
def test_shard_sizes_read_as_transformers_does(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["5XB", "GB", "-1GB", "0"])
def test_bad_shard_sizes_are_refused(text):
    with pytest.raises(SurgeonError, match="max-shard-size"):
        parse_size(text)


def test_refuses_shards_that_would_replace_the_input_file(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    src = folder / "model-00001-of-00001.safetensors"
    save_file(_state(), src)
    before = src.read_bytes()
    res = run_cli("convert", src, f"{folder}/", "--force")
    assert_one_line_error(res, "replace the input")
    assert src.read_bytes() == before


def test_existing_shards_without_an_index_need_force(tmp_path):
    torch.save(_state(), tmp_path / "src.pth")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"old")
    res = run_cli("convert", tmp_path / "src.pth", folder)
    assert_one_line_error(res, "model-00001-of-00002.safetensors", "--force")
