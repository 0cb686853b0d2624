"""Shared body of the writing commands: key options first, then the command's own steps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ckptsurgeon.cli._output import render_report
from ckptsurgeon.pipeline import Pipeline
from ckptsurgeon.transforms import Transform


@dataclass
class KeyOptions:
    """The key and dtype options every writing command accepts."""

    strip_prefix: list[str] | None = None
    add_prefix: str | None = None
    rename: list[str] | None = None
    select: list[str] | None = None
    drop: list[str] | None = None
    dtype: str | None = None


def key_steps(opts: KeyOptions) -> list[Transform]:
    """The key transforms, in their documented order, run before the command's own step."""
    from ckptsurgeon.transforms.keys import StripPrefix

    return [StripPrefix(p) for p in opts.strip_prefix or []]


def run_pipeline(
    steps: list[Transform],
    src: Path,
    dst: Path,
    *,
    key: str | None,
    keys: KeyOptions,
    force: bool,
    dry_run: bool,
    verify: bool,
    as_json: bool,
    verbose: bool,
    quiet: bool,
):
    pipeline = Pipeline(key_steps(keys) + steps)
    report = pipeline.run(src, dst, key=key, force=force, dry_run=dry_run, verify=verify)
    render_report(report, as_json=as_json, verbose=verbose, quiet=quiet)
    return report
