"""``convert``: rewrite a checkpoint in another format, bit-exact.

Examples:
    ckptsurgeon convert model.pth model.safetensors
    ckptsurgeon convert train.pth weights.pt --key state_dict --strip-prefix module.
    ckptsurgeon convert shards/ model.safetensors --json
"""

from __future__ import annotations

import typer

from ckptsurgeon.cli import _options as o
from ckptsurgeon.cli._run import KeyOptions, run_pipeline


def convert(
    src: o.SrcArg,
    dst: o.DstArg,
    key: o.KeyOpt = None,
    strip_prefix: o.StripPrefixOpt = None,
    add_prefix: o.AddPrefixOpt = None,
    rename: o.RenameOpt = None,
    select: o.SelectOpt = None,
    drop: o.DropOpt = None,
    dtype: o.DtypeOpt = None,
    force: o.ForceOpt = False,
    dry_run: o.DryRunOpt = False,
    verify: o.VerifyOpt = False,
    max_shard_size: o.MaxShardSizeOpt = None,
    json_: o.JsonOpt = False,
    verbose: o.VerboseOpt = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Convert between .pt/.pth/.bin and .safetensors (bit-exact), optionally picking or renaming."""
    keys = KeyOptions(strip_prefix, add_prefix, rename, select, drop, dtype)
    run_pipeline(
        [],
        src,
        dst,
        key=key,
        keys=keys,
        force=force,
        dry_run=dry_run,
        verify=verify,
        max_shard_size=max_shard_size,
        as_json=json_,
        verbose=verbose,
        quiet=quiet,
    )


def register(app: typer.Typer) -> None:
    app.command("convert", help=convert.__doc__)(convert)
