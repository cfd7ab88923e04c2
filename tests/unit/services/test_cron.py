"""The one cron dialect: parsing, DST days in real timezones, and periodiq's adapter."""

from __future__ import annotations

import datetime as dt

import pendulum
import pytest

from services.cron import CronError, parse_cron, parse_timezone, periodic

UTC = dt.UTC


def at(*parts: int, zone: str = "UTC") -> dt.datetime:
    """A moment in `zone`, converted to UTC."""
    return dt.datetime(*parts, tzinfo=parse_timezone(zone)).astimezone(UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("expression", "minutes", "hours", "days", "months", "weekdays"),
    [
        ("* * * * *", 60, 24, 31, 12, 7),
        ("*/15 9-17 * * mon-fri", 4, 9, 31, 12, 5),
        ("0 0 1 jan,jul *", 1, 1, 1, 2, 7),
        ("30 2 * * SUN", 1, 1, 31, 12, 1),
        ("0 12 * * 0,7", 1, 1, 31, 12, 1),
        ("5/20 * * * *", 3, 24, 31, 12, 7),
        ("0 0 * dec sat", 1, 1, 31, 1, 1),
        ("@hourly", 1, 24, 31, 12, 7),
        ("@daily", 1, 1, 31, 12, 7),
        ("@midnight", 1, 1, 31, 12, 7),
        ("@weekly", 1, 1, 31, 12, 1),
        ("@monthly", 1, 1, 1, 12, 7),
        ("@yearly", 1, 1, 1, 1, 7),
        ("  @Annually ", 1, 1, 1, 1, 7),
    ],
)
def test_parse_accepts_numbers_names_ranges_steps_and_shortcuts(
    expression: str, minutes: int, hours: int, days: int, months: int, weekdays: int
) -> None:
    cron = parse_cron(expression)

    assert (len(cron.minutes), len(cron.hours), len(cron.days)) == (minutes, hours, days)
    assert (len(cron.months), len(cron.weekdays)) == (months, weekdays)


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("", "required"),
        ("* * * *", "expected 5 fields"),
        ("* * * * * *", "expected 5 fields"),
        ("60 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* * 0 * *", "day of month"),
        ("* * * 13 *", "month"),
        ("* * * * 8", "day of week"),
        ("* * * foo *", "not a number or a name"),
        ("* * * * mon-sun", "goes backwards"),
        ("*/0 * * * *", "step"),
        ("*/x * * * *", "step"),
        ("1-2-3 * * * *", "not a number"),
        ("@reboot", "unknown shortcut"),
        ("@every 5m", "unknown shortcut"),
        ("-1 * * * *", "not a number"),
    ],
)
def test_parse_refuses_bad_expressions_saying_what_is_wrong(expression: str, says: str) -> None:
    with pytest.raises(CronError, match=says):
        parse_cron(expression)


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "/etc/localtime", "UTC+1"])
def test_unknown_timezones_are_refused(name: str) -> None:
    with pytest.raises(CronError, match="unknown timezone"):
        parse_timezone(name)


def test_day_of_month_and_day_of_week_both_restricted_match_either() -> None:
    cron = parse_cron("0 0 13 * fri")
    days = [s.date() for s in cron.slots_between(at(2026, 2, 1), at(2026, 3, 1), dt.UTC)]

    # Fridays of February 2026, and the 13th (itself a Friday).
    assert days == [dt.date(2026, 2, d) for d in (6, 13, 20, 27)]


def test_a_time_skipped_by_dst_runs_once_at_the_instant_it_would_have_been() -> None:
    paris = parse_timezone("Europe/Paris")
    # 2026-03-29: Paris jumps from 02:00 to 03:00; 02:30 does not exist.
    slots = list(parse_cron("30 2 * * *").slots_between(at(2026, 3, 28), at(2026, 3, 31), paris))

    assert slots == [at(2026, 3, 28, 1, 30), at(2026, 3, 29, 1, 30), at(2026, 3, 30, 0, 30)]
    assert slots[1].astimezone(paris).strftime("%H:%M %Z") == "03:30 CEST"


def test_a_time_that_happens_twice_runs_once_at_its_first_pass() -> None:
    paris = parse_timezone("Europe/Paris")
    # 2026-10-25: Paris goes back from 03:00 CEST to 02:00 CET; 02:30 happens twice.
    slots = list(parse_cron("30 2 * * *").slots_between(at(2026, 10, 24), at(2026, 10, 27), paris))

    assert slots == [at(2026, 10, 24, 0, 30), at(2026, 10, 25, 0, 30), at(2026, 10, 26, 1, 30)]


def test_an_hourly_job_runs_in_both_passes_of_a_repeated_hour() -> None:
    paris = parse_timezone("Europe/Paris")
    start, end = at(2026, 10, 24, 23, 0), at(2026, 10, 25, 3, 0)
    slots = list(parse_cron("30 * * * *").slots_between(start, end, paris))

    # Four real hours, four runs: 01:30 CEST, 02:30 CEST, 02:30 CET, 03:30 CET.
    assert slots == [at(2026, 10, 24, 23, 30)] + [at(2026, 10, 25, h, 30) for h in (0, 1, 2)]


def test_new_york_and_kolkata_schedules_run_at_their_own_local_time() -> None:
    cron = parse_cron("0 9 * * *")
    after = at(2026, 7, 1)

    assert cron.next_after(after, parse_timezone("America/New_York")) == at(2026, 7, 1, 13)
    assert cron.next_after(after, parse_timezone("Asia/Kolkata")) == at(2026, 7, 1, 3, 30)


def test_next_after_is_strictly_after_and_finds_rare_dates() -> None:
    assert parse_cron("0 0 * * *").next_after(at(2026, 1, 1), dt.UTC) == at(2026, 1, 2)
    assert parse_cron("0 0 29 feb *").next_after(at(2026, 1, 1), dt.UTC) == at(2028, 2, 29)
    assert parse_cron("0 0 31 2 *").next_after(at(2026, 1, 1), dt.UTC) is None


def test_slots_before_goes_newest_first_within_its_bound() -> None:
    cron = parse_cron("0 * * * *")
    slots = list(cron.slots_before(at(2026, 1, 1, 5, 30), dt.UTC, not_before=at(2026, 1, 1, 3)))

    assert slots == [at(2026, 1, 1, 5), at(2026, 1, 1, 4), at(2026, 1, 1, 3)]


def test_periodic_adapter_fits_periodiqs_scheduler_and_knows_sunday_as_zero() -> None:
    spec = periodic("17 3 * * 0")
    sunday = pendulum.datetime(2026, 11, 29, 3, 17, tz="UTC")

    assert str(spec) == "17 3 * * 0"
    assert spec.validate(sunday)
    assert not spec.validate(sunday.add(minutes=1))
    assert spec.validate(sunday.in_timezone("Europe/Paris"))
    following = spec.next_valid_date(sunday)
    assert isinstance(following, pendulum.DateTime)
    assert following == pendulum.datetime(2026, 12, 6, 3, 17, tz="UTC")
    # Strictly after the slot it was asked from (not "after now": the test must not age).
    assert following > sunday


def test_periodic_adapter_reads_month_names() -> None:
    spec = periodic("0 0 1 jan *")

    assert spec.validate(pendulum.datetime(2027, 1, 1, tz="UTC"))
    assert spec.next_valid_date(pendulum.datetime(2026, 6, 1, tz="UTC")) == pendulum.datetime(
        2027, 1, 1, tz="UTC"
    )
