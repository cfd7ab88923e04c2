"""Taskyard's one cron dialect: five fields, names, `@` shortcuts, slots in any IANA timezone.

Used for periodiq's own schedules (`periodic(...)`) and for the tenants' ones.
Written here rather than taken from croniter so that the two rules that
matter to tenants are ours and tested: a wall-clock time skipped by a DST
change runs once, at the instant it would have been (02:30 → 03:30 CEST); a
time that happens twice runs once, at its first occurrence, unless the hour
field is `*` (an interval job), which runs at both.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pendulum

SHORTCUTS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, lowest, highest, names starting at `lowest`) of the five fields, in order.
FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, WEEKDAYS),
)
# How far ahead a next slot is looked for: `0 0 29 2 1` (a Monday 29 February) can be
# 28 years away; further than that, an expression is treated as never matching.
MAX_SEARCH_DAYS = 366 * 29
UTC = dt.UTC
_ONE_DAY = dt.timedelta(days=1)


class CronError(ValueError):
    """A cron expression or a timezone Taskyard cannot use."""


def _value(text: str, low: int, names: tuple[str, ...], field: str) -> int:
    if text in names:
        return low + names.index(text)
    if not text.isdigit():
        raise CronError(f"{field}: {text!r} is not a number or a name")
    return int(text)


def _field(text: str, field: str, low: int, high: int, names: tuple[str, ...]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        span, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronError(f"{field}: step {step_text!r} must be a whole number >= 1")
            step = int(step_text)
        if span == "*":
            start, end = low, high
        else:
            first, dash, last = span.partition("-")
            start = _value(first, low, names, field)
            # `5/15` means from 5 to the end, every 15, as in Vixie cron.
            end = _value(last, low, names, field) if dash else (high if slash else start)
        if not low <= start <= high or not low <= end <= high:
            raise CronError(f"{field}: {item!r} is outside {low}-{high}")
        if start > end:
            raise CronError(f"{field}: range {item!r} goes backwards")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class CronExpression:
    """A parsed cron expression; `slots_*` give its instants in UTC for a timezone."""

    source: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    # Sunday is 0 (a 7 in the expression is folded into it).
    weekdays: frozenset[int]
    # Vixie cron: when both day fields are restricted, a day matching either runs.
    either_day: bool
    every_hour: bool

    def __str__(self) -> str:
        return self.source

    def matches_day(self, day: dt.date) -> bool:
        """Whether the expression runs on this (local) date."""
        if day.month not in self.months:
            return False
        in_days, in_weekdays = day.day in self.days, day.isoweekday() % 7 in self.weekdays
        return (in_days or in_weekdays) if self.either_day else (in_days and in_weekdays)

    def matches(self, moment: dt.datetime) -> bool:
        """Whether the minute of `moment` (in its own timezone) is a slot."""
        return (
            moment.minute in self.minutes
            and moment.hour in self.hours
            and self.matches_day(moment.date())
        )

    def slots_on(self, day: dt.date, zone: ZoneInfo) -> tuple[dt.datetime, ...]:
        """The UTC instants of this local date's slots, in order, each once."""
        return _slots_on(self, day, zone) if self.matches_day(day) else ()

    def slots_between(
        self, start: dt.datetime, end: dt.datetime, zone: ZoneInfo
    ) -> Iterator[dt.datetime]:
        """Every slot with start <= slot <= end, oldest first."""
        day, last_day = _local_date(start, zone) - _ONE_DAY, _local_date(end, zone)
        while day <= last_day:
            slots = self.slots_on(day, zone)
            yield from slots[bisect.bisect_left(slots, start) : bisect.bisect_right(slots, end)]
            day += _ONE_DAY

    def slots_before(
        self, end: dt.datetime, zone: ZoneInfo, *, not_before: dt.datetime
    ) -> Iterator[dt.datetime]:
        """Every slot with not_before <= slot <= end, newest first."""
        day, first_day = _local_date(end, zone), _local_date(not_before, zone) - _ONE_DAY
        while day >= first_day:
            slots = self.slots_on(day, zone)
            low, high = bisect.bisect_left(slots, not_before), bisect.bisect_right(slots, end)
            yield from reversed(slots[low:high])
            day -= _ONE_DAY

    def next_after(self, moment: dt.datetime, zone: ZoneInfo) -> dt.datetime | None:
        """The first slot strictly after `moment`, or None if there is none in 29 years."""
        day = _local_date(moment, zone) - _ONE_DAY
        for _ in range(MAX_SEARCH_DAYS):
            slots = self.slots_on(day, zone)
            found = bisect.bisect_right(slots, moment)
            if found < len(slots):
                return slots[found]
            day += _ONE_DAY
        return None


