"""Benchmark ckptsurgeon against what users run today, side by side (``make bench``).

Generates a ~1.6 GB checkpoint once (fixed seed) into a cache folder outside the repo, then runs
each operation and its peer alternately, three times each, every run in a fresh subprocess, and
prints a markdown table: median wall time and peak RSS (GNU time) of ours and of the peer, a
PASS/FAIL per target, and the machine it ran on. Exits 1 if a target is missed.
Page cache is warm (dropping it needs root); the first, untimed, run of each command warms it.

This is a benchmark, not a test: nothing here asserts on time in ``make test``.

Usage:
    python bench/bench.py                 # everything, 3 runs each
    python bench/bench.py --runs 1 --only inspect
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ckptsurgeon-bench"
VERSION = "1"  # bump when the generated checkpoint changes
N_BLOCKS, WIDTH, CLASSES = 24, 4096, 1000
BIN = Path(sys.executable).parent


def generate(cache: Path) -> tuple[Path, Path]:
    """The benchmark checkpoint as .safetensors and .pth (made once; about 1.6 GB each)."""
    st, pth = cache / "big.safetensors", cache / "big.pth"
    stamp = cache / f"generated-v{VERSION}"
    if stamp.exists() and st.exists() and pth.exists():
        return st, pth
    cache.mkdir(parents=True, exist_ok=True)
    print(f"generating the benchmark checkpoint in {cache} (once) ...", file=sys.stderr)
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": torch.randn(WIDTH, 3, 16, 16, generator=g) * 0.02,
        "patch_embed.proj.bias": torch.zeros(WIDTH),
    }
    for i in range(N_BLOCKS):
        sd[f"blocks.{i}.fc.weight"] = torch.randn(WIDTH, WIDTH, generator=g) * 0.02
        sd[f"blocks.{i}.fc.bias"] = torch.randn(WIDTH, generator=g) * 0.02
    sd["norm.weight"] = torch.ones(WIDTH)
    sd["norm.bias"] = torch.zeros(WIDTH)
    sd["head.weight"] = torch.randn(CLASSES, WIDTH, generator=g) * 0.02
    sd["head.bias"] = torch.zeros(CLASSES)
    save_file(sd, str(st) + ".tmp")
    torch.save(sd, str(pth) + ".tmp")
    os.replace(str(st) + ".tmp", st)
    os.replace(str(pth) + ".tmp", pth)
    stamp.touch()
    return st, pth


# --- running --------------------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    peak_mib: float


@dataclass
class Op:
    """One row: our command against a peer, with the target ratio (ours/peer time) to meet."""

    name: str
    ours: list[str]
    peer: list[str] | None
    target: str  # human text of the target
    check: object = None  # (ours_median, peer_median) -> bool
    outputs: list[Path] = field(default_factory=list)  # removed (and synced) before each run
    touched_mib: float = 0.0  # the largest tensor the command's transform touches
    ours_runs: list[Sample] = field(default_factory=list)
    peer_runs: list[Sample] = field(default_factory=list)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Users' Python caches bytecode; this sandbox sets PYTHONDONTWRITEBYTECODE, which would make every
    # run compile ckptsurgeon from source. The untimed warm-up run writes the cache.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["COLUMNS"] = "120"
    return env


TIME = "/usr/bin/time"  # GNU time: the child's own peak RSS, not inflated by this process's size


def measure(argv: list[str], outputs: list[Path]) -> Sample:
    """Run ``argv`` once in a fresh process: wall time and its peak RSS (GNU time's %M)."""
    for out in outputs:
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
    os.sync()  # the previous run's writeback and discards are not charged to this one
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        start = time.perf_counter()
        proc = subprocess.run(
            [TIME, "-f", "%M", "-o", rss.name, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env()
        )
        elapsed = time.perf_counter() - start
        peak_kib = int(rss.read().strip().splitlines()[-1])
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr.decode()}")
    return Sample(elapsed, peak_kib / 1024)


def _median(runs: list[Sample], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def operations(st: Path, pth: Path, work: Path, names: set[str] | None) -> list[Op]:
    py = str(BIN / "python")
    cli = str(BIN / "ckptsurgeon")
    head_mib = CLASSES * WIDTH * 4 / 2**20
    have_adapt = (Path(__file__).resolve().parent.parent / "ckptsurgeon" / "cli" / "adapt_head.py").exists()
    writing = "adapt-head" if have_adapt else "convert"
    convert_src = (Path(__file__).resolve().parent.parent / "ckptsurgeon" / "cli" / "convert.py").read_text()
    shard_opt = ["--max-shard-size", "500MB"] if "max_shard_size" in convert_src else []

    def ours_write(src: Path, dst: Path, mode: str = "drop") -> list[str]:
        if have_adapt:
            return [cli, "adapt-head", str(src), str(dst), "-n", "10", "--mode", mode, "--force", "--quiet"]
        return [cli, "convert", str(src), str(dst), "--drop", "head.*", "--force", "--quiet"]

    # Our command with the closing fsync (and the writeback it starts early) turned off: not a mode
    # users get, only a measure of what durability costs against `cp`, which does not fsync.
    no_fsync = (
        "import os, sys\n"
        "os.fsync = lambda fd: None\n"
        "os.posix_fadvise = lambda *a: None\n"
        "from ckptsurgeon.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    peek_st = (
        "from safetensors import safe_open\n"
        f"with safe_open({str(st)!r}, framework='pt') as f:\n"
        "    for k in f.keys():\n"
        "        print(k, f.get_slice(k).get_shape())\n"
    )
    peek_pth = (
        "import torch\n"
        f"sd = torch.load({str(pth)!r}, weights_only=True)\n"
        "for k, v in sd.items():\n"
        "    print(k, tuple(v.shape))\n"
    )
    pop_pth = (
        "import torch\n"
        f"sd = torch.load({str(pth)!r}, weights_only=True)\n"
        "sd.pop('head.weight'); sd.pop('head.bias')\n"
        f"torch.save(sd, {str(work / 'peer.pth')!r})\n"
    )
    st_to_pth = (
        "import torch\nfrom safetensors.torch import load_file\n"
        f"torch.save(load_file({str(st)!r}), {str(work / 'peer2.pth')!r})\n"
    )
    pth_to_st = (
        "import torch\nfrom safetensors.torch import save_file\n"
        f"save_file(torch.load({str(pth)!r}, weights_only=True), {str(work / 'peer3.safetensors')!r})\n"
    )
    ops = [
        Op("`--help`", [cli, "--help"], None, "< 0.3 s", lambda o, p: o < 0.3),
        Op("`inspect` .safetensors", [cli, "inspect", str(st)], [py, "-c", peek_st], "≥ 4x faster",
           lambda o, p: o * 4 <= p),
        Op("`inspect` .pth", [cli, "inspect", str(pth)], [py, "-c", peek_pth], "≥ 7x faster",
           lambda o, p: o * 7 <= p),
        Op(f"`{writing}` .safetensors → .safetensors", ours_write(st, work / "ours.safetensors"),
           ["cp", str(st), str(work / "cp.safetensors")], "≤ 1.5x `cp`", lambda o, p: o <= 1.5 * p,
           [work / "ours.safetensors", work / "cp.safetensors"], head_mib),
        Op(f"`{writing}` .pth → .pth", ours_write(pth, work / "ours.pth"), [py, "-c", pop_pth], "≤ 0.6x",
           lambda o, p: o <= 0.6 * p, [work / "ours.pth", work / "peer.pth"], head_mib),
        Op(f"`{writing}` .safetensors → .safetensors, vs a durable copy", ours_write(st, work / "ours.safetensors"),
           ["sh", "-c", f"cp {st} {work / 'cp.safetensors'} && sync {work / 'cp.safetensors'}"], "(no target)", None,
           [work / "ours.safetensors", work / "cp.safetensors"], head_mib),
        Op(f"`{writing}` .safetensors → .safetensors, fsync disabled (what durability costs)",
           [py, "-c", no_fsync, *ours_write(st, work / "ours.safetensors")[1:]],
           ["cp", str(st), str(work / "cp.safetensors")], "(no target)", None,
           [work / "ours.safetensors", work / "cp.safetensors"], head_mib),
        *(
            [
                Op("`adapt-head --mode reinit` .safetensors → .safetensors (imports torch)",
                   ours_write(st, work / "ours4.safetensors", "reinit"), ["cp", str(st), str(work / "cp4.safetensors")],
                   "(no target)", None, [work / "ours4.safetensors", work / "cp4.safetensors"], head_mib),
                Op("`adapt-head --mode reinit` .pth → .pth (imports torch)",
                   ours_write(pth, work / "ours5.pth", "reinit"), [py, "-c", pop_pth], "(no target)", None,
                   [work / "ours5.pth", work / "peer.pth"], head_mib),
            ]
            if have_adapt
            else []
        ),
        Op("`convert` .safetensors → .pth", [cli, "convert", str(st), str(work / "ours2.pth"), "--force", "-q"],
           [py, "-c", st_to_pth], "(no target)", None, [work / "ours2.pth", work / "peer2.pth"]),
        Op("`convert` .pth → .safetensors",
           [cli, "convert", str(pth), str(work / "ours3.safetensors"), "--force", "-q"],
           [py, "-c", pth_to_st], "(no target)", None, [work / "ours3.safetensors", work / "peer3.safetensors"]),
        Op(f"`convert` .pth → sharded folder{' (500MB shards)' if shard_opt else ''}",
           [cli, "convert", str(pth), str(work / "shards") + "/", "-q", *shard_opt],
           None, "(no target)", None, [work / "shards"]),
    ]  # fmt: skip
    if (Path(__file__).resolve().parent.parent / "ckptsurgeon" / "cli" / "diff.py").exists():
        diff_peer = (
            "import torch\nfrom safetensors.torch import load_file\n"
            f"a = load_file({str(st)!r}); b = torch.load({str(pth)!r}, weights_only=True)\n"
            "print(all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys())\n"
        )
        ops.append(Op("`diff` .safetensors vs .pth (identical)", [cli, "diff", str(st), str(pth)],
                      [py, "-c", diff_peer], "(no target)", None))  # fmt: skip
    return [op for op in ops if names is None or any(n in op.name for n in names)]


def machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    fs = subprocess.run(["findmnt", "-no", "SOURCE,FSTYPE", "-T", str(CACHE)], capture_output=True, text=True)
    import platform

    torch_version = subprocess.run(
        [str(BIN / "python"), "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_kib / 2**20:.1f} GiB RAM, disk {fs.stdout.strip() or '?'} "
        f"(virtual disk), Linux {platform.release()}, Python {platform.python_version()}, torch {torch_version}; "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", action="append", help="run rows whose name contains this (repeatable)")
    args = parser.parse_args()
    st, pth = generate(CACHE)
    work = CACHE / "work"
    work.mkdir(exist_ok=True)
    ops = operations(st, pth, work, set(args.only) if args.only else None)
    if not Path(TIME).exists():
        raise SystemExit(f"{TIME} (GNU time) is needed to measure peak memory: apt-get install time")
    line = machine()
    size_gb = st.stat().st_size / 1e9
    print(
        f"# ckptsurgeon benchmark: {N_BLOCKS} x [{WIDTH}, {WIDTH}] float32 + biases, patch embed, {CLASSES}-class "
        f"head ({size_gb:.2f} GB); median of {args.runs} runs, ours and peer alternating; warm page cache",
        flush=True,
    )
    base = [measure([str(BIN / "python"), "-c", "import torch"], []) for _ in range(max(args.runs, 1))]
    base_mib = _median(base, "peak_mib")
    for op in ops:
        print(f"... {op.name}", file=sys.stderr, flush=True)
        measure(op.ours, op.outputs)  # warm-up: page cache, bytecode cache
        if op.peer:
            measure(op.peer, op.outputs)
        for _ in range(args.runs):
            op.ours_runs.append(measure(op.ours, op.outputs))
            if op.peer:
                op.peer_runs.append(measure(op.peer, op.outputs))
        for out in op.outputs:
            shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    print()
    print("| operation | ours: median s | ours: peak MiB | peer | peer: median s | peer: peak MiB | ratio | target | |")
    print("|---|---:|---:|---|---:|---:|---:|---|---|")
    failed = 0
    peak_rows = []
    for op in ops:
        o_s, o_m = _median(op.ours_runs, "seconds"), max(r.peak_mib for r in op.ours_runs)
        if op.peer:
            p_s, p_m = _median(op.peer_runs, "seconds"), max(r.peak_mib for r in op.peer_runs)
            peer_cells = f"{_peer_name(op)} | {p_s:.2f} | {p_m:.0f} | {o_s / p_s:.2f}x"
        else:
            p_s = 0.0
            peer_cells = "— | | | "
        verdict = ""
        if op.check is not None:
            ok = op.check(o_s, p_s)
            failed += not ok
            verdict = "PASS" if ok else "FAIL"
        print(f"| {op.name} | {o_s:.2f} | {o_m:.0f} | {peer_cells} | {op.target} | {verdict} |")
        limit = base_mib + 256 + op.touched_mib
        peak_rows.append((op.name, o_m, limit))
    worst = max(peak_rows, key=lambda r: r[1] - r[2])
    ok = all(m <= limit for _, m, limit in peak_rows)
    failed += not ok
    print(
        f"| peak RSS of every command above | max {max(m for _, m, _ in peak_rows):.0f} | | "
        f'`python -c "import torch"` | | {base_mib:.0f} | | ≤ {base_mib:.0f} + 256 + largest touched tensor '
        f"(tightest: {worst[0]}, {worst[1]:.0f} ≤ {worst[2]:.0f}) | {'PASS' if ok else 'FAIL'} |"
    )
    print()
    print(f"Machine: {line}.")
    print("ratio = ours / peer (median wall time). Peak MiB = max RSS of the command's process (GNU time %M).")
    sys.exit(1 if failed else 0)


def _peer_name(op: Op) -> str:
    if op.peer and op.peer[0] == "cp":
        return "`cp`"
    script = op.peer[-1] if op.peer else ""
    if "safe_open" in script:
        return "`safe_open` script"
    if op.peer and op.peer[0] == "sh":
        return "`cp` + `sync FILE`"
    if "pop(" in script:
        return "torch.load, pop head, torch.save"
    if "load_file" in script and "torch.equal" in script:
        return "load_file + torch.load + torch.equal"
    if "load_file" in script:
        return "load_file + torch.save"
    if "save_file" in script:
        return "torch.load + save_file"
    return "torch.load(weights_only=True) script"


if __name__ == "__main__":
    main()
