"""How commands print: one JSON document with --json, otherwise tables for a person."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

T = TypeVar("T")
# Piped output (grep, less) keeps one row per line instead of wrapping at 80 columns.
PIPED_WIDTH = 250


def emit(data: T, as_json: bool, render: Callable[[T], None]) -> None:
    """Print `data` as one JSON document, or for a person."""
    if as_json:
        click.echo(json.dumps(data, default=str, indent=2))
    else:
        render(data)


def show(*renderables: Any) -> None:
    """Print tables for a person: full width on a terminal, one row per line when piped."""
    width = None if sys.stdout.isatty() else PIPED_WIDTH
    Console(width=width, highlight=False).print(*renderables)


def _cell(value: object) -> Text:
    # Text, not str: a name like "[bold]x" must not be read as rich markup.
    if value is None:
        return Text("-")
    if isinstance(value, dict | list):
        return Text(json.dumps(value, default=str))
    return Text(str(value))


def fields_table(title: str, data: Mapping[str, object]) -> Table:
    """One record as a two-column table of its fields."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in data.items():
        table.add_row(key, _cell(value))
    return table


def records_table(
    title: str, columns: Sequence[str], records: Iterable[Mapping[str, object]]
) -> Table:
    """Records as a table of the given columns."""
    table = Table(*columns, title=title, title_justify="left")
    for record in records:
        table.add_row(*(_cell(record[column]) for column in columns))
    return table


def duration(seconds: float) -> str:
    """A duration for a person: 4.2s, 3m07s, 2h05m, 3d04h."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
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
    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda advance: bar.advance(task, advance)
