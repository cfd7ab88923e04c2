"""The worker-start figures: seconds to the ready line, CPU of every process until settled."""

from __future__ import annotations

from typing import cast

import pytest

from bench import throughput
from bench.env import BenchError
from bench.report import ratio
from bench.systems import System


class FakeWorker:
    def __init__(self, owner: FakeSystem, tag: str) -> None:
        self.owner, self.tag = owner, tag
        self.stopped = False

    def wait_ready(self, marker: str) -> None:
        assert marker == self.owner.ready
        self.owner.clock[0] += self.owner.ready_after

    def wait_settled(self, timeout: float) -> bool:
        return self.owner.settles

    def pids(self) -> list[int]:
        return list(self.owner.cpu)

    def stop(self) -> None:
        self.stopped = True


class FakeSystem:
    def __init__(
        self, name: str, ready_after: float, cpu: dict[int, float], clock: list[float]
    ) -> None:
        self.name, self.ready, self.ready_after, self.cpu = name, f"{name} ready", ready_after, cpu
        self.clock = clock
        self.settles = True
        self.resets = 0
        self.workers: list[FakeWorker] = []

    def reset(self) -> None:
        self.resets += 1

    def launch(self, tag: str, processes: int = 1) -> FakeWorker:
        worker = FakeWorker(self, tag)
        self.workers.append(worker)
        return worker


def _systems(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeSystem, FakeSystem]:
    clock = [100.0]
    taskyard = FakeSystem("taskyard", 0.75, {11: 0.06, 12: 0.5, 13: 0.25}, clock)
    dramatiq = FakeSystem("dramatiq", 0.5, {21: 0.05, 22: 0.2}, clock)
    cpu = {**taskyard.cpu, **dramatiq.cpu}
    monkeypatch.setattr(throughput, "cpu_or_zero", lambda pid: cpu[pid])
    monkeypatch.setattr(throughput.time, "monotonic", lambda: clock[0])
    return taskyard, dramatiq


def test_each_system_reports_its_ready_time_and_every_processes_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    taskyard, dramatiq = _systems(monkeypatch)
    systems = cast(list[System], [taskyard, dramatiq])
    figures = throughput.startup(systems, runs=2)
    by = {(f.what.split(",")[0], f.system): f for f in figures}
    assert set(by) == {
        (what, name)
        for what in ("launch → ready", "CPU of the command's processes")
        for name in ("taskyard", "dramatiq")
    }
    assert all(f.scenario == throughput.START_SCENARIO for f in figures)
    assert by[("launch → ready", "taskyard")].values == pytest.approx([0.75, 0.75])
    assert by[("launch → ready", "dramatiq")].values == pytest.approx([0.5, 0.5])
    # Every process of the command counts: the main one, the worker, the metrics fork.
    assert by[("CPU of the command's processes", "taskyard")].values == pytest.approx([0.81] * 2)
    assert by[("CPU of the command's processes", "dramatiq")].values == pytest.approx([0.25] * 2)
    taskyard_cpu = by[("CPU of the command's processes", "taskyard")]
    assert ratio(taskyard_cpu, figures) == pytest.approx(0.81 / 0.25)
    assert not taskyard_cpu.higher_is_better
    # Each run starts on emptied queues, and every worker is stopped.
    assert taskyard.resets == dramatiq.resets == 2
    assert all(w.stopped for w in [*taskyard.workers, *dramatiq.workers])


def test_a_worker_that_never_settles_is_an_error_and_is_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    taskyard, dramatiq = _systems(monkeypatch)
    dramatiq.settles = False
    with pytest.raises(BenchError, match="dramatiq's worker was still busy"):
        throughput.startup(cast(list[System], [taskyard, dramatiq]), runs=1)
    assert dramatiq.workers[0].stopped
