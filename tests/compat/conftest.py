"""Shared set-up of the compatibility tier (``make test-compat``, run in ``.venv-compat``).

Nothing may be downloaded: the hubs are told to stay offline, and any attempt to open a network
connection fails the test that made it. Weights come from the architectures themselves (random
init), saved to temporary files.

Fixtures: ``surgeon(*args)`` runs the real ``ckptsurgeon`` entry point (``ckptsurgeon.cli.main``)
in this process, so the hundreds of parity cases do not pay for a fresh interpreter and torch
import each (``cli``, from ``tests/conftest.py``, is the subprocess version, used here too);
``coverage(tier, what, n)`` counts passed checks for the closing summary.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
from collections import Counter

# Set before timm / transformers / huggingface_hub are imported by any test module.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

from tests.conftest import Result  # noqa: E402

# Checks counted by the tests, printed at the end of the run ("coverage figures").
COVERAGE: dict[str, Counter] = {}


def count(tier: str, what: str, n: int = 1) -> None:
    """Record ``n`` passed checks of kind ``what`` in ``tier`` for the closing summary."""
    COVERAGE.setdefault(tier, Counter())[what] += n


class NetworkAttempt(AssertionError):
    pass


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """Fail loudly if anything tries to reach the network (a hub download, a telemetry ping)."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address)
        raise NetworkAttempt(f"network access attempted: {address!r}; the compat tier must not download")

    socket.socket.connect = guarded
    try:
        yield
    finally:
        socket.socket.connect = real_connect


def cli(*args: str | os.PathLike) -> Result:
    """Run ``ckptsurgeon ARGS`` through its real entry point in this process; capture exit code and output."""
    from ckptsurgeon.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def surgeon():
    return cli


@pytest.fixture
def coverage():
    return count


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not COVERAGE:
        return
    terminalreporter.section("compatibility coverage")
    for tier in sorted(COVERAGE):
        parts = ", ".join(f"{what}: {n}" for what, n in sorted(COVERAGE[tier].items()))
        terminalreporter.write_line(f"{tier}: {parts}")
