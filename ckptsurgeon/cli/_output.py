"""One place that renders results: a Rich view for a person, or one JSON document for a machine."""

from __future__ import annotations

import json
import sys
from typing import Any

from ckptsurgeon.report import Report, shape_str

FOLD_AFTER = 12  # rows of one action shown before the rest are counted
STYLE = {"kept": "dim", "dropped": "red", "reshaped": "yellow", "added": "green", "renamed": "cyan", "cast": "magenta"}


def stdout_console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def human_count(n: int) -> str:
    return f"{n:,}"


def render_report(report: Report, *, as_json: bool, verbose: bool, quiet: bool = False) -> None:
    """Show a pipeline Report: per-key table (kept folded unless verbose) and a summary line."""
    if as_json:
        print_json(report.to_json())
        return
    if quiet:
        return
    from rich.table import Table
    from rich.text import Text

    console = stdout_console()
    src = f"{report.source} ({report.source_format})"
    console.print(f"[bold]source[/] {src}")
    c = report.container
    if c.get("key") or c.get("others"):
        used = f"state dict: [bold]{c['key']}[/] — {c['reason']}" if c.get("key") else f"state dict: {c['reason']}"
        console.print(used)
        if c.get("others"):
            console.print("also in the file: " + ", ".join(f"{k}: {v}" for k, v in c["others"].items()))
    for step in report.steps:
        for line in step.lines:
            console.print(f"[bold]{step.op}[/] {line}")

    rows = [e for e in report.entries if verbose or e.action != "kept"]
    hidden: dict[str, int] = {}
    if not verbose:  # one screen: long runs of one action are cut to their first rows
        shown: dict[str, int] = {}
        kept_rows = []
        for e in rows:
            shown[e.action] = shown.get(e.action, 0) + 1
            if shown[e.action] <= FOLD_AFTER:
                kept_rows.append(e)
            else:
                hidden[e.action] = hidden.get(e.action, 0) + 1
        rows = kept_rows
    if rows:
        table = Table(show_edge=False, pad_edge=False, header_style="bold")
        # The step lines above already give the details in full; a narrow terminal shows them there only.
        with_detail = console.width >= 120
        table.add_column("action", no_wrap=True)
        table.add_column("name", overflow="fold", min_width=12)
        table.add_column("before", no_wrap=True)
        table.add_column("after", no_wrap=True)
        if with_detail:
            table.add_column("detail", overflow="fold")
        for e in rows:
            name = e.name if not e.source_name or e.source_name == e.name else f"{e.source_name} → {e.name}"
            before = f"{shape_str(e.before.shape)} {e.before.dtype}" if e.before else "-"
            after = f"{shape_str(e.after.shape)} {e.after.dtype}" if e.after else "-"
            label = "+".join(a for a in e.actions) if len(e.actions) > 1 else e.action
            cells = [Text(label, style=STYLE[e.action]), name, before, after]
            table.add_row(*cells, *([e.detail] if with_detail else []))
        console.print(table)
        for action, n in hidden.items():
            console.print(f"[{STYLE[action]}]… and {n} more {action}[/] [dim](--verbose lists them)[/]")
    for note in report.notes:
        console.print(f"[dim]note:[/] {note}")

    counts = report.counts()
    parts = [f"[{STYLE[a]}]{n} {a}[/]" for a, n in counts.items() if n]
    if not verbose and counts["kept"]:
        parts[list(a for a, n in counts.items() if n).index("kept")] += " [dim](--verbose lists them)[/]"
    line = ", ".join(parts) or "no tensors"
    line += f" · params {human_count(report.params_before)} → {human_count(report.params_after)}"
    if report.output:
        if report.dry_run:
            line += f" · dry run: {report.output} not written"
        else:
            line += f" · wrote {report.output} ({human_bytes(report.output_bytes)})"
    console.print(line, soft_wrap=True)
