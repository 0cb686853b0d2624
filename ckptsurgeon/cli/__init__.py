"""The ``ckptsurgeon`` command: parses options, builds a pipeline, runs it, renders the Report.

Every failure the user can act on is a SurgeonError; ``main`` turns it (and usage errors) into one
line on stderr and exit code 2. ``--debug`` anywhere on the line shows the traceback instead.
"""

from __future__ import annotations

import sys
import traceback

import typer

from ckptsurgeon.errors import SurgeonError

app = typer.Typer(
    name="ckptsurgeon",
    help="Checkpoint surgery for PyTorch weights: inspect, convert, adapt heads and stems, diff.\n\n"
    "Exit codes: 0 success; 1 diff found differences; 2 usage error or bad input. "
    "A checkpoint's pickled code never runs. Add --debug anywhere for a traceback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

from ckptsurgeon.cli import adapt_head as _adapt_head  # noqa: E402
from ckptsurgeon.cli import adapt_stem as _adapt_stem  # noqa: E402
from ckptsurgeon.cli import convert as _convert  # noqa: E402
from ckptsurgeon.cli import diff as _diff  # noqa: E402
from ckptsurgeon.cli import inspect as _inspect  # noqa: E402
from ckptsurgeon.cli import run as _run  # noqa: E402

_inspect.register(app)
_convert.register(app)
_adapt_head.register(app)
_adapt_stem.register(app)
_diff.register(app)
_run.register(app)


def _fail(message: str, code: int = 2) -> None:
    # One line, whatever a file put into the message: control characters become spaces.
    message = "".join(c if c.isprintable() else " " for c in message)
    sys.stderr.write(f"ckptsurgeon: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and ``python -m ckptsurgeon``."""
    from typer import _click as click  # typer vendors click
    from typer.main import get_command

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    command = get_command(app)
    try:
        rv = command.main(args=args, prog_name="ckptsurgeon", standalone_mode=False)
    except SurgeonError as e:
        if debug:
            traceback.print_exc()
        _fail(f"error: {e}")
    except click.exceptions.UsageError as e:
        path = e.ctx.command_path if e.ctx else "ckptsurgeon"
        _fail(f"usage error: {e.format_message()} (see '{path} --help')")
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted; nothing was written", 130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as e:  # a bug or an input we failed to classify: still one line, exit 2
        if debug:
            raise
        _fail(f"error: unexpected {type(e).__name__}: {e} (run with --debug for the traceback)")
    if rv == 130:  # typer turns Ctrl-C into exit code 130
        _fail("interrupted; nothing was written", 130)
    sys.exit(rv if isinstance(rv, int) else 0)
