"""Machine-wide CPU per job: /proc read from a small fake one, and the window's arithmetic.

Nothing here is timed: the processes are files, the samples are made up.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from bench import machine_cpu, procstat, throughput
from bench.env import BenchEnv
from bench.machine_cpu import (
    POSTGRESQL,
    RABBITMQ,
    WORKERS,
    Key,
    Reader,
    Sample,
    Sampler,
    SamplerError,
    parts_note,
    per_job_ms,
    serves_other_database,
    window_cpu,
)
from bench.procstat import TICK, Stat, descendants, parse_stat, read_stat
from bench.report import verdict
from bench.systems import BareDramatiq, Celery, Procrastinate, System, Taskyard

# The fields after the name in a real /proc/<pid>/stat line: state, ppid, ... utime (at 14),
# stime, cutime, cstime, ... starttime (at 22), ...
_STAT = (
    "{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194304 101 0 0 0 {utime} {stime} {cutime} "
    "{cstime} 20 0 {threads} 0 {started} 3133440 413 18446744073709551615 0 0 0 0 0 0 0 0 0 17"
)


def fake_process(
    proc: Path,
    pid: int,
    comm: str,
    *,
    ppid: int = 1,
    ticks: tuple[int, int] = (0, 0),
    children: dict[int, list[int]] | None = None,
    cmdline: str | None = None,
    started: int = 1_000,
    reaped_ticks: int = 0,
) -> None:
    """One process directory: stat, comm, cmdline and each thread's children."""
    threads = children or {pid: []}
    base = proc / str(pid)
    for tid, kids in threads.items():
        (base / "task" / str(tid)).mkdir(parents=True)
        (base / "task" / str(tid) / "children").write_text("".join(f"{k} " for k in kids))
    (base / "stat").write_text(
        _STAT.format(
            pid=pid,
            comm=comm,
            ppid=ppid,
            utime=ticks[0],
            stime=ticks[1],
            cutime=reaped_ticks,
            cstime=reaped_ticks,
            threads=len(threads),
            started=started,
        )
        + "\n"
    )
    (base / "comm").write_text(comm[:15] + "\n")
    (base / "cmdline").write_bytes((cmdline or comm).replace(" ", "\0").encode() + b"\0")


# -- reading /proc --------------------------------------------------------------------------


def test_stat_is_utime_plus_stime_and_start_past_a_name_with_spaces_and_parentheses(
    tmp_path: Path,
) -> None:
    # Given a process whose name holds ") (" and whose reaped children used CPU too
    fake_process(tmp_path, 42, "odd) (name", ppid=7, ticks=(150, 50), started=777, reaped_ticks=900)
    # When its stat is read
    stat = read_stat(42, tmp_path)
    # Then the fields are the ones after the name's last ")", and the children's are not added
    assert stat is not None
    assert (stat.pid, stat.comm, stat.ppid, stat.started) == (42, "odd) (name", 7, 777)
    assert stat.cpu == pytest.approx(200 / TICK)


def test_a_gone_process_reads_as_none(tmp_path: Path) -> None:
    assert read_stat(99, tmp_path) is None


def test_parse_stat_of_this_process() -> None:
    stat = parse_stat(Path("/proc/self/stat").read_text())
    assert stat.ppid > 0 and stat.cpu >= 0 and stat.started > 0


def test_descendants_are_every_threads_children_and_their_children(tmp_path: Path) -> None:
    # Given a root whose two threads each forked a child, one of which forked again
    fake_process(tmp_path, 10, "root", children={10: [11], 12: [13]})
    fake_process(tmp_path, 11, "child", ppid=10, children={11: [14]})
    fake_process(tmp_path, 13, "child", ppid=10)
    fake_process(tmp_path, 14, "grandchild", ppid=11)
    fake_process(tmp_path, 20, "stranger")
    # Then its descendants are all three generations below it, and no one else
    assert sorted(descendants(10, tmp_path)) == [11, 13, 14]
    assert descendants(14, tmp_path) == []


