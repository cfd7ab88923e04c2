"""How commands print: one JSON document with --json, otherwise tables for a person.

Times: --json keeps each one as the service gave it (full ISO 8601, with its
offset); a table shows a field named `..._at` in UTC to the second
(`shown_time`), and says so under it (`TIMES_NOTE`).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

T = TypeVar("T")
# Piped output (grep, less) keeps one row per line instead of wrapping at 80 columns.
PIPED_WIDTH = 250
# Under a table that shows times: in which zone, and that they are cut to the second.
TIMES_NOTE = "times in UTC"


def emit(data: T, as_json: bool, render: Callable[[T], None]) -> None:
    """Print `data` as one JSON document, or for a person."""
    if as_json:
        click.echo(json.dumps(data, default=str, indent=2))
    else:
        render(data)


class _Console(Console):
    """Rich's console, but a reader that closed the pipe is the root command's to handle
    (cli/root.py: the command succeeded), not an exit 1 from inside the printing."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def show(*renderables: Any) -> None:
    """Print tables for a person: full width on a terminal, one row per line when piped."""
    width = None if sys.stdout.isatty() else PIPED_WIDTH
    _Console(width=width, highlight=False).print(*renderables)


def is_time_field(key: str) -> bool:
    """Whether a field holds a moment: by Taskyard's naming, its name ends in `_at`."""
    return key.endswith("_at")


def shown_time(value: object) -> str | None:
    """A moment for a person: ISO-like, in UTC, to the second (`2026-05-04 13:02:11`).

    Takes an ISO 8601 string (as every service's info gives) or a datetime; one
    without an offset is taken as UTC. None for anything else.
    """
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    elif isinstance(value, dt.datetime):
        moment = value
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _cell(value: object, key: str = "") -> Text:
    # Text, not str: a name like "[bold]x" must not be read as rich markup.
    if value is None:
        return Text("-")
    if is_time_field(key):
        moment = shown_time(value)
        if moment is not None:
            return Text(moment)
    if isinstance(value, dict | list):
        return Text(json.dumps(value, default=str))
    return Text(str(value))


def _times_note(keys: Iterable[str]) -> str | None:
    return TIMES_NOTE if any(is_time_field(key) for key in keys) else None


def fields_table(title: str, data: Mapping[str, object]) -> Table:
    """One record as a two-column table of its fields (times in UTC, to the second)."""
    table = Table(
        title=title,
        show_header=False,
        title_justify="left",
        caption=_times_note(data),
        caption_justify="left",
    )
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in data.items():
        table.add_row(key, _cell(value, key))
    return table


def records_table(
    title: str, columns: Sequence[str], records: Iterable[Mapping[str, object]]
) -> Table:
    """Records as a table of the given columns (times in UTC, to the second)."""
    table = Table(
        *columns,
        title=title,
        title_justify="left",
        caption=_times_note(columns),
        caption_justify="left",
    )
    for record in records:
        table.add_row(*(_cell(record[column], column) for column in columns))
    return table


def duration(seconds: float) -> str:
    """A duration for a person: 4.2s, 3m07s, 2h05m, 3d04h (the one form every command uses)."""
    seconds = max(seconds, 0.0)  # (another host's clock may run a little ahead)
    if seconds < 0.05:  # (rather than a duration of zero)
        return "<0.1s"
    if seconds < 59.95:  # (so that one decimal never rounds up to a minute)
        return f"{seconds:.1f}s"
    whole = round(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}{whole % size // sub_size:02d}{sub}"
    return f"{whole // 60}m{whole % 60:02d}s"


def value_printer(key: str) -> Callable[[Mapping[str, Any]], None]:
    """A renderer for `emit`: only the value of `key` (an id, say), on one line."""

    def render(info: Mapping[str, Any]) -> None:
        click.echo(info[key])

    return render


def fields_printer(noun: str, key: str = "id") -> Callable[[Mapping[str, Any]], None]:
    """A renderer for `emit`: one record as the table of its fields, titled `NOUN KEY`."""

    def render(info: Mapping[str, Any]) -> None:
        show(fields_table(f"{noun} {info[key]}", info))

    return render


def records_printer(
    noun: str, columns: Sequence[str]
) -> Callable[[Sequence[Mapping[str, Any]]], None]:
    """A renderer for `emit`: records as a table of `columns`, titled `NOUN (how many)`."""

    def render(infos: Sequence[Mapping[str, Any]]) -> None:
        show(records_table(f"{noun} ({len(infos)})", columns, infos))

    return render


@contextmanager
def progress(
    total: int | None, description: str, *, quiet: bool
) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal; nothing with --json or when stdout is piped."""
    if quiet or not sys.stdout.isatty():
        yield lambda advance: None
        return
    from rich.progress import Progress  # (a terminal's only)

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda advance: bar.advance(task, advance)
