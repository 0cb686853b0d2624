"""``diff`` through the real command: categories, tolerance edges, formats, containers, exit codes, JSON.

Most cases run several commands; ``run_many`` runs them through the real entry point (``main`` with
an argv: same parsing, error handling and exit codes as ``run_cli``) in one interpreter, so torch is
imported once per test rather than once per command.
"""

import json
import math
import os
import shutil
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import FIXTURES, Result, assert_one_line_error, run_cli

CONTRACT = {"equal", "only_in_a", "only_in_b", "shape_mismatch", "dtype_mismatch", "value_mismatch", "num_equal"}
VALUE_KEYS = {"name", "max_abs", "max_rel", "num_mismatched", "numel", "where", "a", "b"}
EXACT = "exact: bit-for-bit, NaN matches NaN"

_MANY = """
import contextlib, io, json, sys
from ckptsurgeon.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            main(argv)
            code = 0
        except SystemExit as x:
            code = x.code
    out.append([code, o.getvalue(), e.getvalue()])
print(json.dumps(out))
print("torch" in sys.modules)
"""


def run_many(*argvs, torch_expected: bool | None = None) -> list[Result]:
    """``ckptsurgeon ARGV`` for each argv, in order, in one fresh interpreter.

    ``torch_expected=False`` asserts that none of the commands imported torch.
    """
    argvs = [[str(a) for a in argv] for argv in argvs]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-c", _MANY, json.dumps(argvs)], capture_output=True, text=True, cwd=FIXTURES.parent, env=env
    )
    assert proc.returncode == 0, proc.stderr
    results, imported = proc.stdout.strip().splitlines()
    if torch_expected is not None:
        assert imported == str(torch_expected)
    return [Result(*r) for r in json.loads(results)]


def f32_bits(*bits):
    return torch.frombuffer(bytearray(struct.pack(f"<{len(bits)}I", *bits)), dtype=torch.float32).clone()


def by_name(doc):
    return {v["name"]: v for v in doc["value_mismatch"]}


def table_rows(out: str) -> list[list[str]]:
    """The body rows of the Rich table, as stripped cells."""
    return [[c.strip() for c in ln.split("│")] for ln in out.splitlines() if "│" in ln]


# --------------------------------------------------------------------------- categories


@pytest.fixture(scope="module")
def categories(tmp_path_factory):
    """A .pth and a .safetensors with tensors in every category, diffed four ways."""
    d = tmp_path_factory.mktemp("categories")
    a = {
        "same": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "only_a": torch.ones(2),
        "shape": torch.zeros(2, 3),
        "dtype_same_values": torch.tensor([1.0, -2.5, 0.125]),
        "dtype_and_values": torch.tensor([1.0, 0.1]),
        "small": torch.zeros(3, 4),
        "big": torch.tensor([1.0, 2.0, 3.0]),
        "ints": torch.tensor([5, 6], dtype=torch.int64),
        "big_ints": torch.tensor([2**62], dtype=torch.int64),
    }
    b = {
        "same": a["same"].clone(),
        "only_b": torch.ones(3),
        "shape": torch.zeros(3, 2),
        "dtype_same_values": a["dtype_same_values"].half(),
        "dtype_and_values": torch.tensor([1.0, 0.1]).half(),
        "small": torch.zeros(3, 4),
        "big": torch.tensor([1.0, -2.0, 3.5]),
        "ints": torch.tensor([5, 9], dtype=torch.int64),
        "big_ints": torch.tensor([2**62 + 1], dtype=torch.int64),  # equal in float64: compared as integers
    }
    b["small"][1, 2] = 0.5
    b["small"][2, 3] = 0.25
    a["small"][0, 1] = 0.125  # B is 0 there: the relative difference is infinite
    torch.save(a, d / "a.pth")
    save_file(b, d / "b.safetensors")
    pair = ["diff", d / "a.pth", d / "b.safetensors"]
    res = run_many([*pair, "--json"], pair, [*pair, "--verbose"], [*pair, "--quiet"])
    return dict(zip(("json", "table", "verbose", "quiet"), res))


