"""``convert``: rewrite a checkpoint in another format, bit-exact.

Examples:
    ckptsurgeon convert model.pth model.safetensors
    ckptsurgeon convert train.pth weights.pt --key state_dict --strip-prefix module.
    ckptsurgeon convert shards/ model.safetensors --json
"""

from __future__ import annotations

import typer

from ckptsurgeon.cli import _options as o
from ckptsurgeon.cli._run import WriteOptions, run_pipeline, writing_command


def convert(
    src: o.SrcArg,
    dst: o.DstArg,
    *,
    opts: WriteOptions,
) -> None:
    """Convert between .pt/.pth/.bin and .safetensors (bit-exact), optionally picking or renaming."""
    run_pipeline([], src, dst, opts)


def register(app: typer.Typer) -> None:
    app.command("convert", help=convert.__doc__)(writing_command(convert))
