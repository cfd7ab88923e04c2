"""`python -m bench`: measure Taskyard beside bare Dramatiq, Celery and procrastinate.

`--smoke` runs every scenario once at tiny sizes (the test suite does this so the
harness never rots); without it, the sizes below, three runs each, and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import machine_cpu
from bench.env import REPO, BenchEnv, BenchError, machine, unreachable
from bench.procstat import TICK
from bench.report import Figure, render, write


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is."""

    runs: int
    # Jobs a throughput run drains: DB-writing, and no-op (about five times as fast).
    throughput: int
    throughput_noop: int
    send: int
    latency: int
    fairness_backlog: int
    fairness_probes: int
    # Fairness at scale: the noisy tenant counts, their backlog in all, B's probes (1/s).
    scale_tenants: tuple[int, ...]
    scale_backlog: int
    scale_probes: int
    tenants: int
    idle_seconds: float
    # Seconds a fresh worker gets to declare and subscribe to every queue before measuring.
    settle: float
    schedules: int
    due: int
    memory_small: int
    memory_large: int
    # Items of the ingest scenario's feed (and DB-writing jobs of its baseline).
    ingest: int
    # The job store: records in the filled `jobs` table, and real jobs run to count row versions.
    store_rows: int
    store_jobs: int
    # DB-writing jobs run while the store's expired day is dropped, and the seconds of
    # their jobs/s compared before and from the drop's start.
    store_drop_jobs: int
    # The records of the expired day the store drops (the pre-fill's, topped up).
    store_drop_rows: int
    store_drop_window: float
    # The soak: seconds, DB-writing jobs sent per second, the partitions' period in
    # seconds, the periods the records are kept, seconds between samples.
    soak_seconds: float
    soak_rate: int
    soak_period: float
    soak_keep: int
    soak_sample: float
    # The web console: records in the `jobs` table its pages are timed on (`--console-rows`).
    console_rows: int
    # The command line: cold calls of each command timed (their median is the figure).
    cli_calls: int


# The scenarios in the order they run (`--only` takes these names).
SCENARIOS = (
    "throughput",
    "send",
    "latency",
    "fairness",
    "fairness-scale",
    "scheduler",
    "tenant-scale",
    "memory",
    "ingest",
    "console",
    "cli",
    "store",
    "soak",
)
# The scenarios measured on the pre-filled `jobs` table (one fill a run, made before the
# first; `reset` keeps it): throughput, send, latency and `jobs list` on a
# production-sized table.
PREFILLED = frozenset({"throughput", "send", "latency", "cli", "store"})
# Where the time goes and what stands in the way of each target: written by hand
# from profiles, appended to the generated report.
ANALYSIS = Path(__file__).with_name("ANALYSIS.md")

# The sizes where they fit in about 15 minutes on 2 shared cores; the
# smaller ones are named in BENCHMARKS.md's notes.
FULL = Sizes(
    runs=3,
    throughput=2_000,
    throughput_noop=20_000,
    send=500,
    latency=400,
    fairness_backlog=10_000,
    fairness_probes=50,
    scale_tenants=(1, 10, 100, 1_000),
    scale_backlog=30_000,
    scale_probes=20,
    tenants=1_000,
    idle_seconds=20,
    settle=5,
    schedules=100_000,
    due=10_000,
    memory_small=10_000,
    memory_large=100_000,
    ingest=2_000,
    store_rows=10_000_000,
    store_jobs=2_000,
    store_drop_jobs=30_000,
    store_drop_rows=10_000_000,
    store_drop_window=5.0,
    soak_seconds=600,
    soak_rate=100,
    soak_period=60,
    soak_keep=3,
    soak_sample=10,
    console_rows=10_000_000,
    cli_calls=15,
)
SMOKE = Sizes(
    runs=1,
    throughput=40,
    throughput_noop=40,
    send=20,
    latency=20,
    fairness_backlog=40,
    fairness_probes=5,
    scale_tenants=(2,),
    scale_backlog=100,
    scale_probes=2,
    tenants=20,
    idle_seconds=1,
    settle=1,
    schedules=200,
    due=20,
    memory_small=20,
    memory_large=60,
    ingest=20,
    store_rows=20_000,
    store_jobs=40,
    store_drop_jobs=4_000,
    store_drop_rows=20_000,
    store_drop_window=0.5,
    soak_seconds=8,
    soak_rate=10,
    soak_period=2,
    soak_keep=1,
    soak_sample=1,
    console_rows=20_000,
    cli_calls=3,
)


