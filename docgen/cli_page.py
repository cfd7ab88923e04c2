"""The command-line page: every `taskyard` command with the help it prints."""

from __future__ import annotations

import click

# A fixed width, so that the page does not depend on the terminal that generated it.
WIDTH = 88
INTRO = """\
# Command line

`taskyard` is installed into `.venv/bin` (`python -m cli` does the same). Each
section below is what `taskyard ... --help` prints. Exit codes: 0 success; 1 bad
input, a missing row, a refused operation or a failed health check; 2 a usage
error (an unknown command or option, a value of the wrong type); 3 the database
or the broker cannot be reached. The guide [The command line](../guides/command-line.md)
shows them at work.

"""


def _walk(command: click.Command, parent: click.Context | None, name: str) -> list[tuple[str, str]]:
    ctx = click.Context(
        command, info_name=name, parent=parent, terminal_width=WIDTH, max_content_width=WIDTH
    )
    found = [(ctx.command_path, command.get_help(ctx))]
    if isinstance(command, click.Group):
        for sub_name in sorted(command.list_commands(ctx)):
            sub = command.get_command(ctx, sub_name)
            if sub is not None and not sub.hidden:
                found += _walk(sub, ctx, sub_name)
    return found


def render() -> str:
    """The page's Markdown."""
    from cli import main

    sections = [
        f"## `{path}`\n\n```text\n{text.rstrip()}\n```\n"
        for path, text in _walk(main, None, "taskyard")
    ]
    return INTRO + "\n".join(sections)
