"""Head and stem detection on every timm, torchvision and transformers image classifier.

Each architecture is built on the ``meta`` device (``dump_shapes.py``; nothing downloaded, no
weights allocated) and only its state dict's names and shapes go to ``find_heads`` /
``find_stems``. The reference:

- timm: ``pretrained_cfg["classifier"]`` (the entries that have a weight: a ``num_classes=0``
  model names an Identity) and ``pretrained_cfg["first_conv"]``;
- torchvision (``weights=None``; GoogLeNet / Inception3 with their auxiliary heads) and
  transformers (every ``AutoModelForImageClassification`` class, default config, 1000 labels):
  the module itself: every ``nn.Linear`` / 1x1 ``nn.Conv2d`` producing the class count, and
  the first ``nn.Conv2d`` reading 3 channels.

A detection that raises counts as the empty set. Differences must be listed, with the reason,
in ``detect_expectations.json``; an entry no longer needed fails the test too. Extra checks on
the same dumps: key order does not matter (sorted as in safetensors, reversed), and other class
counts (10, 1001) find the same heads.

Run in ``.venv-compat``::

    .venv-compat/bin/python -m pytest tests/compat/test_detect_all.py -o addopts="" -q

The dumps are built once per session in pytest's temp dir (timm's 1371 models: about a minute
on one core, weight initialisation skipped). ``CKPTSURGEON_SHAPES_CACHE=DIR`` keeps them across
sessions (keyed by the library versions and dump_shapes.py's text); ``CKPTSURGEON_COMPAT_JOBS=N``
builds timm in N worker processes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

from ckptsurgeon.detect import find_heads, find_stems  # noqa: E402
from ckptsurgeon.errors import SurgeonError  # noqa: E402

HERE = Path(__file__).resolve().parent
EXPECTATIONS = json.loads((HERE / "detect_expectations.json").read_text())
SOURCES = ("timm", "torchvision", "transformers")
TIER = "detect"


def _load_dump_module():
    spec = importlib.util.spec_from_file_location("ckptsurgeon_compat_dump_shapes", HERE / "dump_shapes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # multiprocessing workers pickle functions by module name
    spec.loader.exec_module(module)
    return module


dump_shapes = _load_dump_module()


# --------------------------------------------------------------------------- dumps


def _versions(source: str) -> str:
    import torch

    parts = [f"torch={torch.__version__}", f"timm={timm.__version__}", f"torchvision={torchvision.__version__}"]
    if source == "transformers":
        import transformers

        parts.append(f"transformers={transformers.__version__}")
    return ";".join(parts)


def _build(source: str) -> dict:
    if source == "timm":
        jobs = int(os.environ.get("CKPTSURGEON_COMPAT_JOBS", "1"))
        return dump_shapes.dump_timm(jobs=jobs)
    if source == "torchvision":
        return dump_shapes.dump_torchvision()
    pytest.importorskip("transformers")
    return dump_shapes.dump_transformers()


@pytest.fixture(scope="session")
def dumps(tmp_path_factory):
    """``dumps(source)`` -> {arch: entry, "__meta__": ...}, built once per session (or cache)."""
    cache_env = os.environ.get("CKPTSURGEON_SHAPES_CACHE")
    cache = Path(cache_env) if cache_env else tmp_path_factory.getbasetemp() / "detect-shapes"
    cache.mkdir(parents=True, exist_ok=True)
    script = (HERE / "dump_shapes.py").read_bytes()
    loaded: dict[str, dict] = {}

    def get(source: str) -> dict:
        if source not in loaded:
            digest = hashlib.sha1(_versions(source).encode() + script).hexdigest()[:12]
            path = cache / f"{source}-{digest}.json"
            if path.exists():
                loaded[source] = json.loads(path.read_text())
            else:
                data = _build(source)
                dump_shapes.write_json(data, str(path))
                loaded[source] = data
        return loaded[source]

    return get


def _archs(dump: dict) -> dict:
    return {k: v for k, v in dump.items() if k != "__meta__"}


def _key(source: str, arch: str) -> str:
    return arch if source == "timm" else f"{source}:{arch}"


def _source_of(key: str) -> str:
    return key.split(":", 1)[0] if ":" in key else "timm"


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def reference(source: str, entry: dict) -> tuple[set[str], set[str]]:
    shapes = entry["shapes"]
    heads = {c for c in _as_list(entry["classifier"]) if f"{c}.weight" in shapes}
    stems = set(_as_list(entry["first_conv"]))
    return heads, stems


def detect(shapes) -> tuple[set[str], set[str]]:
    try:
        heads = {h.prefix for h in find_heads(shapes)}
    except SurgeonError:
        heads = set()
    try:
        stems = {s.prefix for s in find_stems(shapes)}
    except SurgeonError:
        stems = set()
    return heads, stems


def _fmt(heads: set[str], stems: set[str]) -> str:
    return f"heads {sorted(heads)}, stems {sorted(stems)}"


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("source", SOURCES)
def test_every_architecture_builds(source, dumps):
    """Every model of the source builds on meta, bar the documented ones."""
    failed = {_key(source, k): v for k, v in dumps(source)["__meta__"]["failed"].items()}
    documented = {k for k in EXPECTATIONS.get("__build_failures__", {}) if _source_of(k) == source}
    assert set(failed) - documented == set(), f"undocumented build failures: {failed}"
    assert documented - set(failed) == set(), (
        f"documented build failures that now build (stale): {documented - set(failed)}"
    )


@pytest.mark.parametrize("source", SOURCES)
def test_detection_matches_reference(source, dumps, coverage, capsys):
    dump = dumps(source)
    archs = _archs(dump)
    counts: Counter = Counter()
    wrong, stale = [], []
    for arch, entry in archs.items():
        key = _key(source, arch)
        ref = reference(source, entry)
        got = detect(entry["shapes"])
        documented = EXPECTATIONS.get(key)
        if got == ref:
            counts["exact"] += 1
            if documented:
                stale.append(f"{key}: matches the reference now ({_fmt(*ref)}); remove its entry")
        elif documented and got == (set(documented["heads"]), set(documented["stems"])):
            counts["documented"] += 1
            if got[0] >= ref[0] and got[1] >= ref[1]:
                counts["supersets"] += 1
        else:
            wrong.append(f"{key}: reference {_fmt(*ref)}; detected {_fmt(*got)}")
    meta = dump["__meta__"]
    version = meta.get(source) or meta.get("transformers", "")
    doc = counts["documented"]
    doc_txt = (
        f"{doc} documented supersets"
        if doc == counts["supersets"]
        else f"{doc} documented exceptions ({counts['supersets']} supersets)"
    )
    line = (
        f"{source} {version}: {len(archs)} architectures: {counts['exact']} exact, {doc_txt}, "
        f"{len(wrong)} wrong ({len(meta['failed'])} failed to build)"
    )
    with capsys.disabled():
        print(f"\n[detect coverage] {line}")
    coverage(f"{TIER} {source} {version}", "architectures", len(archs))
    coverage(f"{TIER} {source} {version}", "exact", counts["exact"])
    coverage(f"{TIER} {source} {version}", "documented", doc)
    coverage(f"{TIER} {source} {version}", "wrong", len(wrong))
    assert not wrong, "\n".join([line, *wrong])
    assert not stale, "\n".join(stale)


@pytest.mark.parametrize("source", SOURCES)
def test_key_order_does_not_matter(source, dumps):
    """Sorted (as a safetensors file stores them) or reversed keys: the same heads and stems."""
    bad = []
    for arch, entry in _archs(dumps(source)).items():
        shapes = entry["shapes"]
        base = _full(shapes)
        for variant in (dict(sorted(shapes.items())), dict(reversed(list(shapes.items())))):
            if _full(variant) != base:
                bad.append(arch)
                break
    assert not bad, f"order-dependent detection: {bad}"


def _full(shapes):
    """Everything the finders say, errors included, for exact comparison."""
    out = []
    for finder in (find_heads, find_stems):
        try:
            out.append(finder(shapes))
        except SurgeonError as e:
            out.append(str(e))
    return out


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("num_classes", [10, 1001])
def test_other_class_counts(source, num_classes, dumps):
    """Re-label the heads found to another class count: the same layers are found, with that count."""
    bad, n = [], 0
    for arch, entry in _archs(dumps(source)).items():
        shapes = dict(entry["shapes"])
        try:
            heads = find_heads(shapes)
        except SurgeonError:
            continue
        n += 1
        for h in heads:
            shapes[h.weight] = [num_classes, *shapes[h.weight][1:]]
            if h.bias:
                shapes[h.bias] = [num_classes]
        try:
            again = find_heads(shapes)
        except SurgeonError as e:
            bad.append(f"{arch}: {e}")
            continue
        if [h.prefix for h in again] != [h.prefix for h in heads] or {h.num_classes for h in again} != {num_classes}:
            bad.append(f"{arch}: {[h.prefix for h in heads]} -> {[(h.prefix, h.num_classes) for h in again]}")
    assert n > 0
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source", SOURCES)
def test_grayscale_copies(source, dumps, capsys):
    """The reference stems cut to one input channel, found with ``base_chans=1``.

    Every depthwise conv also reads one channel (per group), so this is the hard case for
    telling the stem from the body: a refusal (SurgeonError, "cannot tell") is allowed, a
    wrong answer is not. Models without an image-reading stem are skipped.
    """
    wrong, refused, n = [], [], 0
    for arch, entry in _archs(dumps(source)).items():
        _, ref_stems = reference(source, entry)
        key = _key(source, arch)
        if key in EXPECTATIONS:
            ref_stems = set(EXPECTATIONS[key]["stems"])
        if not ref_stems:
            continue
        shapes = dict(entry["shapes"])
        for stem in ref_stems:
            w = shapes[f"{stem}.weight"]
            shapes[f"{stem}.weight"] = [w[0], w[1] // 3, *w[2:]]
        n += 1
        try:
            got = {s.prefix for s in find_stems(shapes, base_chans=1)}
        except SurgeonError:
            refused.append(arch)
            continue
        if got != ref_stems:
            wrong.append(f"{arch}: {sorted(ref_stems)} -> {sorted(got)}")
    with capsys.disabled():
        print(
            f"\n[detect coverage] {source} grayscale copies: {n} models: {n - len(refused) - len(wrong)} exact, "
            f"{len(refused)} refused as ambiguous, {len(wrong)} wrong"
        )
    assert not wrong, "\n".join(wrong)
