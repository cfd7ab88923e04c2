"""Every command's --help states its bounds in words, never as click's `[1<=x<=N]` ranges."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from cli import main
from cli.root import COMMANDS

# Click's form of a range in a help: `[1<=x<=10000]`, `[x>=0]`, `[0<x<1]`, after a default too.
RANGE = re.compile(r"\[[^\]]*\bx\s*[<>]=?|[<>]=?\s*x\b[^\]]*\]")


def _paths() -> Iterator[tuple[str, ...]]:
    ctx = click.Context(main, info_name="taskyard")

    def walk(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        yield path
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                yield from walk(sub, (*path, name))

    for name in sorted(COMMANDS):
        command = main.get_command(ctx, name)
        assert command is not None
        yield from walk(command, (name,))


PATHS = sorted(set(_paths()))


def test_the_pattern_finds_clicks_ranges() -> None:
    for shown in ("[default: 50; 1<=x<=10000]", "[1<=x<=9223372036854775807]", "[x>=0]"):
        assert RANGE.search(shown), shown
    assert not RANGE.search("[default: 50]")


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_a_help_shows_no_range(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert not RANGE.search(result.stdout), f"taskyard {' '.join(path)}: {result.stdout}"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("jobs", "list", "--limit", "0"), "'0' is not a whole number from 1 to 10000"),
        (("dead-letters", "list", "--limit", "x"), "'x' is not a whole number from 1 to 10000"),
        (("send", "a", "--tenant", "1", "--delay", "-1"), "'-1' is not a number from 0 to"),
    ],
)
def test_a_number_out_of_bounds_is_one_usage_error(args: tuple[str, ...], said: str) -> None:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 2
    assert said in result.stderr and "Traceback" not in result.output
