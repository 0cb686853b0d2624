"""Shared body of the writing commands: their common options, key steps first, then their own steps."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from ckptsurgeon.cli import _options as o
from ckptsurgeon.cli._output import render_report
from ckptsurgeon.pipeline import Pipeline
from ckptsurgeon.transforms import Transform


@dataclass
class WriteOptions:
    """The options every writing command accepts (convert, adapt-head, adapt-stem, run)."""

    key: o.KeyOpt = None
    strip_prefix: o.StripPrefixOpt = None
    add_prefix: o.AddPrefixOpt = None
    rename: o.RenameOpt = None
    select: o.SelectOpt = None
    drop: o.DropOpt = None
    dtype: o.DtypeOpt = None
    force: o.ForceOpt = False
    dry_run: o.DryRunOpt = False
    verify: o.VerifyOpt = False
    max_shard_size: o.MaxShardSizeOpt = None
    json_: o.JsonOpt = False
    verbose: o.VerboseOpt = False
    quiet: o.QuietOpt = False


def writing_command(fn: Callable) -> Callable:
    """Give a command every option of WriteOptions; the command receives them as ``opts``.

    Typer reads the options from the signature, so the wrapper shows the command's own parameters
    followed by the shared ones, and gathers the shared ones into one WriteOptions.
    """
    own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "opts"]
    hints = inspect.get_annotations(WriteOptions, eval_str=True)
    shared = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
        for f in fields(WriteOptions)
    ]

    @functools.wraps(fn)
    def wrapper(**kwargs):
        opts = WriteOptions(**{f.name: kwargs.pop(f.name) for f in fields(WriteOptions)})
        return fn(**kwargs, opts=opts)

    del wrapper.__wrapped__
    wrapper.__signature__ = inspect.Signature(own + shared)
    wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
    return wrapper


def key_steps(opts: WriteOptions) -> list[Transform]:
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


def run_pipeline(steps: list[Transform], src: Path, dst: str | Path, opts: WriteOptions, key: str | None = None):
    """Key steps, then ``steps``, over SRC; write DST once; render the report. ``key`` overrides opts.key."""
    from ckptsurgeon.progress import wanted

    pipeline = Pipeline(key_steps(opts) + steps)
    report = pipeline.run(
        src,
        dst,
        key=opts.key or key,
        force=opts.force,
        dry_run=opts.dry_run,
        verify=opts.verify,
        max_shard_size=opts.max_shard_size,
        progress=wanted(as_json=opts.json_, quiet=opts.quiet),
    )
    render_report(report, as_json=opts.json_, verbose=opts.verbose, quiet=opts.quiet)
    return report