def test_every_category_in_json(categories):
    res = categories["json"]
    assert res.code == 1, res.err
    assert res.err == ""
    doc = res.json()
    assert set(doc) >= CONTRACT
    assert doc["equal"] is False
    assert doc["only_in_a"] == ["only_a"]
    assert doc["only_in_b"] == ["only_b"]
    assert doc["shape_mismatch"] == [{"name": "shape", "a": [2, 3], "b": [3, 2]}]
    assert doc["dtype_mismatch"] == [
        {"name": "dtype_same_values", "a": "float32", "b": "float16"},
        {"name": "dtype_and_values", "a": "float32", "b": "float16"},
    ]
    # "same" only: "dtype_same_values" has equal values after upcasting but is a dtype mismatch
    assert doc["num_equal"] == 1
    # sorted by the largest difference first
    assert [v["name"] for v in doc["value_mismatch"]] == ["big", "ints", "big_ints", "small", "dtype_and_values"]
    vm = by_name(doc)
    assert vm["big"] == {
        "name": "big", "max_abs": 4.0, "max_rel": 2.0, "num_mismatched": 2, "numel": 3,
        "where": [1], "a": 2.0, "b": -2.0,
    }  # fmt: skip
    assert vm["ints"] == {
        "name": "ints", "max_abs": 3.0, "max_rel": 3 / 9, "num_mismatched": 1, "numel": 2,
        "where": [1], "a": 6, "b": 9,
    }  # fmt: skip
    assert vm["big_ints"] == {
        "name": "big_ints", "max_abs": 1.0, "max_rel": 1 / (2**62 + 1), "num_mismatched": 1, "numel": 1,
        "where": [0], "a": 2**62, "b": 2**62 + 1,
    }  # fmt: skip
    assert vm["small"] == {
        "name": "small", "max_abs": 0.5, "max_rel": "inf", "num_mismatched": 3, "numel": 12,
        "where": [1, 2], "a": 0.0, "b": 0.5,
    }  # fmt: skip
    # float32 0.1 against float16 0.1, compared after upcasting to float64
    a01, b01 = torch.tensor(0.1, dtype=torch.float32).item(), torch.tensor(0.1, dtype=torch.float16).item()
    assert vm["dtype_and_values"] == {
        "name": "dtype_and_values", "max_abs": abs(a01 - b01), "max_rel": abs(a01 - b01) / b01,
        "num_mismatched": 1, "numel": 2, "where": [1], "a": a01, "b": b01,
    }  # fmt: skip


def test_json_contract_types(categories):
    doc = categories["json"].json()
    assert set(doc) == CONTRACT | {"a", "b", "atol", "rtol", "keys_only", "notes"}
    assert isinstance(doc["equal"], bool) and isinstance(doc["num_equal"], int)
    assert all(isinstance(n, str) for n in doc["only_in_a"] + doc["only_in_b"])
    for m in doc["shape_mismatch"]:
        assert set(m) == {"name", "a", "b"} and all(isinstance(d, int) for d in m["a"] + m["b"])
    for m in doc["dtype_mismatch"]:
        assert set(m) == {"name", "a", "b"} and isinstance(m["a"], str) and isinstance(m["b"], str)
    for v in doc["value_mismatch"]:
        assert set(v) == VALUE_KEYS
        assert isinstance(v["num_mismatched"], int) and isinstance(v["numel"], int)
        assert all(isinstance(x, (int, float)) or x == "inf" for x in (v["max_abs"], v["max_rel"]))
        assert all(isinstance(i, int) for i in v["where"])
    assert doc["atol"] is None and doc["rtol"] is None and doc["keys_only"] is False


def test_table_grouped_by_category_with_summary(categories):
    res = categories["table"]
    assert res.code == 1, res.err
    rows = table_rows(res.out)
    assert [r[:2] for r in rows] == [
        ["only in A", "only_a"],
        ["only in B", "only_b"],
        ["shape", "shape"],
        ["dtype", "dtype_same_values"],
        ["dtype", "dtype_and_values"],
        ["values", "big"],
        ["values", "ints"],
        ["values", "big_ints"],
        ["values", "small"],
        ["values", "dtype_and_values"],
    ]
    assert rows[2][2:4] == ["[2, 3]", "[3, 2]"]
    assert rows[3][2:4] == ["float32", "float16"]
    # A and B (the values at the largest difference), max |Δ|, max rel, differing/total, where
    assert rows[5][2:] == ["2", "-2", "4", "2", "2/3", "[1]"]
    assert rows[7][2:] == [str(2**62), str(2**62 + 1), "1", "2.17e-19", "1/1", "[0]"]
    assert rows[8][2:] == ["0", "0.5", "0.5", "inf", "3/12", "[1, 2]"]
    assert res.out.splitlines()[-1] == (
        "1 equal · 1 only in A · 1 only in B · 1 shape mismatch · 2 dtype mismatch · "
        f"5 value mismatches (max |Δ| 4) → different ({EXACT})"
    )