def _local_date(moment: dt.datetime, zone: ZoneInfo) -> dt.date:
    # Callers start a day early: a DST gap can move a slot of a local date past midnight.
    return moment.astimezone(zone).date()


@functools.lru_cache(maxsize=8_192)
def _slots_on(cron: CronExpression, day: dt.date, zone: ZoneInfo) -> tuple[dt.datetime, ...]:
    found: set[dt.datetime] = set()
    for hour in cron.hours:
        for minute in cron.minutes:
            wall = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
            # fold=0: a time in a DST gap gets the offset before the change (runs
            # once, an hour "late" on the wall clock); a repeated time, its first pass.
            first = wall.astimezone(UTC)
            found.add(first)
            if cron.every_hour:
                second = wall.replace(fold=1).astimezone(UTC)
                # Only a repeated wall time round-trips with fold=1; a gap time does not.
                if second != first and second.astimezone(zone).replace(fold=0) == wall:
                    found.add(second)
    return tuple(sorted(found))


@functools.lru_cache(maxsize=4_096)
def parse_cron(expression: str) -> CronExpression:
    """Parse a 5-field expression or an `@` shortcut; raises `CronError` saying what is wrong."""
    if not isinstance(expression, str) or not expression.strip():
        raise CronError("a cron expression is required")
    text = expression.strip().lower()
    if text.startswith("@"):
        if text not in SHORTCUTS:
            raise CronError(f"{expression!r}: unknown shortcut (known: {', '.join(SHORTCUTS)})")
        text = SHORTCUTS[text]
    parts = text.split()
    if len(parts) != len(FIELDS):
        raise CronError(f"{expression!r}: expected 5 fields (minute hour day month weekday)")
    try:
        m, h, dom, mon, dow = (
            _field(part, name, low, high, names)
            for part, (name, low, high, names) in zip(parts, FIELDS, strict=True)
        )
    except CronError as exc:
        raise CronError(f"{expression!r}: {exc}") from None
    return CronExpression(
        source=expression.strip(),
        minutes=tuple(sorted(m)),
        hours=tuple(sorted(h)),
        days=dom,
        months=mon,
        weekdays=frozenset(d % 7 for d in dow),
        either_day=not parts[2].startswith("*") and not parts[4].startswith("*"),
        every_hour=len(h) == 24,
    )


@functools.lru_cache(maxsize=1_024)
def parse_timezone(name: str) -> ZoneInfo:
    """The IANA timezone `name`; raises `CronError` for an unknown one."""
    problem = f"unknown timezone {name!r} (expected an IANA name, e.g. Europe/Paris)"
    if not isinstance(name, str) or not name or name.startswith(("/", ".")) or ".." in name:
        raise CronError(problem)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(problem) from exc


class PeriodicCron:
    """A cron expression in UTC as periodiq's Scheduler uses it (`periodic=` actor option).

    periodiq's own CronSpec rejects Sunday as 0 and month names; this one reads
    the same dialect as the tenants' schedules.
    """

    def __init__(self, expression: str) -> None:
        self.cron = parse_cron(expression)

    def __str__(self) -> str:
        return self.cron.source

    def validate(self, moment: dt.datetime) -> bool:
        """Whether `moment`'s minute, in UTC, is a slot."""
        return self.cron.matches(moment.astimezone(UTC))

    def next_valid_date(self, last: dt.datetime) -> pendulum.DateTime:
        """The first slot after `last` (periodiq sleeps until then)."""
        found = self.cron.next_after(last.astimezone(UTC), ZoneInfo("UTC"))
        if found is None:
            raise CronError(f"{self.cron.source!r} never matches")
        return pendulum.instance(found)


def periodic(expression: str) -> PeriodicCron:
    """The `periodic=` option of a periodiq actor, from a UTC cron expression."""
    return PeriodicCron(expression)
