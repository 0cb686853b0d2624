"""A progress bar in bytes on stderr, shown only for work that runs longer than about a second.

Writers (and diffs) call a ``ByteProgress`` with the bytes they just handled. Nothing is drawn
until ``delay`` seconds have passed, so short commands print nothing extra; Rich is imported only
then. The CLI enables it only when stderr is a terminal and neither ``--json`` nor ``--quiet`` is
given (``wanted``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

Advance = Callable[[int], None]


def wanted(*, as_json: bool = False, quiet: bool = False, stream: Any = None) -> bool:
    """Whether a command should show a progress bar: stderr is a terminal, no --json, no --quiet."""
    stream = sys.stderr if stream is None else stream
    if as_json or quiet:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class ByteProgress:
    """Count bytes towards ``total``; draw a transient Rich bar once the work has run ``delay`` s.

    Example:
        >>> with ByteProgress(total=nbytes, description="writing model.pt") as advance:
        ...     for chunk in chunks:
        ...         out.write(chunk)
        ...         advance(len(chunk))
    """

    def __init__(self, total: int, description: str = "", *, enabled: bool = True, delay: float = 1.0):
        self.total = max(int(total), 0)
        self.description = description
        self.enabled = enabled
        self.delay = delay
        self.done = 0
        self._start = time.monotonic()
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is None:
            if time.monotonic() - self._start < self.delay:
                return
            self._open()
        self._bar.update(self._task, completed=self.done)

    def _open(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.description, total=self.total or None, completed=self.done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
