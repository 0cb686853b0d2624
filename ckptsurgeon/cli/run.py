"""``run``: apply a recipe (an ordered list of steps in a TOML file) and write the result once.

Examples:
    ckptsurgeon run examples/recipes/ddp-to-gray-7class.toml ddp.pth gray7.safetensors
    ckptsurgeon run examples/recipes/ema-to-bf16-release.toml train.pth release.safetensors --dry-run
    ckptsurgeon run recipe.toml model.pth out.pt --key model --json

The whole recipe is checked before any tensor is read: an unknown op or parameter, a missing or
wrongly typed one, stops with "step N (op): problem" and exit code 2. Key options given here run
before the recipe's first step; --key here wins over the recipe's key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ckptsurgeon.cli import _options as o
from ckptsurgeon.cli._run import KeyOptions, run_pipeline

RecipeArg = Annotated[
    Path, typer.Argument(help="TOML recipe: \\[\\[step]] tables, each an op and its parameters.", show_default=False)
]


def run(
    recipe: RecipeArg,
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
    """Run a recipe's steps in order over SRC and write DST once, atomically.

    The recipe is checked whole before anything is read. Key options given here run before its
    first step; --key here wins over the recipe's key.
    """
    from ckptsurgeon.recipe import load_recipe

    plan = load_recipe(recipe)
    keys = KeyOptions(strip_prefix, add_prefix, rename, select, drop, dtype)
    run_pipeline(
        plan.numbered_steps(),
        src,
        dst,
        key=key or plan.key,
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
    app.command("run", help=run.__doc__)(run)
