"""Reading a listing's filters from the URL: the command line's rules, one clear error each."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import click
from flask import abort

from cli.common import SINCE, CommandFailed, check_time_range
from services.errors import valid_tenant_id
from services.pagination import InvalidCursor, Position, decode_cursor

# The longest actor, reason or name a filter takes (the columns' widths).
MAX_TEXT = 200
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def bad_request(message: str) -> None:
    """Answer 400 with one line naming the input and what to do."""
    abort(400, description=message)


def tenant_param(args: Mapping[str, str], name: str = "tenant") -> int | None:
    """A tenant id from the URL (as the command line's `--tenant` reads it), or None."""
    raw = args.get(name, "").strip()
    if not raw:
        return None
    value = int(raw) if raw.isdigit() and len(raw) <= 20 else None
    if not valid_tenant_id(value):
        bad_request(f"{name}={raw[:40]!r} is not a tenant id: give a whole number from 1")
    return value


def after_id_param(args: Mapping[str, str]) -> int | None:
    """`after` from the URL of a listing sorted by id: the last id of the page before, or None."""
    raw = args.get("after", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 18:
        bad_request(f"after={raw[:40]!r} is not an id: give the last id of the page before")
    return int(raw)


def text_param(args: Mapping[str, str], name: str) -> str | None:
    """A text filter (actor, reason) from the URL, or None."""
    raw = args.get(name, "").strip()
    if not raw:
        return None
    if len(raw) > MAX_TEXT or "\x00" in raw:
        bad_request(f"{name} is longer than {MAX_TEXT} characters or holds a NUL: shorten it")
    return raw


def choice_param(args: Mapping[str, str], name: str, choices: list[str]) -> str | None:
    """One of `choices` from the URL, or None."""
    raw = args.get(name, "").strip()
    if not raw:
        return None
    if raw not in choices:
        bad_request(f"{name}={raw[:40]!r} is not one of {', '.join(choices)}")
    return raw


def since_param(args: Mapping[str, str], name: str = "since") -> dt.datetime | None:
    """`since` (or `until`) from the URL: an age (30m, 6h, 2d) or an ISO time (`--since`)."""
    raw = args.get(name, "").strip()
    if not raw:
        return None
    try:
        value: dt.datetime = SINCE.convert(raw[:64], None, None)
    except click.BadParameter:
        bad_request(f"{name}={raw[:40]!r} is neither an age (30m, 6h, 2d) nor an ISO-8601 time")
        raise
    return value


def time_range_params(args: Mapping[str, str]) -> tuple[dt.datetime | None, dt.datetime | None]:
    """`since` and `until` from the URL, as `--since` and `--until` read them (until excluded)."""
    since, until = since_param(args), since_param(args, "until")
    try:
        check_time_range(since, until)
    except CommandFailed as exc:
        bad_request(str(exc).replace("--until", "until").replace("--since", "since"))
    return since, until


def cursor_param(args: Mapping[str, str], listing: str) -> Position | None:
    """`after` from the URL: the cursor of the page before, or None for the first page."""
    raw = args.get("after", "").strip()
    if not raw:
        return None
    try:
        return decode_cursor(listing, raw)
    except InvalidCursor as exc:
        bad_request(str(exc))
        raise


def limit_param(args: Mapping[str, str]) -> int:
    """How many rows a page shows (`limit`, 1 to MAX_LIMIT)."""
    raw = args.get("limit", "").strip()
    if not raw:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        bad_request(f"limit={raw[:20]!r} must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)
