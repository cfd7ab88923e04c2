"""Taskyard's message ids: UUIDv7, whose text sorts by the time it was minted."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from services.message_ids import id_floor, minted_at, new_message_id


def test_an_id_is_a_version_7_uuid_of_its_millisecond() -> None:
    ms = 1_765_000_000_123
    parsed = uuid.UUID(new_message_id(ms))

    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == ms


def test_ids_sort_by_time_and_differ_within_a_millisecond() -> None:
    ids = [new_message_id(1_765_000_000_000 + n) for n in range(0, 5_000, 7)]
    assert ids == sorted(ids)
    same = {new_message_id(1_765_000_000_000) for _ in range(1_000)}
    assert len(same) == 1_000


def test_a_day_floor_sorts_between_the_ids_of_the_day_before_and_the_day() -> None:
    midnight = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
    ms = int(midnight.timestamp() * 1000)
    floor = id_floor(midnight)
    assert (
        new_message_id(ms - 1)
        < floor
        <= new_message_id(ms)
        < id_floor(midnight + dt.timedelta(days=1))
    )


def test_minted_at_reads_a_v7_id_and_nothing_else() -> None:
    moment = dt.datetime(2026, 12, 6, 21, 0, 0, 250_000, tzinfo=dt.UTC)
    assert minted_at(new_message_id(int(moment.timestamp() * 1000))) == moment
    for other in (str(uuid.uuid4()), "not-an-id", "", "x" * 36):
        assert minted_at(other) is None


def test_out_of_range_times_are_refused() -> None:
    with pytest.raises(ValueError, match="2\\*\\*48"):
        new_message_id(-1)
    with pytest.raises(ValueError, match="aware"):
        id_floor(dt.datetime(2026, 1, 1))