def notes(sizes: Sizes, bulk_calls: int) -> list[str]:
    """What the reader must know to read the figures."""
    from bench import console  # imported once the bench's settings are exported

    return [
        "Every system runs in this one run, back to back per repetition: Taskyard as "
        "`dramatiq actors bench.taskyard_actors --processes 1 --threads 8` with all its "
        "middleware (tenant routing, job records, DB session, retry policy, outbox, "
        "dead letters); bare Dramatiq (`RabbitmqBroker`, default middleware); Celery 5 "
        "(threads pool, concurrency 8, `acks_late`); procrastinate 3 (concurrency 8).",
        f"The `jobs` table is pre-filled with {sizes.store_rows:,} records (the job store's "
        "fill, described below) once, before the first scenario, and every scenario runs on "
        "it: between runs only the bench's own records are deleted. `--only` pre-fills "
        "when it runs throughput, send, latency or the store; `--console-rows` of another "
        "size makes the console fill a table of its own size.",
        "Throughput counts from the first job's start to the last job's end as the worker "
        "saw them; the jobs are queued before the worker starts. Taskyard's last job record "
        "commits just after its body ends, a few ms not counted. What a worker still does "
        "once its first job has started (a process of its command still importing, a "
        "prefetch that grows once the queue is found busy) falls in that window; the "
        "backlogs are big enough for the steady rate to decide the figure, and the start "
        "itself is measured apart: each worker launched on empty queues, the seconds until "
        "its ready line and the CPU of its command's processes until they are quiet "
        "(under a fifth of a core for 0.1 s).",
        "Machine-wide CPU per job is counted over each throughput run's own drain window "
        "(the first job's start to the last job's end, as for its jobs/s): the CPU time "
        "(user + system, /proc/<pid>/stat) of the system's worker processes (its command "
        "and every process under it), of PostgreSQL (the postmaster and its children: "
        "backends, walwriter, checkpointer, background writer; not client backends of "
        "another database than the run's) and of the RabbitMQ node (beam.smp and the "
        "processes under it), divided by the jobs; the parts' medians are in the figure's "
        f"note. The harness reads /proc every {machine_cpu.INTERVAL * 1000:.0f} ms from "
        "before the worker starts and interpolates each process's CPU at the window's ends; "
        f"the kernel counts CPU in {1000 / TICK:.0f} ms ticks per process, so a short window "
        "(a small run, a fast system) is the less precise. Not counted: the harness itself "
        "(its readings take some 4-5 % of a core while each system runs), and the machine's other "
        "servers (Redis, MariaDB, NATS, Mosquitto) and processes. These still share its "
        "cores, and PostgreSQL's shared processes and the RabbitMQ node do work for any other "
        "client they have in the window: background noise in these figures. procrastinate "
        "uses no RabbitMQ: its RabbitMQ part is what the node did meanwhile for no one of "
        "this run, a gauge of that noise.",
        f"Sizes: throughput {sizes.throughput:,} DB-writing and {sizes.throughput_noop:,} "
        f"no-op jobs per run (procrastinate {sizes.throughput:,} of each); send "
        f"{sizes.send:,} messages (bulk: {bulk_calls} calls); latency {sizes.latency:,} "
        "probes at 200/s, after one unmeasured send that opens the producer's connections; "
        f"fairness A's backlog {sizes.fairness_backlog:,} and {sizes.fairness_probes} B jobs; "
        f"fairness at scale {sizes.scale_backlog:,} no-op jobs split among each N noisy tenants, "
        f"{sizes.scale_probes} B jobs one a second from when the worker is ready (only those "
        "sent before the backlog's last job ended count), run once, unacknowledged messages "
        "read from `rabbitmqctl list_channels` about once a second; memory "
        f"{sizes.memory_small:,} → {sizes.memory_large:,} jobs; tenant scale and memory "
        "run once. The harness queues Taskyard's backlogs with `send_many` (500 per "
        "call) and bare Dramatiq's with `send()`: queueing is set-up, not measured.",
        "Tenant scale and the scheduler have no peer that does the same thing; they are "
        "measured against the issue's bounds only.",
        f"The ingest: a {sizes.ingest:,}-item feed served over HTTP from the harness's "
        "process, timed from `ingest_resources.send()` to the ingest's row saying completed, "
        "with one worker process of 8 threads already running; its baseline is the "
        "DB-writing job's jobs/s measured in the same run as the throughput scenario does.",
        "The scheduler figure times the body of `scheduler_tick` (claim, outbox rows, "
        "commit, publish) in the harness's process, in a `taskyard_transaction`.",
        f"Job store: a `jobs` table of {sizes.store_rows:,} records made with one "
        "`INSERT ... SELECT generate_series` per million (1,000 tenants and 20 actors, both "
        "skewed, one scheduler tick a minute, 93 % succeeded, 2 % dead, 2 % queued, the rest "
        "retrying, cancelled, skipped or expired; ids minted as UUIDv7 at each record's "
        "creation time, so each record is in its day's partition; half the records on one "
        "day 32 days ago, past the 30 days of retention, as if the daily job had not dropped "
        "it yet, the other half over the last 30 days), its secondary indexes made after "
        "the fill, then VACUUM ANALYZE and a CHECKPOINT; the dead records' dead letters beside it. "
        "Each listing's figure is the median of 7 reads of its first page through the service "
        "the command calls (records loaded, not printed). Row versions per job: "
        f"pg_stat_user_tables' inserts + updates of `jobs` over {sizes.store_jobs:,} no-op jobs "
        "sent with send_many and run by one worker. Retention: last, the expired day is "
        f"first topped up to {sizes.store_drop_rows:,} records, the issue's period (detached, "
        "its indexes dropped, the records generated into it as the fill makes them, attached "
        "again, which makes its indexes, vacuumed); then, after a CHECKPOINT "
        "(an expired day's files are long on disk; the fill's were just written), "
        "`services.partitions.drop_expired` as the daily job calls it drops the expired day "
        "(and the empty day after it) while one worker process of 8 threads drains "
        f"{sizes.store_drop_jobs:,} DB-writing jobs queued before it started; the jobs/s "
        f"are of the jobs whose body ended in the {sizes.store_drop_window:g} s before the "
        "drop's start and in as many seconds from it (or the drop's time, if longer). The "
        "DROP's baseline: the filesystem removing as many bytes, in files of PostgreSQL's "
        "1 GiB segment size written and synced in the bench's scratch directory just before.",
        f"Soak: {sizes.soak_rate} DB-writing jobs a second sent for {sizes.soak_seconds:g} s "
        "to one worker process of 8 threads, with `jobs` partitioned by periods of "
        f"{sizes.soak_period:g} s (today's daily partitions dropped first) and the records "
        f"kept {sizes.soak_keep} periods: the harness makes the next periods' partitions "
        "and detaches and drops the expired ones once a period, with the daily job's own "
        "steps (`services.partitions.attach_range`, `drop_partition`). Every "
        f"{sizes.soak_sample:g} s it reads the `jobs` table's bytes (every partition with "
        "its TOAST and indexes), the jobs finished and the worker process's RSS; each "
        "slope is the least-squares line through the samples after the first retention "
        "cycle, and the change it makes over that window as a share of the mean.",
        f"Web console: a `jobs` table of {sizes.console_rows:,} records filled as the job "
        "store's (`--console-rows N` for another size, 10000000 for the issue's); an admin "
        "signed in. Server: each page's GET through Flask's test client, rendering included, "
        f"the median of {console.TIMED_RUNS} per run, each beside a GET of the console's "
        "style sheet (a static file) timed in the same loop. Browser: headless Chromium "
        "loads the main pages from the console served by waitress on 127.0.0.1 and reads "
        "first contentful paint and DOMContentLoaded from the Paint and Navigation Timing "
        f"APIs (from the navigation's start), the median of {console.BROWSER_LOADS} loads "
        "after one unmeasured, each beside the sign-in form (same layout, style and "
        "scripts, no query) loaded by a browser not signed in.",
        f"Command line: the median of {sizes.cli_calls} calls of each command, each a new "
        "process timed from its start to its exit, its output read; the commands are called "
        "in turn so that any drift of the machine hits all of them. `jobs list` reads the "
        "pre-filled table. The baseline is the interpreter's start (`python -c pass`) in "
        "the same loop; `through SQLAlchemy` is `jobs list` with its quick read declined "
        "(cli/quick.py), as on a database it cannot read quickly.",
    ]


