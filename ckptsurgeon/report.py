"""The Report: what happened to every key, for a person (Rich) or a machine (JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ACTIONS = ("kept", "dropped", "reshaped", "added", "renamed", "cast")


def shape_str(shape) -> str:
    """``[16, 3, 7, 7]``; ``-`` when there is no shape."""
    return "[" + ", ".join(str(d) for d in shape) + "]" if shape is not None else "-"


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}

    def __str__(self) -> str:
        return f"{list(self.shape)} {self.dtype}"


@dataclass
class Change:
    """One thing a transform did to one key, recorded by the transform itself."""

    action: str  # dropped | reshaped | added | renamed | cast
    name: str  # the key's name after the change (before it, for dropped)
    old_name: str | None = None  # for renamed
    detail: str = ""


@dataclass
class Entry:
    """The fate of one key from source to output."""

    name: str  # output name (or source name when dropped)
    action: str  # the headline action
    actions: list[str]  # every action applied, in order ("renamed", "reshaped")
    source_name: str | None  # None for added keys
    before: TensorInfo | None
    after: TensorInfo | None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "actions": self.actions,
            "source_name": self.source_name,
            "before": self.before.to_json() if self.before else None,
            "after": self.after.to_json() if self.after else None,
            "detail": self.detail,
        }


@dataclass
class StepSummary:
    """What one pipeline step did, in a sentence or two, plus machine-readable facts."""

    op: str
    params: dict[str, Any]
    lines: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "params": self.params,
            "summary": self.lines,
            **({"facts": self.facts} if self.facts else {}),
        }


@dataclass
class Report:
    """Everything a command did: source facts, per-key entries, step summaries, output facts.

    Example:
        >>> report = Pipeline([StripPrefix("module.")]).run("ddp.pth", "plain.pt")
        >>> report.counts()["renamed"], report.to_json()["keys"][0]["name"]
        (74, 'conv1.weight')
    """

    source: str
    source_format: str
    container: dict[str, Any]
    entries: list[Entry] = field(default_factory=list)
    steps: list[StepSummary] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    output: str | None = None
    output_format: str | None = None
    output_bytes: int | None = None
    dry_run: bool = False
    params_before: int = 0
    params_after: int = 0
    metadata_out: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        counts = {a: 0 for a in ACTIONS}
        for e in self.entries:
            counts[e.action] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "source_format": self.source_format,
            "container": self.container,
            "output": self.output,
            "output_format": self.output_format,
            "output_bytes": self.output_bytes,
            "dry_run": self.dry_run,
            "counts": self.counts(),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "steps": [s.to_json() for s in self.steps],
            "notes": self.notes,
            "keys": [e.to_json() for e in self.entries],
        }