def test_verbose_lists_equal_tensors_and_quiet_prints_nothing(categories):
    assert ["equal", "same"] in [r[:2] for r in table_rows(categories["verbose"].out)]
    assert ["equal", "same"] not in [r[:2] for r in table_rows(categories["table"].out)]
    quiet = categories["quiet"]
    assert (quiet.code, quiet.out, quiet.err) == (1, "", "")


# --------------------------------------------------------------------------- tolerance edges

TOLERANCE_CASES = [
    # exact: bit-for-bit except that NaN matches NaN (any payload); -0.0 is not 0.0
    ([], {"at_atol", "nan_moved", "inf_flip", "zero_sign", "rel"}),
    # --atol 0 compares numbers: -0.0 == 0.0
    (["--atol", "0"], {"at_atol", "nan_moved", "inf_flip", "rel"}),
    # exactly at atol is equal, just below it is not
    (["--atol", "0.25"], {"nan_moved", "inf_flip", "rel"}),
    (["--atol", "0.2499"], {"at_atol", "nan_moved", "inf_flip", "rel"}),
    # no tolerance covers NaN against a number, or inf against -inf
    (["--atol", "1e300"], {"nan_moved", "inf_flip"}),
    # B is the reference: |4 - 2| <= 0.5 * |2| fails ...
    (["--rtol", "0.5"], {"nan_moved", "inf_flip", "rel"}),
    # ... and at exactly rtol * |b| it passes
    (["--rtol", "1"], {"nan_moved", "inf_flip"}),
]


@pytest.fixture(scope="module")
def edges(tmp_path_factory):
    d = tmp_path_factory.mktemp("edges")
    nan, inf = float("nan"), float("inf")
    a = {
        "at_atol": torch.tensor([1.0, 2.0]),
        "nan_same": torch.tensor([nan, 1.0]),
        "nan_payload": f32_bits(0x7FC00000, 0x3F800000),
        "nan_moved": torch.tensor([nan, 1.0]),
        "inf_same": torch.tensor([inf, -inf]),
        "inf_flip": torch.tensor([inf]),
        "zero_sign": torch.tensor([-0.0, 1.0]),
        "rel": torch.tensor([4.0]),
    }
    b = {
        "at_atol": torch.tensor([1.0, 2.25]),
        "nan_same": torch.tensor([nan, 1.0]),
        "nan_payload": f32_bits(0x7FC00001, 0x3F800000),  # another NaN, same place
        "nan_moved": torch.tensor([1.0, nan]),
        "inf_same": torch.tensor([inf, -inf]),
        "inf_flip": torch.tensor([-inf]),
        "zero_sign": torch.tensor([0.0, 1.0]),
        "rel": torch.tensor([2.0]),
    }
    assert a["nan_payload"][0].isnan() and b["nan_payload"][0].isnan()
    near = {k: v.clone() for k, v in a.items()}
    near["at_atol"][1] += 2**-20
    pa, pb, pn = d / "a.safetensors", d / "b.safetensors", d / "near.safetensors"
    save_file(a, pa)
    save_file(b, pb)
    save_file(near, pn)
    argvs = [["diff", pa, pb, "--json", *args] for args, _ in TOLERANCE_CASES]
    argvs += [
        ["diff", pb, pa, "--json", "--rtol", "0.5"],  # swapped
        ["diff", pa, pn, "--atol", "1e-6"],
        ["diff", pa, pn, "--json"],
    ]
    res = run_many(*argvs)
    return {"cases": res[: len(TOLERANCE_CASES)], "swapped": res[-3], "near_atol": res[-2], "near_exact": res[-1]}


@pytest.mark.parametrize("i", range(len(TOLERANCE_CASES)), ids=[" ".join(a) or "exact" for a, _ in TOLERANCE_CASES])
def test_tolerance_edges(edges, i):
    args, mismatched = TOLERANCE_CASES[i]
    res = edges["cases"][i]
    assert res.code == 1, res.err
    doc = res.json()
    assert set(by_name(doc)) == mismatched
    assert doc["num_equal"] == 8 - len(mismatched)
    assert doc["atol"] == (float(args[1]) if args[:1] == ["--atol"] else None)


