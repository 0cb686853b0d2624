"""The one exception type for user-facing failures."""

from __future__ import annotations

import os


class SurgeonError(Exception):
    """A failure the user can act on: what went wrong, in which file, and a hint.

    The CLI turns it into exit code 2 and one line on stderr; library callers catch it.

    Example:
        >>> raise SurgeonError("header length 8 GB is larger than the file", path="w.safetensors")
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text

    def with_path(self, path: str | os.PathLike) -> SurgeonError:
        """Return this error naming ``path`` if it names no file yet."""
        if self.path is None:
            self.path = os.fspath(path)
        return self
