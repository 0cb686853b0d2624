"""A first end-to-end check through the real command: .pt → .safetensors → .pt is bit-exact."""

import torch
from safetensors.torch import load_file

from tests.conftest import run_cli


def test_roundtrip_bit_exact(tmp_path):
    sd = {
        "w": torch.randn(4, 3),
        "h": torch.randn(5).half(),
        "b": torch.randn(2, 2).to(torch.bfloat16),
        "n": torch.tensor(7),
    }
    sd["tied"] = sd["w"]
    torch.save(sd, tmp_path / "a.pth")
    r1 = run_cli("convert", tmp_path / "a.pth", tmp_path / "b.safetensors")
    assert r1.code == 0, r1.err
    r2 = run_cli("convert", tmp_path / "b.safetensors", tmp_path / "c.pt")
    assert r2.code == 0, r2.err
    b = load_file(tmp_path / "b.safetensors")
    c = torch.load(tmp_path / "c.pt", weights_only=True)
    assert list(c) == list(sd)
    for k, v in sd.items():
        assert b[k].dtype == v.dtype and c[k].dtype == v.dtype
        assert torch.equal(b[k].view(torch.uint8), v.view(torch.uint8)) if v.dim() else torch.equal(b[k], v)
        assert torch.equal(c[k], v)