def test_rtol_takes_b_as_the_reference(edges):
    """Swapped, |2 - 4| <= 0.5 * |4|: the tensor that failed with --rtol 0.5 passes."""
    doc = edges["swapped"].json()
    assert set(by_name(doc)) == {"nan_moved", "inf_flip"}


def test_edge_statistics(edges):
    vm = by_name(edges["cases"][0].json())
    assert vm["zero_sign"] == {
        "name": "zero_sign", "max_abs": 0.0, "max_rel": 0.0, "num_mismatched": 1, "numel": 2,
        "where": [0], "a": -0.0, "b": 0.0,
    }  # fmt: skip
    assert math.copysign(1, vm["zero_sign"]["a"]) == -1
    # NaN against a number is infinitely far; the first of equally bad places is reported
    assert vm["nan_moved"] == {
        "name": "nan_moved", "max_abs": "inf", "max_rel": "inf", "num_mismatched": 2, "numel": 2,
        "where": [0], "a": "nan", "b": 1.0,
    }  # fmt: skip
    assert vm["inf_flip"] == {
        "name": "inf_flip", "max_abs": "inf", "max_rel": "inf", "num_mismatched": 1, "numel": 1,
        "where": [0], "a": "inf", "b": "-inf",
    }  # fmt: skip
    assert vm["at_atol"]["max_abs"] == 0.25 and vm["at_atol"]["max_rel"] == 0.25 / 2.25
    assert vm["rel"]["max_abs"] == 2.0 and vm["rel"]["max_rel"] == 1.0


def test_within_tolerance_exits_0_and_says_so(edges):
    res = edges["near_atol"]
    assert res.code == 0, res.out
    assert res.out.splitlines()[-1] == "8 equal → same (atol 1e-06, rtol 0)"
    exact = edges["near_exact"]
    assert exact.code == 1
    assert [(v["name"], v["max_abs"], v["where"]) for v in exact.json()["value_mismatch"]] == [("at_atol", 2**-20, [1])]


# --------------------------------------------------------------------------- formats and containers


def test_mixed_formats_dtypes_and_special_values():
    """mixed.*: NaN, inf, -0.0, subnormals, every dtype, a non-contiguous tensor in the .pth."""
    mixed, fp16 = run_many(
        ["diff", FIXTURES / "mixed.pth", FIXTURES / "mixed.safetensors", "--json"],
        ["diff", FIXTURES / "resnet.pth", FIXTURES / "resnet_fp16.safetensors", "--json"],
    )
    assert mixed.code == 0, mixed.out
    doc = mixed.json()
    assert doc["equal"] is True
    assert doc["num_equal"] == len(torch.load(FIXTURES / "mixed.pth", weights_only=True))
    for cat in ("only_in_a", "only_in_b", "shape_mismatch", "dtype_mismatch", "value_mismatch"):
        assert doc[cat] == []
    # float32 against float16: dtype mismatches, equal in value (the fixture's values are exact in fp16)
    assert fp16.code == 1
    doc = fp16.json()
    sd = torch.load(FIXTURES / "resnet.pth", weights_only=True)
    floats = [k for k, v in sd.items() if v.is_floating_point()]
    assert [m["name"] for m in doc["dtype_mismatch"]] == floats
    assert doc["value_mismatch"] == []
    assert doc["num_equal"] == len(sd) - len(floats)


def test_sharded_folder_against_single_file(tmp_path):
    single, changed = tmp_path / "single.safetensors", tmp_path / "changed.safetensors"
    assert run_cli("convert", FIXTURES / "sharded", single).code == 0
    sd = load_file(single)
    sd["head.bias"][3] += 1
    save_file(sd, changed)
    same, index, diff = run_many(
        ["diff", FIXTURES / "sharded", single],
        ["diff", FIXTURES / "vit.pth", FIXTURES / "sharded" / "model.safetensors.index.json", "-q"],
        ["diff", FIXTURES / "sharded", changed, "--json"],
    )
    assert same.code == 0, same.out
    assert same.out.splitlines()[-1] == f"{len(sd)} equal → same ({EXACT})"
    assert "note: A: 2 shards joined by model.safetensors.index.json" in same.out
    assert index.code == 0
    assert diff.code == 1
    assert [(v["name"], v["where"], v["max_abs"]) for v in diff.json()["value_mismatch"]] == [("head.bias", [3], 1.0)]


