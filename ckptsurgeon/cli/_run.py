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
    """The key and dtype transforms, in their documented order, run before the command's own step.

    Order: --strip-prefix (each, in order) → --add-prefix → --rename (each, in order) → --select →
    --drop → --dtype. Bad values (a rule without '=>', an unknown dtype) fail here, before any read.
    """
    from ckptsurgeon.transforms.cast import Cast
    from ckptsurgeon.transforms.keys import AddPrefix, Drop, Rename, Select, StripPrefix

    steps: list[Transform] = [StripPrefix(p) for p in opts.strip_prefix or []]
    if opts.add_prefix is not None:
        steps.append(AddPrefix(opts.add_prefix))
    steps += [Rename.parse(rule) for rule in opts.rename or []]
    if opts.select:
        steps.append(Select(opts.select))
    if opts.drop:
        steps.append(Drop(opts.drop))
    if opts.dtype is not None:
        steps.append(Cast(opts.dtype))
    return steps


def run_pipeline(
    steps: list[Transform],
    src: Path,
    dst: str | Path,
    *,
    key: str | None,
    keys: KeyOptions,
    force: bool,
    dry_run: bool,
    verify: bool,
    as_json: bool,
    verbose: bool,
    quiet: bool,
    max_shard_size: str | None = None,
):
    from ckptsurgeon.progress import wanted

    pipeline = Pipeline(key_steps(keys) + steps)
    report = pipeline.run(
        src,
        dst,
        key=key,
        force=force,
        dry_run=dry_run,
        verify=verify,
        max_shard_size=max_shard_size,
        progress=wanted(as_json=as_json, quiet=quiet),
    )
    render_report(report, as_json=as_json, verbose=verbose, quiet=quiet)
    return report