@pytest.mark.parametrize(
    ("title", "other"),
    [
        ("postgres: 15/main: postgres taskyard_bench_ab 127.0.0.1(5678) idle", False),
        ("postgres: 15/main: postgres taskyard_test_cd 127.0.0.1(5678) INSERT", True),
        ("postgres: alice shop [local] idle in transaction", True),
        ("postgres: alice taskyard_bench_ab [local] idle", False),
        ("postgres: 15/main: walwriter", False),
        ("postgres: 15/main: logical replication launcher", False),
        ("postgres: 15/main: background writer", False),
        ("postgres: 15/main: autovacuum worker", False),
        ("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", False),
    ],
)
def test_only_client_backends_of_other_databases_serve_someone_else(
    title: str, other: bool
) -> None:
    assert serves_other_database(title, "taskyard_bench_ab") is other


def _machine(proc: Path) -> None:
    """A machine like the bench's: a worker, PostgreSQL, RabbitMQ and servers that are not ours."""
    # The harness (not counted) and the worker it started: the command and its two children
    fake_process(proc, 5, "python", ticks=(9_000, 0), children={5: [100]})
    fake_process(proc, 100, "dramatiq", ppid=5, ticks=(30, 10), children={100: [101, 102]})
    fake_process(proc, 101, "dramatiq", ppid=100, ticks=(200, 20), children={101: [], 103: []})
    fake_process(proc, 102, "python", ppid=100, ticks=(5, 0))
    # PostgreSQL: its own processes, a backend of the run's database, one of another, one
    # just forked (still with the postmaster's title); its reaped children's CPU not counted
    postmaster = "/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main"
    fake_process(
        proc,
        200,
        "postgres",
        ticks=(3, 1),
        children={200: [201, 202, 203, 204]},
        cmdline=postmaster,
        reaped_ticks=5_000,
    )
    fake_process(
        proc, 201, "postgres", ppid=200, ticks=(7, 0), cmdline="postgres: 15/main: walwriter"
    )
    mine = "postgres: 15/main: postgres taskyard_bench_ab 127.0.0.1(40000) idle"
    fake_process(proc, 202, "postgres", ppid=200, ticks=(40, 10), cmdline=mine)
    theirs = "postgres: 15/main: postgres taskyard_test_cd 127.0.0.1(40002) idle"
    fake_process(proc, 203, "postgres", ppid=200, ticks=(800, 0), cmdline=theirs)
    fake_process(proc, 204, "postgres", ppid=200, ticks=(1, 0), cmdline=postmaster)
    # RabbitMQ's node and the processes under it; another Erlang node that is not RabbitMQ
    fake_process(
        proc,
        300,
        "beam.smp",
        ticks=(60, 20),
        children={300: [], 305: [301]},
        cmdline="/usr/lib/erlang/erts-13.1.5/bin/beam.smp -W w -- -s rabbit boot",
    )
    fake_process(proc, 301, "erl_child_setup", ppid=300, ticks=(1, 0), children={301: [302]})
    fake_process(proc, 302, "inet_gethost", ppid=301, ticks=(2, 0))
    fake_process(proc, 400, "beam.smp", ticks=(500, 0), cmdline="beam.smp -- -s couch")
    # The machine's other servers
    fake_process(proc, 500, "redis-server", ticks=(700, 0))
    fake_process(proc, 501, "mariadbd", ticks=(700, 0))
    fake_process(proc, 502, "nats-server", ticks=(700, 0))
    fake_process(proc, 503, "mosquitto", ticks=(700, 0))


def test_reader_counts_the_worker_tree_postgresql_and_rabbitmq_and_nothing_else(
    tmp_path: Path,
) -> None:
    # Given the machine, and a reader for the run's database watching the worker's command
    _machine(tmp_path)
    reader = Reader("taskyard_bench_ab", tmp_path)
    reader.watch(100)
    # When it reads
    read = reader.read()
    # Then each process of the three parts is there once, in its part, and no other
    parts = {pid: part for (pid, _), (part, _) in read.items()}
    assert parts == {
        100: WORKERS,
        101: WORKERS,
        102: WORKERS,
        200: POSTGRESQL,
        201: POSTGRESQL,
        202: POSTGRESQL,
        204: POSTGRESQL,
        300: RABBITMQ,
        301: RABBITMQ,
        302: RABBITMQ,
    }
    cpu = {part: 0.0 for part in machine_cpu.PARTS}
    for part, seconds in read.values():
        cpu[part] += seconds
    assert cpu == pytest.approx({WORKERS: 265 / TICK, POSTGRESQL: 62 / TICK, RABBITMQ: 83 / TICK})


