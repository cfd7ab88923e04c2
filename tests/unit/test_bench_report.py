"""The bench's arithmetic and report: percentiles, tallies, ratios, verdicts, the table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.bodies import RECORD_BYTES, read_tally, tally
from bench.latency import percentile
from bench.report import Figure, ratio, render, verdict


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 99, 5.0),
        (list(map(float, range(1, 101))), 50, 50.0),
        (list(map(float, range(1, 101))), 99, 99.0),
        ([3.0, 1.0, 2.0], 100, 3.0),
    ],
)
def test_percentile_is_the_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_tally_appends_one_record_per_job_and_reads_back_when_all_are_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker told where to tally
    base = tmp_path / "w.done"
    monkeypatch.setenv("BENCH_DONE_FILE", str(base))
    path = Path(f"{base}.probe")
    # When three probes finish
    for sent in (100.0, 200.0, 300.0):
        tally("probe", sent + 0.5, sent)
    # Then the file holds three fixed-width records, and asking for four is "not yet"
    assert os.path.getsize(path) == 3 * RECORD_BYTES
    assert read_tally(path, 4) is None
    summary = read_tally(path, 3)
    assert summary is not None
    assert summary["count"] == 3
    assert summary["first_start"] == pytest.approx(100.5)
    assert summary["delays"] == pytest.approx([0.5, 0.5, 0.5])


def test_missing_tally_file_is_not_yet_done(tmp_path: Path) -> None:
    assert read_tally(tmp_path / "nothing", 1) is None


def _pair(taskyard: list[float], baseline: list[float]) -> list[Figure]:
    return [
        Figure(
            "S", "jobs", "taskyard", "jobs/s", taskyard, baseline="dramatiq", ratio_at_least=1.0
        ),
        Figure("S", "jobs", "dramatiq", "jobs/s", baseline),
    ]


def test_ratio_divides_medians_of_the_same_run() -> None:
    figures = _pair([90.0, 100.0, 300.0], [200.0, 100.0, 150.0])
    assert ratio(figures[0], figures) == pytest.approx(100.0 / 150.0)
    assert verdict(figures[0], figures, smoke=False).startswith("missed")
    assert verdict(figures[0], figures, smoke=True) == ""


def test_verdict_met_and_bounds() -> None:
    figures = _pair([300.0], [150.0])
    assert verdict(figures[0], figures, smoke=False) == "met"
    bound = Figure("S", "p99", "taskyard", "ms", [12.0], at_most=10.0)
    assert verdict(bound, [bound], smoke=False) == "missed (target ≤ 10.0 ms)"
    floor = Figure("S", "bulk", "taskyard", "msgs/s", [5_000.0], at_least=4_500.0)
    assert verdict(floor, [floor], smoke=False) == "met"
    floor.values = [4_000.0]
    assert verdict(floor, [floor], smoke=False) == "missed (target ≥ 4,500 msgs/s)"


def test_render_shows_min_max_ratio_and_not_built() -> None:
    figures = [
        *_pair([90.0, 100.0, 110.0], [50.0, 50.0, 50.0]),
        Figure("S", "bulk send", "taskyard", "msgs/s", note="not built"),
    ]
    text = render(
        figures,
        machine={"CPU": "2 x test"},
        command="python -m bench",
        date="2026-01-01 00:00",
        runs=3,
        smoke=False,
        notes=["a note"],
    )
    assert "| jobs | taskyard | 100 | 90.0-110 | jobs/s | 2.00x dramatiq | met |" in text
    assert "| bulk send (not built) | taskyard | — | not built |" in text
    assert "- CPU: 2 x test" in text and "- a note" in text


def test_ratio_at_most_is_met_up_to_the_bound_and_missed_above_it() -> None:
    # Given CPU per job figures, lower being better, with Taskyard's bound at 2x bare Dramatiq's
    def cpu(taskyard: float) -> list[Figure]:
        return [
            Figure(
                "C",
                "no-op job",
                "taskyard",
                "CPU ms/job",
                [taskyard],
                baseline="dramatiq",
                ratio_at_most=2.0,
                higher_is_better=False,
            ),
            Figure("C", "no-op job", "dramatiq", "CPU ms/job", [0.5]),
        ]

    # Then exactly 2x is met, more is missed, and no baseline is said so
    at_bound, above = cpu(1.0), cpu(1.1)
    assert verdict(at_bound[0], at_bound, smoke=False) == "met"
    assert verdict(above[0], above, smoke=False) == "missed (target ≤ 2.0x)"
    assert verdict(above[0], above[:1], smoke=False) == "no baseline"
    assert verdict(above[0], above, smoke=True) == ""
    text = render(
        above, machine={}, command="python -m bench", date="d", runs=1, smoke=False, notes=[]
    )
    assert "## C" in text
    assert (
        "| no-op job | taskyard | 1.10 | 1.10-1.10 | CPU ms/job | 2.20x dramatiq "
        "| missed (target ≤ 2.0x) |" in text
    )
