"""``inspect``: what is in a checkpoint, from headers alone (no tensor data is read).

Examples:
    ckptsurgeon inspect model.safetensors
    ckptsurgeon inspect train.pth --tree
    ckptsurgeon inspect model.pth --filter 'head*' --filter '*.bias' --json
"""

from __future__ import annotations

from typing import Annotated

import typer

from ckptsurgeon.cli import _options as o
from ckptsurgeon.cli._output import human_bytes, human_count, print_json, shape_str, stdout_console
from ckptsurgeon.inspection import inspect_checkpoint, tree


def inspect(
    src: o.SrcArg,
    key: o.KeyOpt = None,
    strip_prefix: o.StripPrefixOpt = None,
    filter_: o.FilterOpt = None,
    tree_: Annotated[
        bool, typer.Option("--tree", help="Group by dotted prefix with parameter counts; fold numbered blocks.")
    ] = False,
    json_: o.JsonOpt = False,
) -> None:
    """Show format, container, metadata and every tensor (name, shape, dtype, parameters, bytes)."""
    info = inspect_checkpoint(src, key=key, strip_prefix=strip_prefix or [], filters=filter_ or [])
    if json_:
        print_json(info)
        return
    from rich.table import Table

    console = stdout_console()
    console.print(f"[bold]{info['path']}[/]  format: {info['format']}")
    c = info["container"]
    if c["key"] or c["others"]:
        console.print(f"state dict: [bold]{c['key'] or '(top level)'}[/] — {c['reason']}")
        for k, v in c["others"].items():
            console.print(f"  {k}: {v}")
    if info["metadata"]:
        console.print("metadata: " + ", ".join(f"{k}={_short(v)}" for k, v in info["metadata"].items()))
    if tree_:
        console.print(tree(info["tensors"]))
    else:
        table = Table(show_edge=False, pad_edge=False, header_style="bold")
        for col, justify in (
            ("name", "left"),
            ("shape", "left"),
            ("dtype", "left"),
            ("params", "right"),
            ("bytes", "right"),
        ):
            table.add_column(col, justify=justify)
        for t in info["tensors"]:
            table.add_row(
                t["name"], shape_str(t["shape"]), t["dtype"], human_count(t["numel"]), human_bytes(t["nbytes"])
            )
        console.print(table)
    for group in info["tied"]:
        console.print(f"[dim]shared storage:[/] {', '.join(group)}")
    for note in info["notes"]:
        console.print(f"[dim]note:[/] {note}")
    dt = ", ".join(f"{k} {v}" for k, v in info["dtypes"].items())
    shown = f" (of {info['num_tensors_total']}, filtered)" if info["filters"] else ""
    console.print(
        f"{info['num_tensors']} tensors{shown} · {human_count(info['num_params'])} params · "
        f"{human_bytes(info['nbytes'])} · {dt}"
    )


def _short(v: str) -> str:
    return v if len(v) <= 60 else v[:57] + "..."


def register(app: typer.Typer) -> None:
    app.command("inspect", help=inspect.__doc__)(inspect)