def test_a_backend_that_got_its_title_since_the_last_reading_is_judged_again(
    tmp_path: Path,
) -> None:
    # Given a backend read while it still had the postmaster's title
    _machine(tmp_path)
    reader = Reader("taskyard_bench_ab", tmp_path)
    assert any(pid == 204 for pid, _ in reader.read())
    # When it names another database by the next reading
    theirs = "postgres: 15/main: postgres taskyard_test_cd 127.0.0.1(40004) idle"
    (tmp_path / "204" / "cmdline").write_bytes(theirs.replace(" ", "\0").encode())
    # Then it is no longer counted
    assert not any(pid == 204 for pid, _ in reader.read())


def test_between_walks_only_the_processes_found_are_read_and_a_reused_pid_is_not_them(
    tmp_path: Path,
) -> None:
    # Given the machine read once before the worker started, and once since, without a walk
    _machine(tmp_path)
    reader = Reader("taskyard_bench_ab", tmp_path)
    assert {part for part, _ in reader.read().values()} == {POSTGRESQL, RABBITMQ}
    reader.watch(100)
    # Then the worker's processes are read from the first reading after it is watched
    assert {(100, 1_000), (101, 1_000), (102, 1_000)} <= set(reader.read(discover=False))
    # When the worker forks another process, and pid 102 ends and is used again by another
    fake_process(tmp_path, 104, "dramatiq", ppid=100, ticks=(9, 0))
    (tmp_path / "100" / "task" / "100" / "children").write_text("101 102 104 ")
    (tmp_path / "102" / "stat").write_text(
        (tmp_path / "102" / "stat").read_text().replace(" 1000 ", " 4000 ")
    )
    # Then a reading without a walk has neither, and the next walk finds both
    between = {pid for pid, _ in reader.read(discover=False)}
    assert 104 not in between and 102 not in between and 101 in between
    after = set(reader.read())
    assert (104, 1_000) in after and (102, 4_000) in after
    # And each process read has its start on the clock of time.time()
    assert reader.born[(102, 4_000)] - reader.born[(102, 1_000)] == pytest.approx(3_000 / TICK)


def test_a_worker_watched_while_a_reading_runs_does_not_break_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a reading during which the harness's thread starts watching the worker
    _machine(tmp_path)
    reader = Reader("taskyard_bench_ab", tmp_path)
    reads: list[int] = []

    def read_stat(pid: int, proc: Path) -> Stat | None:
        if not reads:
            reader.watch(100)
        reads.append(pid)
        return procstat.read_stat(pid, proc)

    monkeypatch.setattr(machine_cpu, "read_stat", read_stat)
    # When it reads, then reads again without walking
    during = reader.read()
    after = reader.read(discover=False)
    # Then the first reading is of the processes it had found, the next one has the worker's
    assert {part for part, _ in during.values()} == {POSTGRESQL, RABBITMQ}
    assert {part for part, _ in after.values()} == set(machine_cpu.PARTS)


class _Counting(Reader):
    """A reader of one process whose CPU grows by a second per reading."""

    def __init__(self) -> None:
        self.walks: list[bool] = []

    def read(self, discover: bool = True) -> dict[Key, tuple[str, float]]:
        self.walks.append(discover)
        return {(1, 1): (WORKERS, float(len(self.walks)))}


def test_sampler_reads_and_walks_at_start_and_at_stop_and_stops_once() -> None:
    # Given a sampler whose interval is far longer than the test
    reader = _Counting()
    sampler = Sampler(reader, interval=3_600)
    # When it starts and stops, twice over
    sampler.start()
    samples = sampler.stop()
    again = sampler.stop()
    # Then it read once at each end, in order, walking the trees, and the second stop read nothing
    assert [s.cpu[(1, 1)][1] for s in samples] == [1.0, 2.0]
    assert samples[0].at <= samples[1].at
    assert again is samples and reader.walks == [True, True]


class _Failing(Reader):
    """A reader whose readings fail from the `fails`-th on."""

    def __init__(self, fails: int) -> None:
        self.readings = 0
        self.fails = fails

    def read(self, discover: bool = True) -> dict[Key, tuple[str, float]]:
        self.readings += 1
        if self.readings >= self.fails:
            raise OSError(f"no /proc at reading {self.readings}")
        return {}


