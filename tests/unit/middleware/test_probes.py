"""/healthz and /readyz from the worker processes' probe files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from middleware.probes import (
    LIVE_PATH,
    READY_PATH,
    ProcessProbe,
    probe_status,
    remove_probe,
    write_probe,
)

NOW = 1_000_000.0


def probe(pid: int = 10, **changes: Any) -> ProcessProbe:
    fields: dict[str, Any] = {
        "pid": pid,
        "at": NOW - 1,
        "interval": 2.0,
        "worker_threads": 8,
        "worker_threads_alive": 8,
        "consumers": 1,
        "consumers_alive": 1,
        "database": True,
        "schema": True,
        "schema_error": None,
    }
    fields.update(changes)
    return ProcessProbe(**fields)  # type: ignore[typeddict-item]


def status(directory: Path, path: str) -> tuple[int, dict[str, Any]]:
    return probe_status(directory, path, now=NOW)


def test_healthy_processes_are_live_and_ready(tmp_path: Path) -> None:
    write_probe(tmp_path, probe(10))
    write_probe(tmp_path, probe(11))
    assert status(tmp_path, LIVE_PATH)[0] == 200
    code, body = status(tmp_path, READY_PATH)
    assert code == 200 and body["ready"] and [p["pid"] for p in body["processes"]] == [10, 11]


@pytest.mark.parametrize(
    ("changes", "live", "problem"),
    [
        ({"at": NOW - 11}, False, "no beat for 11 s"),
        ({"worker_threads_alive": 7}, False, "1 of 8 worker threads dead"),
        ({"consumers_alive": 0}, False, "1 consumer thread(s) dead"),
        ({"database": False}, True, "could not reach PostgreSQL"),
        ({"schema": False, "schema_error": "revision 0005, expects 0006"}, True, "expects 0006"),
        ({"consumers": 0, "consumers_alive": 0}, True, "consumes no queue"),
    ],
)
def test_one_bad_process_fails_the_probe_it_concerns(
    tmp_path: Path, changes: dict[str, Any], live: bool, problem: str
) -> None:
    write_probe(tmp_path, probe(10))
    write_probe(tmp_path, probe(11, **changes))

    live_code, live_body = status(tmp_path, LIVE_PATH)
    ready_code, ready_body = status(tmp_path, READY_PATH)

    assert live_code == (200 if live else 503) and live_body["live"] is live
    assert ready_code == 503 and ready_body["status"] == "failing"
    bad = next(p for p in ready_body["processes"] if p["pid"] == 11)
    assert not bad["ready"] and any(problem in text for text in bad["problems"])


def test_no_process_yet_is_neither_live_nor_ready(tmp_path: Path) -> None:
    code, body = status(tmp_path, LIVE_PATH)
    assert code == 503 and "no worker process" in body["problems"][0]


@pytest.mark.parametrize(
    "content", ["not json", "[1, 2]", '{"pid": 12}', '{"pid": "x", "at": "soon"}']
)
def test_an_unreadable_probe_file_fails_with_its_name_never_an_error(
    tmp_path: Path, content: str
) -> None:
    write_probe(tmp_path, probe(10))
    (tmp_path / "probe-12.json").write_text(content)
    code, body = status(tmp_path, LIVE_PATH)
    assert code == 503 and "probe-12.json" in body["problems"][0]


def test_a_probe_with_wrong_types_is_unreadable(tmp_path: Path) -> None:
    bad = dict(probe(12))
    bad["at"] = "yesterday"
    (tmp_path / "probe-12.json").write_text(json.dumps(bad))
    code, body = status(tmp_path, LIVE_PATH)
    assert code == 503 and "at is not a number" in body["problems"][0]


def test_a_process_stopping_on_purpose_removes_its_probe(tmp_path: Path) -> None:
    write_probe(tmp_path, probe(10))
    write_probe(tmp_path, probe(11, at=NOW - 100))
    remove_probe(tmp_path, 11)
    assert status(tmp_path, LIVE_PATH)[0] == 200
