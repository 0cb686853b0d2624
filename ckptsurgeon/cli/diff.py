"""``diff``: are two checkpoints the same weights, and if not, where and by how much?

Exit codes as diff(1): 0 same (within tolerance), 1 different, 2 error.

Examples:
    ckptsurgeon diff model.pth model.safetensors
    ckptsurgeon diff expected.safetensors out.safetensors --atol 1e-6 || exit 1
    ckptsurgeon diff ddp.pth plain.safetensors --strip-prefix module.
    ckptsurgeon diff train.pth model.safetensors --key state_dict --filter 'layer4.*'
    ckptsurgeon diff train.pth train.pth --key-a state_dict --key-b state_dict_ema --rtol 1e-3
    ckptsurgeon diff shards/ model.safetensors --keys-only --json
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from ckptsurgeon.cli import _options as o
from ckptsurgeon.cli._output import print_json, shape_str, stdout_console
from ckptsurgeon.diffing import DiffResult, diff_checkpoints
from ckptsurgeon.progress import ByteProgress, wanted


def diff(
    a: Annotated[Path, typer.Argument(metavar="A", help="First checkpoint: any supported format.", show_default=False)],
    b: Annotated[
        Path, typer.Argument(metavar="B", help="Second checkpoint; the reference for --rtol.", show_default=False)
    ],
    key: o.KeyOpt = None,
    key_a: Annotated[
        Optional[str], typer.Option("--key-a", help="State dict of A only (overrides --key for A).", show_default=False)
    ] = None,
    key_b: Annotated[
        Optional[str], typer.Option("--key-b", help="State dict of B only (overrides --key for B).", show_default=False)
    ] = None,
    strip_prefix: o.StripPrefixOpt = None,
    filter_: o.FilterOpt = None,
    atol: Annotated[
        Optional[float],
        typer.Option(
            "--atol",
            help="Absolute tolerance, as torch.allclose: |a-b| <= atol + rtol*|b|. Default: exact.",
            show_default=False,
        ),
    ] = None,
    rtol: Annotated[
        Optional[float],
        typer.Option(
            "--rtol", help="Relative tolerance (B is the reference); 0 when only --atol is given.", show_default=False
        ),
    ] = None,
    keys_only: Annotated[
        bool, typer.Option("--keys-only", help="Compare names, shapes and dtypes only; read no tensor data.")
    ] = False,
    json_: o.JsonOpt = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List equal tensors too.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; the exit code says it.")] = False,
) -> None:
    """Compare two checkpoints across formats: names, shapes, dtypes and values (exit 0 same, 1 different).

    Exact by default: bit-for-bit, a NaN matching a NaN in the same place; -0.0 differs from 0.0
    (--atol 0 compares numbers, where they are equal). Different dtypes are compared by value after
    upcasting, and still listed as dtype mismatches. Identical bytes are never decoded.
    """
    with contextlib.ExitStack() as stack:

        def progress(total: int):
            bar = ByteProgress(total, "comparing", enabled=wanted(as_json=json_, quiet=quiet))
            return stack.enter_context(bar)

        res = diff_checkpoints(
            a,
            b,
            key=key,
            key_a=key_a,
            key_b=key_b,
            strip_prefix=strip_prefix or [],
            filters=filter_ or [],
            atol=atol,
            rtol=rtol,
            keys_only=keys_only,
            progress=progress,
        )
    if json_:
        print_json(res.to_json())
    elif not quiet:
        render(res, verbose=verbose)
    raise typer.Exit(0 if res.equal else 1)


def _num(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def _val(x) -> str:
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def _tolerance(res: DiffResult) -> str:
    if res.keys_only:
        return "keys only: values not read"
    if res.exact:
        return "exact: bit-for-bit, NaN matches NaN"
    return f"atol {res.atol or 0:g}, rtol {res.rtol or 0:g}"


def render(res: DiffResult, *, verbose: bool = False) -> None:
    """The Rich report: one table grouped by category, then a summary line."""
    from rich.table import Table
    from rich.text import Text

    console = stdout_console()
    console.print(f"[bold]A[/] {res.a_path}")
    console.print(f"[bold]B[/] {res.b_path}")
    for note in res.notes:
        console.print(f"[dim]note:[/] {note}")

    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("", no_wrap=True)
    table.add_column("name", overflow="fold", min_width=16)
    for col in ("A", "B", "max |Δ|", "max rel", "differ"):
        table.add_column(col, no_wrap=True, justify="left" if col in ("A", "B") else "right")
    table.add_column("largest at")

    def row(label: str, style: str, name: str, *cells: str) -> None:
        table.add_row(Text(label, style=style), name, *cells)

    for n in res.only_in_a:
        row("only in A", "red", n)
    for n in res.only_in_b:
        row("only in B", "green", n)
    for m in res.shape_mismatch:
        row("shape", "yellow", m.name, shape_str(m.a), shape_str(m.b))
    for m in res.dtype_mismatch:
        row("dtype", "magenta", m.name, m.a, m.b)
    for v in res.value_mismatch:
        at = "[" + ", ".join(map(str, v.where)) + "]" if v.where else "(scalar)"
        differ = f"{v.num_mismatched:,}/{v.numel:,}"
        row("values", "red", v.name, _val(v.a), _val(v.b), _num(v.max_abs), _num(v.max_rel), differ, at)
    if verbose:
        for n in res.equal_names:
            row("equal", "dim", n)
    if table.row_count:
        console.print(table)

    parts = [f"{res.num_equal} {'match' if res.keys_only else 'equal'}"]
    for count, label in (
        (len(res.only_in_a), "only in A"),
        (len(res.only_in_b), "only in B"),
        (len(res.shape_mismatch), "shape mismatch"),
        (len(res.dtype_mismatch), "dtype mismatch"),
    ):
        if count:
            parts.append(f"{count} {label}")
    if res.value_mismatch:
        n = len(res.value_mismatch)
        parts.append(f"{n} value mismatch{'es' if n > 1 else ''} (max |Δ| {_num(res.value_mismatch[0].max_abs)})")
    verdict = "[green]same[/]" if res.equal else "[red]different[/]"
    console.print(" · ".join(parts) + f" → {verdict} ({_tolerance(res)})", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("diff", help=diff.__doc__)(diff)