def test_a_failed_reading_on_the_samplers_thread_is_raised_by_stop() -> None:
    # Given a sampler whose thread's first reading fails (which ends the thread)
    sampler = Sampler(_Failing(fails=2), interval=0)
    sampler.start()
    sampler._thread.join(timeout=60)
    # Then closing it is quiet, and asking for its samples says why there are none to trust
    sampler.close()
    with pytest.raises(SamplerError, match="no /proc at reading 2"):
        sampler.stop()


def test_a_failed_last_reading_is_raised_by_stop_not_by_close() -> None:
    # Given a sampler whose last reading fails (its thread never read: the interval is long)
    sampler = Sampler(_Failing(fails=2), interval=3_600)
    sampler.start()
    # Then closing it is quiet (it runs on the way out of a failed run), stop is not
    sampler.close()
    with pytest.raises(SamplerError, match="no /proc at reading 2"):
        sampler.stop()


# -- the window's arithmetic --------------------------------------------------------------


def _samples(*rows: tuple[float, dict[Key, tuple[str, float]]]) -> list[Sample]:
    return [Sample(at, cpu) for at, cpu in rows]


def test_window_takes_each_processs_cpu_between_the_samples_around_its_ends() -> None:
    # Given a worker that used 1 s of CPU by t=10, 2 s by t=11 and 4 s by t=12
    samples = _samples(
        (10.0, {(1, 5): (WORKERS, 1.0), (2, 5): (RABBITMQ, 0.5)}),
        (11.0, {(1, 5): (WORKERS, 2.0), (2, 5): (RABBITMQ, 0.5)}),
        (12.0, {(1, 5): (WORKERS, 4.0), (2, 5): (RABBITMQ, 0.7)}),
    )
    # When the window runs from t=10.5 to t=11.5
    cpu = window_cpu(samples, 10.5, 11.5)
    # Then the worker used 3.0 - 1.5 s, RabbitMQ 0.6 - 0.5 s, PostgreSQL nothing
    assert cpu == pytest.approx({WORKERS: 1.5, POSTGRESQL: 0.0, RABBITMQ: 0.1})


def test_window_counts_a_process_born_and_one_ended_in_it_and_tells_a_reused_pid_apart() -> None:
    # Given a backend (pid 7) that ended after t=1, and a new one that took its pid at t=2
    samples = _samples(
        (0.0, {(7, 100): (POSTGRESQL, 1.0)}),
        (1.0, {(7, 100): (POSTGRESQL, 1.2)}),
        (2.0, {(7, 900): (POSTGRESQL, 0.3)}),
        (3.0, {(7, 900): (POSTGRESQL, 0.4)}),
    )
    # When the window is the whole run
    cpu = window_cpu(samples, 0.0, 3.0)
    # Then the old one counts 0.2 s (its last reading stays), the new one all of its 0.4 s
    assert cpu[POSTGRESQL] == pytest.approx(0.6)
    # And from t=0.5: the new one's CPU is spread from the reading before its first (t=1)
    assert window_cpu(samples, 0.5, 1.5)[POSTGRESQL] == pytest.approx(0.1 + 0.15)


def test_window_counts_a_process_found_late_from_when_it_started() -> None:
    # Given a backend started at t=1.5 and first read (the trees walked again) at t=3
    samples = _samples(
        (0.0, {}),
        (1.0, {}),
        (2.0, {}),
        (3.0, {(8, 50): (POSTGRESQL, 0.6)}),
        (4.0, {(8, 50): (POSTGRESQL, 0.8)}),
    )
    # Then its CPU rose from 0 at its start: by t=2.5 it was 0.4 s
    assert window_cpu(samples, 2.5, 4.0, {(8, 50): 1.5})[POSTGRESQL] == pytest.approx(0.4)
    # And a start said to be before the first sample counts from the first sample
    assert window_cpu(samples, 0.0, 4.0, {(8, 50): -9.0})[POSTGRESQL] == pytest.approx(0.8)
    # And without its start, from the sample before its first reading
    assert window_cpu(samples, 2.5, 4.0)[POSTGRESQL] == pytest.approx(0.5)