def test_training_container_against_plain_file(tmp_path):
    plain = tmp_path / "plain.safetensors"
    train = FIXTURES / "train.pth"
    convert, keyed, default, per_side = run_many(
        ["convert", train, plain, "--key", "state_dict"],
        ["diff", train, plain, "--key", "state_dict"],
        ["diff", train, plain, "--json"],
        ["diff", train, train, "--key-a", "state_dict_ema", "--key-b", "state_dict", "--json"],
    )
    assert convert.code == 0, convert.err
    assert keyed.code == 0, keyed.out
    assert "note: B: --key state_dict does not apply (the file is a flat state dict); used as is" in keyed.out
    # by default the EMA weights are picked (as timm does); they differ from state_dict
    ckpt = torch.load(train, weights_only=True)
    differ = [k for k, v in ckpt["state_dict"].items() if not torch.equal(v, ckpt["state_dict_ema"][k])]
    assert differ
    assert default.code == 1
    doc = default.json()
    assert sorted(v["name"] for v in doc["value_mismatch"]) == sorted(differ)
    # --key-a / --key-b: two state dicts of one file, the same comparison
    assert per_side.code == 1
    assert per_side.json()["value_mismatch"] == doc["value_mismatch"]


def test_key_that_applies_to_neither_side_is_an_error():
    neither, missing = run_many(
        ["diff", FIXTURES / "resnet.safetensors", FIXTURES / "vit.safetensors", "--key", "state_dict"],
        ["diff", FIXTURES / "train.pth", FIXTURES / "resnet.pth", "--key", "nope"],
        torch_expected=False,
    )
    assert_one_line_error(neither, "resnet.safetensors", "--key")
    assert_one_line_error(missing, "train.pth", "--key 'nope' not found")


def test_ddp_prefix_strip_on_both_sides():
    ddp, resnet = FIXTURES / "ddp.pth", FIXTURES / "resnet.safetensors"
    plain, stripped, both = run_many(
        ["diff", ddp, resnet, "--json"],
        ["diff", ddp, resnet, "--strip-prefix", "module."],
        ["diff", ddp, ddp, "--strip-prefix", "module.", "-q"],
        torch_expected=False,  # identical bytes: nothing decoded
    )
    assert plain.code == 1
    doc = plain.json()
    names = list(torch.load(FIXTURES / "resnet.pth", weights_only=True))
    assert doc["only_in_a"] == ["module." + n for n in names]
    assert sorted(doc["only_in_b"]) == sorted(names)
    assert "A: every name starts with 'module.': --strip-prefix module. removes it" in doc["notes"]
    assert stripped.code == 0, stripped.out
    assert stripped.out.splitlines()[-1] == f"{len(names)} equal → same ({EXACT})"
    assert both.code == 0


def test_filter_limits_the_comparison(tmp_path):
    sd = load_file(FIXTURES / "resnet.safetensors")
    sd["fc.weight"][0, 0] += 0.5
    del sd["fc.bias"]
    save_file(sd, tmp_path / "edited.safetensors")
    a, b = FIXTURES / "resnet.safetensors", tmp_path / "edited.safetensors"
    layers, fc, layer1 = run_many(
        ["diff", a, b, "--filter", "layer*", "--filter", "conv1.*", "-q"],
        ["diff", a, b, "--filter", "fc.*", "--json"],
        ["diff", a, b, "--filter", "layer1.*", "--json"],
    )
    assert layers.code == 0
    assert fc.code == 1
    doc = fc.json()
    assert doc["only_in_a"] == ["fc.bias"]
    assert [(v["name"], v["where"], v["max_abs"]) for v in doc["value_mismatch"]] == [("fc.weight", [0, 0], 0.5)]
    assert doc["num_equal"] == 0
    assert layer1.json()["num_equal"] == sum(1 for n in sd if n.startswith("layer1."))


# --------------------------------------------------------------------------- keys only, no decoding


def _corrupt_last_bytes(src, dst, n=4):
    data = bytearray(src.read_bytes())
    for i in range(1, n + 1):
        data[-i] ^= 0xFF
    dst.write_bytes(bytes(data))


