"""README.md and --help say the same thing: every command has an example, every option is documented."""

import re

from typer.main import get_command

from ckptsurgeon.cli import app
from tests.conftest import ROOT, run_cli

README = (ROOT / "README.md").read_text()
COMMAND = get_command(app)


def test_quick_start_is_the_two_make_commands():
    block = README.split("## Quick start", 1)[1].split("```", 2)[1]
    assert re.findall(r"^make \w+", block, re.M) == ["make demo", "make test"]


def test_every_command_has_an_example_and_every_option_is_documented():
    assert sorted(COMMAND.commands) == sorted(["inspect", "convert", "adapt-head", "adapt-stem", "diff", "run"])
    for name, cmd in COMMAND.commands.items():
        assert re.search(rf"^\$ ckptsurgeon {name} ", README, re.M), f"no example of `ckptsurgeon {name}`"
        for param in cmd.params:
            for opt in param.opts:
                if opt.startswith("--") and opt != "--help":
                    assert f"`{opt}" in README or f" {opt} " in README or f" {opt}\n" in README, (name, opt)


def test_help_lists_the_exit_codes_the_readme_states():
    out = run_cli("--help").out
    assert "0 success; 1 diff found differences; 2 usage error or bad input" in " ".join(out.split())
    assert "| 2 | usage error or bad input" in README