@pytest.mark.parametrize(("start", "end"), [(-0.1, 1.0), (0.5, 2.1), (1.5, 0.5)])
def test_a_window_the_samples_do_not_span_is_refused(start: float, end: float) -> None:
    samples = _samples((0.0, {(1, 1): (WORKERS, 0.0)}), (2.0, {(1, 1): (WORKERS, 1.0)}))
    with pytest.raises(ValueError, match="do not span"):
        window_cpu(samples, start, end)


def test_no_samples_is_refused() -> None:
    with pytest.raises(ValueError):
        window_cpu([], 0.0, 0.0)


def test_per_job_is_milliseconds_per_job_of_each_part() -> None:
    assert per_job_ms({WORKERS: 1.5, POSTGRESQL: 0.25}, 500) == pytest.approx(
        {WORKERS: 3.0, POSTGRESQL: 0.5}
    )
    with pytest.raises(ValueError):
        per_job_ms({WORKERS: 1.0}, 0)


def test_parts_note_is_each_parts_median() -> None:
    note = parts_note({WORKERS: [1.0, 5.0, 2.0], POSTGRESQL: [0.5], RABBITMQ: []})
    assert note == "worker processes 2.00, PostgreSQL 0.50 ms: medians"
    assert parts_note({}) == ""


# -- the figures of the throughput scenario ---------------------------------------------------


def test_throughput_reports_cpu_per_job_in_its_own_table_with_the_no_op_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given every system's runs measured (made up): Taskyard's no-op 2.5x bare Dramatiq's CPU
    env = cast(BenchEnv, None)
    systems: list[System] = [Taskyard(env), BareDramatiq(env), Celery(env), Procrastinate(env)]
    per_job = {"taskyard": 2.0, "dramatiq": 1.0, "celery": 1.5, "procrastinate": 4.0}
    runs: list[tuple[str, str, int]] = []
    counts: set[tuple[str, str, int]] = set()

    def measure(
        system: System, kind: str, count: int, *, processes: int = 1, tag: str
    ) -> throughput.Drained:
        runs.append((system.name, kind, processes))
        counts.add((system.name, kind, count))
        ms = per_job[system.name] * (1.25 if kind == "noop" and system.name == "taskyard" else 1)
        parts = {WORKERS: ms * 0.6, POSTGRESQL: ms * 0.3, RABBITMQ: ms * 0.1}
        return throughput.Drained(rate=1_000 / ms, cpu_ms=parts)

    monkeypatch.setattr(throughput, "measure", measure)
    # When the scenario runs twice, with two worker processes too
    figures = throughput.run(systems, count=100, noop_count=1_000, runs=2, two_processes=True)
    # Then the CPU figures are a table of their own, one per system, kind and worker count
    cpu = [f for f in figures if f.scenario == throughput.CPU_SCENARIO]
    rates = [f for f in figures if f.scenario == throughput.SCENARIO]
    assert [(f.what, f.system) for f in cpu] == [(f.what, f.system) for f in rates]
    assert len(cpu) == 12 and all(f.unit == "CPU ms/job" for f in cpu)
    assert all(len(f.values) == 2 for f in cpu)
    # And each is the parts' sum per job, with the parts' medians in its note
    by = {(f.what, f.system): f for f in cpu}
    noop = by[("no-op job", "taskyard")]
    assert noop.values == pytest.approx([2.5, 2.5])
    assert noop.note == "worker processes 1.50, PostgreSQL 0.75, RabbitMQ 0.25 ms: medians"
    # And only Taskyard's no-op with one worker process has a target, ≤ 2x bare Dramatiq's
    targets = {k: f.ratio_at_most for k, f in by.items() if f.ratio_at_most is not None}
    assert targets == {("no-op job", "taskyard"): 2.0}
    assert verdict(noop, figures, smoke=False) == "missed (target ≤ 2.0x)"
    assert verdict(by[("DB-writing job", "taskyard")], figures, smoke=False) == ""
    # And procrastinate ran with one worker process only
    assert ("procrastinate", "noop", 2) not in runs and ("taskyard", "noop", 2) in runs
    # And each drained its kind's backlog, but procrastinate the DB-writing size of both
    assert counts == {
        *((name, "write_row", 100) for name in per_job),
        *((name, "noop", 1_000) for name in ("taskyard", "dramatiq", "celery")),
        ("procrastinate", "noop", 100),
    }
