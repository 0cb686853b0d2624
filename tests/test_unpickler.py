"""The restricted unpickler for torch zips: reads what torch writes, refuses every other global.

A global it does not know is never called: the file goes to torch's weights-only loader instead,
which loads it (e.g. ``_rebuild_tensor_v3`` for uint16) or refuses it with a one-line error.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch

from ckptsurgeon.formats import open_checkpoint, torch_io
from tests.conftest import assert_one_line_error, run_cli


def _replace_pickle(src, dst, data_pkl: bytes) -> None:
    """Copy a torch zip, swapping its data.pkl (torch reads the rest as it was)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = data_pkl if info.filename.endswith("/data.pkl") else zin.read(info)
            zout.writestr(info.filename, data)


def _evil(module: str, name: str, arg: str) -> bytes:
    """A protocol-2 pickle of ``{"w": module.name(arg)}``: the REDUCE a malicious checkpoint would use."""
    a = arg.encode()
    return (
        b"\x80\x02}X\x01\x00\x00\x00w"  # PROTO 2, EMPTY_DICT, key "w"
        + b"c" + f"{module}\n{name}\n".encode()  # GLOBAL module.name
        + b"X" + struct.pack("<I", len(a)) + a + b"\x85R"  # (arg,) REDUCE: the call
        + b"s."  # SETITEM, STOP
    )  # fmt: skip


def test_the_payload_is_live_under_plain_pickle(tmp_path):
    # Positive control: the same bytes run their command under pickle.loads.
    marker = tmp_path / "ran"
    pickle.loads(_evil("os", "system", f"touch {marker}"))
    assert marker.exists()


@pytest.mark.parametrize(
    "module,name",
    [
        ("os", "system"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("subprocess", "call"),
        ("torch._utils", "_rebuild_tensor_v3"),
        ("torch._utils", "_rebuild_qtensor"),
        ("torch._tensor", "_rebuild_from_type_v2"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("collections", "defaultdict"),
        ("torch", "Float8_e4m3fnStorage"),  # torch itself never pickles this class
    ],
)
def test_unknown_globals_are_refused_before_any_call(tmp_path, module, name):
    marker = tmp_path / "ran"
    data = _evil(module, name, f"touch {marker}")
    with pytest.raises(torch_io._Unsupported):
        torch_io._RestrictedUnpickler(io.BytesIO(data)).load()
    assert not marker.exists()


def test_build_on_a_tensor_is_refused(tmp_path):
    # BUILD sets state on the object below it; torch never does that to a rebuilt tensor.
    torch.save(torch.ones(2), tmp_path / "t.pth")
    with zipfile.ZipFile(tmp_path / "t.pth") as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    assert data.endswith(b".")
    _replace_pickle(tmp_path / "t.pth", tmp_path / "built.pth", data[:-1] + b"}b.")  # EMPTY_DICT, BUILD
    assert torch_io.read_zip(str(tmp_path / "t.pth"))[0] is not None
    assert torch_io.read_zip(str(tmp_path / "built.pth")) == (None, {})


def test_a_file_calling_os_system_is_refused_and_never_runs(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pth")
    marker = tmp_path / "pwned"
    evil = _evil("os", "system", f"touch {marker}")
    _replace_pickle(tmp_path / "ok.pth", tmp_path / "evil.pth", evil)

    for cmd in (["inspect"], ["convert"]):
        args = [*cmd, tmp_path / "evil.pth"] + ([tmp_path / "out.safetensors"] if cmd == ["convert"] else [])
        res = run_cli(*args)
        assert_one_line_error(res, "evil.pth", "os.system")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_a_numpy_array_goes_to_torch_loader_which_refuses_it(tmp_path):
    torch.save({"w": torch.ones(2), "arr": np.arange(3)}, tmp_path / "np.pth")
    assert torch_io.read_zip(str(tmp_path / "np.pth")) == (None, {})
    res = run_cli("inspect", tmp_path / "np.pth")
    assert_one_line_error(res, "np.pth", "numpy")


def test_v3_tensors_are_read_through_torch_weights_only_loader(tmp_path):
    sd = {"u": torch.arange(6).to(torch.uint16).reshape(2, 3), "f": torch.tensor([1.5, -2.0])}
    torch.save(sd, tmp_path / "v3.pth")
    assert torch_io.read_zip(str(tmp_path / "v3.pth")) == (None, {})  # _rebuild_tensor_v3: not ours
    ckpt = open_checkpoint(tmp_path / "v3.pth")
    assert {n: (r.shape, r.dtype) for n, r in ckpt.tensors.items()} == {
        "u": ((2, 3), "uint16"),
        "f": ((2,), "float32"),
    }
    assert torch.equal(ckpt.tensors["u"].load(), sd["u"])
    assert torch.equal(ckpt.tensors["f"].load(), sd["f"])


def test_reads_what_torch_save_writes_without_torch_loader(tmp_path):
    base = torch.arange(12, dtype=torch.float32)
    sd = collections.OrderedDict(
        p=torch.nn.Parameter(torch.tensor([1.0, 2.0])),
        view=base[2:8].view(2, 3),
        t=base.view(3, 4).t(),
        half=torch.tensor([0.5], dtype=torch.float16),
        bf=torch.tensor([1.25], dtype=torch.bfloat16),
        flag=torch.tensor([True, False]),
        c=torch.tensor([1 + 2j], dtype=torch.complex64),
        n=torch.tensor(7),
    )
    torch.save({"state_dict": sd, "epoch": 3, "names": ["a", "b"]}, tmp_path / "train.pth")
    obj, spans = torch_io.read_zip(str(tmp_path / "train.pth"))
    assert obj is not None and obj["epoch"] == 3 and obj["names"] == ["a", "b"]

    ckpt = open_checkpoint(tmp_path / "train.pth")
    assert ckpt.container.key == "state_dict"
    assert list(ckpt.tensors) == list(sd)
    for name, tensor in sd.items():
        ref = ckpt.tensors[name]
        assert ref.tensor is None  # not loaded by torch: read from the file on demand
        assert (ref.shape, ref.dtype) == (tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
        assert torch.equal(ref.load(), tensor.detach())
    assert ckpt.tied_groups() == [["view", "t"]]


def test_unpickled_objects_are_plain_data_and_stubs(tmp_path):
    torch.save({"model": {"w": torch.ones(2, 2)}, "opt": {"lr": 0.1, "betas": (0.9, 0.99)}}, tmp_path / "a.pth")
    obj, _ = torch_io.read_zip(str(tmp_path / "a.pth"))
    seen = set()

    def walk(o):
        seen.add(type(o))
        if isinstance(o, dict):
            for k, v in o.items():
                walk(k)
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(obj)
    assert seen <= {dict, collections.OrderedDict, tuple, list, str, int, float, torch_io.TensorStub}
    assert os.path.exists(tmp_path / "a.pth")
