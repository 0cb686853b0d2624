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
from ckptsurgeon.cli._run import WriteOptions, run_pipeline, writing_command

RecipeArg = Annotated[
    Path, typer.Argument(help="TOML recipe: \\[\\[step]] tables, each an op and its parameters.", show_default=False)
]


def run(
    recipe: RecipeArg,
    src: o.SrcArg,
    dst: o.DstArg,
    *,
    opts: WriteOptions,
) -> None:
    """Run a recipe's steps in order over SRC and write DST once, atomically.

    The recipe is checked whole before anything is read. Key options given here run before its
    first step; --key here wins over the recipe's key.
    """
    from ckptsurgeon.recipe import load_recipe

    plan = load_recipe(recipe)
    run_pipeline(plan.numbered_steps(), src, dst, opts, key=plan.key)


def register(app: typer.Typer) -> None:
    app.command("run", help=run.__doc__)(writing_command(run))
