"""`python -m bench.drain`'s counting of jobs started per stretch of time."""

from __future__ import annotations

import pytest

from bench.drain import _counts, main, per_bucket


def test_jobs_are_counted_in_the_bucket_of_their_start_from_the_first() -> None:
    starts = [10.30, 10.0, 10.24, 10.26, 10.9, 10.01]
    assert per_bucket(starts, 0.25) == [3, 2, 0, 1]


def test_one_start_and_none() -> None:
    assert per_bucket([5.0], 0.25) == [1]
    assert per_bucket([], 0.25) == []


def test_a_bucket_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        per_bucket([1.0], 0)
    with pytest.raises(SystemExit):
        main(["--bucket", "0"])


def test_counts_are_positive_whole_numbers() -> None:
    assert _counts("2000,20000") == [2_000, 20_000]
    with pytest.raises(Exception, match="positive whole number"):
        _counts("2000,0")