def _bytes_of(t):
    return t.reshape(-1).view(torch.uint8)


def test_keys_only_reads_no_data(tmp_path):
    """Tensor bytes changed: a value diff sees it, --keys-only does not (it never reads them)."""
    src, bad = FIXTURES / "resnet.safetensors", tmp_path / "bad.safetensors"
    _corrupt_last_bytes(src, bad)
    ref, got = load_file(src), load_file(bad)
    changed = [k for k in ref if not torch.equal(_bytes_of(ref[k]), _bytes_of(got[k]))]
    assert len(changed) == 1
    keys_only, fp16 = run_many(
        ["diff", src, bad, "--keys-only"],
        ["diff", src, FIXTURES / "resnet_fp16.pth", "--keys-only", "--json"],
        torch_expected=False,
    )
    assert keys_only.code == 0, keys_only.out
    assert keys_only.out.splitlines()[-1] == f"{len(ref)} match → same (keys only: values not read)"
    doc = fp16.json()
    assert fp16.code == 1 and doc["keys_only"] is True and doc["value_mismatch"] == []
    assert len(doc["dtype_mismatch"]) == sum(1 for v in ref.values() if v.is_floating_point())
    (values,) = run_many(["diff", src, bad, "--json"])
    assert values.code == 1
    assert [v["name"] for v in values.json()["value_mismatch"]] == changed


def test_identical_bytes_never_import_torch():
    """Identical tensors are compared as bytes (.pth against .safetensors, sharded against single)."""
    res = run_many(
        ["diff", FIXTURES / "resnet.pth", FIXTURES / "resnet.safetensors", "-q"],
        ["diff", FIXTURES / "vit.safetensors", FIXTURES / "sharded", "-q"],
        torch_expected=False,
    )
    assert [r.code for r in res] == [0, 0]


def test_library_decodes_only_when_bytes_differ(tmp_path):
    from ckptsurgeon.checkpoint import FileSpan, TensorRef
    from ckptsurgeon.diffing import compare_refs

    blob = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    (tmp_path / "x").write_bytes(b"head" + blob)
    (tmp_path / "y").write_bytes(blob + b"tail")
    (tmp_path / "z").write_bytes(struct.pack("<4f", 1.0, 2.0, 3.0, 5.0))

    def never():
        raise AssertionError("decoded")

    def ref(path, offset):
        return TensorRef("t", (2, 2), "float32", span=FileSpan(str(path), offset, 16), loader=never)

    assert compare_refs(ref(tmp_path / "x", 4), ref(tmp_path / "y", 0)) is None
    with pytest.raises(AssertionError, match="decoded"):
        compare_refs(ref(tmp_path / "x", 4), ref(tmp_path / "z", 0))


# --------------------------------------------------------------------------- exit codes and errors


def test_exit_codes_through_the_console_command(tmp_path):
    shutil.copy(FIXTURES / "vit.safetensors", tmp_path / "copy.safetensors")
    same = run_cli("diff", FIXTURES / "vit.pth", tmp_path / "copy.safetensors", "--json")
    assert (same.code, same.err) == (0, "")
    doc = json.loads(same.out)  # stdout holds the JSON document and nothing else
    assert doc["equal"] is True and doc["num_equal"] == len(load_file(FIXTURES / "vit.safetensors"))
    different = run_cli("diff", FIXTURES / "resnet.pth", FIXTURES / "ddp.pth", "-q")
    assert (different.code, different.out, different.err) == (1, "", "")


def test_errors_exit_2_with_one_line(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint at all")
    vit = FIXTURES / "vit.pth"
    missing, junk, atol, rtol, usage = run_many(
        ["diff", vit, tmp_path / "missing.pt"],
        ["diff", tmp_path / "junk.bin", vit],
        ["diff", vit, vit, "--atol", "-1"],
        ["diff", vit, vit, "--rtol", "nan"],
        ["diff", vit],
    )
    assert_one_line_error(missing, "missing.pt")
    assert_one_line_error(junk, "junk.bin")
    assert_one_line_error(atol, "--atol must be a finite number >= 0")
    assert_one_line_error(rtol, "--rtol must be a finite number >= 0")
    assert_one_line_error(usage, "usage error", "missing argument")
