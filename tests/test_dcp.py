"""torch.distributed.checkpoint folders: inspect them and convert them to one file, bit-exact.

The folders are written by ``torch.distributed.checkpoint.save`` in this process (no process
group: DCP saves as a single process). Their ``.metadata`` pickle is read by a restricted
unpickler, never by plain pickle.
"""

from __future__ import annotations

import pickle
import struct
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

from tests.conftest import assert_one_line_error, run_cli


def _model() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "stem.weight": torch.randn(8, 3, 3, 3, generator=g),
        "bn.running_mean": torch.randn(8, generator=g),
        "bn.num_batches_tracked": torch.tensor(42),
        "blocks.0.fc.weight": torch.randn(16, 8, generator=g).to(torch.bfloat16),
        "head.weight": torch.randn(5, 16, generator=g).half(),
        "head.bias": torch.tensor([float("nan"), float("-inf"), -0.0, 1.0, 2.0]),
    }


@pytest.fixture
def dcp_folder(tmp_path):
    model = _model()
    state = {
        "model": model,
        "optim": {"state": {"0": {"exp_avg": torch.ones(8, 3, 3, 3)}}, "param_groups": [{"lr": 0.1}]},
        "step": 1200,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group: saving as a single process"
        dcp.save(state, checkpoint_id=tmp_path / "ckpt")
    return tmp_path / "ckpt", model


def test_inspect_lists_the_model_weights_from_metadata(dcp_folder):
    folder, model = dcp_folder
    res = run_cli("inspect", folder, "--json")
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["format"] == "dcp"
    assert doc["container"]["key"] == "model"
    assert doc["container"]["others"] == {"optim": "1 tensors", "step": "pickled value (not read)"}
    assert [(t["name"], t["shape"], t["dtype"]) for t in doc["tensors"]] == [
        (n, list(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in model.items()
    ]


@pytest.mark.parametrize("ext", ["safetensors", "pth"])
def test_convert_to_one_file_is_bit_exact(dcp_folder, tmp_path, ext):
    folder, model = dcp_folder
    dst = tmp_path / f"model.{ext}"
    res = run_cli("convert", folder, dst)
    assert res.code == 0, res.err
    out = load_file(dst) if ext == "safetensors" else torch.load(dst, weights_only=True)
    assert set(out) == set(model)
    for name, tensor in model.items():
        assert out[name].dtype == tensor.dtype and out[name].shape == tensor.shape
        assert out[name].reshape(-1).view(torch.uint8).tolist() == tensor.reshape(-1).view(torch.uint8).tolist()


def test_key_picks_another_part_of_the_checkpoint(dcp_folder, tmp_path):
    folder, _ = dcp_folder
    res = run_cli("convert", folder, tmp_path / "opt.safetensors", "--key", "optim", "--json")
    assert res.code == 0, res.err
    out = load_file(tmp_path / "opt.safetensors")
    assert list(out) == ["state.0.exp_avg"]
    assert torch.equal(out["state.0.exp_avg"], torch.ones(8, 3, 3, 3))


def test_a_metadata_pickle_calling_code_is_refused_and_never_runs(dcp_folder, tmp_path):
    folder, _ = dcp_folder
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}".encode()
    evil = b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd + b"\x85R."
    (folder / ".metadata").write_bytes(evil)
    res = run_cli("inspect", folder)
    assert_one_line_error(res, ".metadata", "os.system")
    assert not marker.exists()
    pickle.loads(evil)  # positive control: plain pickle would have run it
    assert marker.exists()