def main(argv: list[str] | None = None) -> int:
    """Run every scenario and write the report."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run, no targets")
    parser.add_argument("--out", type=Path, help="where to write the report")
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        metavar="SCENARIO",
        help=f"run only this scenario (again for more): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--console-rows",
        type=int,
        metavar="N",
        help="job records the console's pages are timed on (10000000: the issue's size)",
    )
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.console_rows is not None:
        if args.console_rows < 1:
            parser.error("--console-rows takes a whole number from 1")
        sizes = dataclasses.replace(sizes, console_rows=args.console_rows)
    out = args.out or (REPO / "BENCHMARKS.md")
    problems = unreachable()
    if problems:
        for problem in problems:
            print(f"python -m bench: {problem}", file=sys.stderr)
        return 2
    env = BenchEnv(Path(tempfile.mkdtemp(prefix="taskyard-bench-")))
    env.export()
    # Imported only now: Taskyard reads its settings when its broker is built.
    from bench import (
        cli_start,
        console,
        fairness,
        fairness_scale,
        ingest,
        latency,
        memory,
        scheduler,
        send,
        soak,
        store,
        tenant_scale,
        throughput,
    )
    from bench.systems import BareDramatiq, Celery, Procrastinate, Taskyard, all_queues, engine_of

    taskyard, dramatiq = Taskyard(env), BareDramatiq(env)
    procrastinate = Procrastinate(env)
    peers = [taskyard, dramatiq, Celery(env), procrastinate]
    started = time.monotonic()
    figures: list[Figure] = []
    failures: list[str] = []
    command = "python -m bench" + (" --smoke" if args.smoke else "")
    command += "".join(f" --only {name}" for name in args.only or [])
    if args.console_rows is not None:
        command += f" --console-rows {args.console_rows}"
    if args.out:
        command += f" --out {shlex.quote(str(args.out))}"
    # The analysis is of a full run's figures: not appended to a partial one.
    partial = [f"Only the scenarios asked for ran: {', '.join(args.only)}."] if args.only else []

    def step(name: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {name}", file=sys.stderr, flush=True)

    def report(info: dict[str, str], *, finished: bool) -> None:
        # Written after every scenario, so a run stopped half-way still leaves its figures.
        extra = (
            []
            if finished
            else ["Run not finished: the scenarios below the last table did not run."]
        )
        text = render(
            figures,
            machine=info,
            command=command,
            date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
            runs=sizes.runs,
            smoke=args.smoke,
            notes=[*extra, *partial, *notes(sizes, send.BULK_CALLS), *failures],
        )
        if not args.smoke and not args.only and ANALYSIS.exists():
            text += "\n" + ANALYSIS.read_text()
        write(out, text)

    scenarios: list[tuple[str, Callable[[], list[Figure]]]] = [
        (
            "throughput",
            lambda: [
                *throughput.run(
                    peers,
                    count=sizes.throughput,
                    noop_count=sizes.throughput_noop,
                    runs=sizes.runs,
                    two_processes=not args.smoke,
                ),
                *throughput.startup(peers, runs=sizes.runs),
            ],
        ),
        ("send", lambda: send.run(taskyard, dramatiq, count=sizes.send, runs=sizes.runs)),
        (
            "latency",
            # The smoke run keeps near a minute: the peers' latency only in the full run.
            lambda: latency.run(
                [taskyard, dramatiq] if args.smoke else peers, count=sizes.latency, runs=sizes.runs
            ),
        ),
        (
            "fairness",
            lambda: fairness.run(
                taskyard,
                dramatiq,
                backlog=sizes.fairness_backlog,
                probes=sizes.fairness_probes,
                runs=sizes.runs,
            ),
        ),
        (
            "fairness scale",
            lambda: fairness_scale.run(
                taskyard,
                dramatiq,
                tenants=sizes.scale_tenants,
                backlog=sizes.scale_backlog,
                probes=sizes.scale_probes,
            ),
        ),
        (
            "scheduler",
            lambda: scheduler.run(taskyard, total=sizes.schedules, due=sizes.due, runs=sizes.runs),
        ),
        (
            "tenant scale",
            lambda: tenant_scale.run(
                taskyard,
                tenants=sizes.tenants,
                idle_seconds=sizes.idle_seconds,
                settle=sizes.settle,
            ),
        ),
        (
            "memory",
            lambda: memory.run(
                [taskyard, dramatiq], small=sizes.memory_small, large=sizes.memory_large
            ),
        ),
        ("ingest", lambda: ingest.run(taskyard, count=sizes.ingest, runs=sizes.runs)),
        (
            # Before the store: a fill of another size (`--console-rows`) replaces the
            # pre-fill, and the store's own fill makes it again.
            "console",
            lambda: console.run(env.database_url, rows=sizes.console_rows, runs=sizes.runs),
        ),
        ("cli", lambda: cli_start.run(calls=sizes.cli_calls)),
        (
            # Last but the soak: it drops the pre-fill's expired day.
            "store",
            lambda: store.run(
                taskyard,
                rows=sizes.store_rows,
                jobs=sizes.store_jobs,
                retention_days=30,
                drop_jobs=sizes.store_drop_jobs,
                drop_rows=sizes.store_drop_rows,
                drop_window=sizes.store_drop_window,
            ),
        ),
        (
            # After the store: it replaces today's partition with periods of its own.
            "soak",
            lambda: soak.run(
                taskyard,
                seconds=sizes.soak_seconds,
                rate=sizes.soak_rate,
                period=sizes.soak_period,
                keep=sizes.soak_keep,
                sample=sizes.soak_sample,
            ),
        ),
    ]
    try:
        step("setting up the bench database")
        taskyard.setup()
        procrastinate.setup()
        info = machine()
        if not args.only or set(args.only) & PREFILLED:
            step(f"pre-filling the jobs table with {sizes.store_rows:,} records")
            store.fill(engine_of(env), sizes.store_rows)
            taskyard.keep_records()
        for name, scenario in scenarios:
            if args.only and name.replace(" ", "-") not in args.only:
                continue
            step(name)
            # The records a scenario left go: the store's and the console's fills find the
            # pre-fill alone, and reuse it.
            taskyard.reset()
            try:
                figures.extend(scenario())
            except BenchError as exc:
                # One scenario that cannot measure does not cost the others their figures.
                failures.append(f"Scenario {name} failed: {str(exc).splitlines()[0]}")
                step(failures[-1])
            report(info, finished=False)
    finally:
        step("cleaning up queues and the database")
        try:
            env.delete_queues(all_queues(peers))
        finally:
            engine_of(env).dispose()
            env.drop_database()
    report(info, finished=True)
    step(f"wrote {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
