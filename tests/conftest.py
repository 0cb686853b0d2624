"""Shared test helpers: run the real command as a user does, and build small checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def run_cli(*args: str | os.PathLike, cwd: str | os.PathLike | None = None, env: dict | None = None) -> Result:
    """Run ``python -m ckptsurgeon ARGS`` in a subprocess, the way a user's shell would."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "ckptsurgeon", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=300,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli():
    return run_cli


def assert_one_line_error(res: Result, *needles: str) -> None:
    """Exit 2, one line on stderr naming what is wrong, no traceback, nothing on stdout."""
    assert res.code == 2, (res.code, res.out, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert "Traceback" not in res.err
    low = lines[0].lower()
    for n in needles:
        assert n.lower() in low, (n, lines[0])


@pytest.fixture
def run(capsys):
    """The real command in this process (fast): ``run(*args) -> Result(code, out, err)``."""
    from ckptsurgeon.cli import main

    def _run(*args) -> Result:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0
        cap = capsys.readouterr()
        return Result(code, cap.out, cap.err)

    return _run


def fixture_models():
    """``fixtures/make_fixtures.py`` as a module: the model classes the fixtures were built from."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("_ckptsurgeon_fixture_models", FIXTURES / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    old, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.dont_write_bytecode = old
    return mod
