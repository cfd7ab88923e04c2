"""The benchmark harness at tiny sizes: every scenario runs and reports, nothing is left behind.

Never a timed test: it asserts that each figure was measured, not how fast.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support import PG_SERVER_URL, REPO, require_servers

pytestmark = pytest.mark.integration

# (scenario heading starts with, figure starts with, system) of every figure a smoke run gives.
EXPECTED = [
    *[
        ("1-2. Throughput", job, system)
        for job in ("DB-writing job", "no-op job")
        for system in ("taskyard", "dramatiq", "celery", "procrastinate")
    ],
    *[
        ("1-2. Worker start", what, system)
        for what in ("launch → ready", "CPU of the command's processes")
        for system in ("taskyard", "dramatiq", "celery", "procrastinate")
    ],
    ("3. Send", "actor.send() with confirms", "taskyard"),
    ("3. Send", "actor.send() with confirms", "dramatiq-confirms"),
    ("3. Send", "actor.send() with confirms", "dramatiq"),
    ("3. Send", "bulk send", "taskyard"),
    *[("4. Latency", p, s) for p in ("p50", "p99") for s in ("taskyard", "dramatiq")],
    ("5. Fairness", "B's p99 start delay", "taskyard"),
    ("5. Fairness", "B's p99 start delay", "dramatiq"),
    ("6. Tenant scale", "AMQP connections", "taskyard"),
    ("6. Tenant scale", "threads", "taskyard"),
    ("6. Tenant scale", "RSS", "taskyard"),
    ("6. Tenant scale", "new tenant", "taskyard"),
    ("7. Scheduler", "200 schedules, 20 due", "taskyard"),
    *[("8. Memory", f"RSS after {n} jobs", s) for n in (20, 60) for s in ("taskyard", "dramatiq")],
    *[("9. Ingest", "feed items/s", s) for s in ("taskyard DB-writing job", "taskyard ingest")],
    *[
        ("13. Command line", what, system)
        for what in ("taskyard --help", "taskyard jobs list")
        for system in ("taskyard", "python -c pass")
    ],
    ("13. Command line", "taskyard jobs list", "taskyard, through SQLAlchemy"),
    ("10. Job store: first page", "jobs list (20,000 records)", "taskyard"),
    ("10. Job store: first page", "dead-letters list (20,000 records)", "taskyard"),
    ("10. Job store: first page", "health: last scheduler tick", "taskyard"),
    ("10. Job store", "storage per job", "taskyard"),
    ("10. Job store", "row versions per job", "taskyard"),
    ("10. Job store", "retention: drop an expired day", "taskyard"),
    ("10. Job store", "DB-writing jobs/s", "taskyard during the drop"),
    *[
        ("12. Web console", f"{what}: {page}", system)
        for what, system in (
            ("server", "taskyard"),
            ("server", "a static file's GET"),
            ("first paint", "taskyard"),
            ("first paint", "the sign-in form"),
            ("DOMContentLoaded", "taskyard"),
        )
        for page in ("jobs", "one job", "tenants")
    ],
    # The RabbitMQ readings the overview and the tenants page load after themselves.
    ("12. Web console", "server: tenants: their counts and queues (after the page)", "taskyard"),
    ("12. Web console", "server: overview: queues holding messages (after the page)", "taskyard"),
]
# Figures that may be 0 or below (a slope), but must be there.
SIGNED = [
    ("11. Soak", f"{what}: slope", "taskyard")
    for what in ("jobs table size", "throughput", "worker RSS")
]
# Over the throughput runs' drain windows: worker processes, PostgreSQL and RabbitMQ together.
CPU_TABLE = "1-2. Machine-wide CPU per job"
SYSTEMS = ("taskyard", "dramatiq", "celery", "procrastinate")
ROW = re.compile(r"^\| (?P<figure>[^|]+) \| (?P<system>[^|]+) \| (?P<median>[^|]+) \|")


def _bench_databases() -> set[str]:
    engine = create_engine(f"{PG_SERVER_URL}/postgres")
    with engine.connect() as conn:
        names = conn.scalars(
            text("SELECT datname FROM pg_database WHERE datname LIKE 'taskyard_bench_%'")
        )
        found = set(names)
    engine.dispose()
    return found


def _rows(report: str) -> list[tuple[str, str, str, str]]:
    rows, scenario = [], ""
    for line in report.splitlines():
        if line.startswith("## "):
            scenario = line[3:]
        match = ROW.match(line)
        if match and match["figure"] != "figure" and not match["figure"].startswith("---"):
            rows.append(
                (scenario, match["figure"], match["system"].strip(), match["median"].strip())
            )
    return rows


def _run_module(args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m ARGS` from the repo, without this run's TASKYARD_* settings."""
    return _run_python(["-m", *args], timeout=timeout)


def _run_python(args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python ARGS` from the repo, without this run's TASKYARD_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKYARD_")}
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(300)
def test_smoke_run_measures_every_figure_and_cleans_up(tmp_path: Path) -> None:
    # Given the real RabbitMQ and PostgreSQL
    require_servers()
    before = _bench_databases()
    out = tmp_path / "BENCHMARKS.md"

    # When the harness runs at smoke size
    done = _run_module(["bench", "--smoke", "--out", str(out)], timeout=280)

    # Then it wrote a report with every figure measured (a number above zero)
    assert done.returncode == 0, done.stderr[-4000:]
    report = out.read_text()
    assert "Smoke run" in report
    assert "- Command: `python -m bench --smoke" in report
    # And every scenario ran on the one pre-fill: the store's own fill found it whole
    assert "pre-filling the jobs table with 20,000 records" in done.stderr
    assert "store: checkpoint after the fill:" in done.stderr
    assert "store: jobs already holds 20,000 records: reused" in done.stderr, done.stderr[-4000:]
    rows = _rows(report)
    for scenario, figure, system in EXPECTED:
        matching = [
            r
            for r in rows
            if r[0].startswith(scenario) and r[1].startswith(figure) and r[2] == system
        ]
        assert matching, f"no figure {figure!r} of {system} in {scenario}:\n{report}"
        for row in matching:
            assert float(row[3].replace(",", "")) > 0, f"{row} is not a measurement"
    for scenario, figure, system in SIGNED:
        assert any(
            r[0].startswith(scenario) and r[1].startswith(figure) and r[2] == system for r in rows
        ), f"no figure {figure!r} of {system} in {scenario}:\n{report}"
    # And the CPU per job table has both jobs of every system, with its parts named; a no-op
    # window of 40 jobs can be shorter than one kernel clock tick (0.00), not both jobs'
    cpu = [r for r in rows if r[0].startswith(CPU_TABLE)]
    assert sorted((r[1].split(" (")[0], r[2]) for r in cpu) == sorted(
        (job, system) for job in ("DB-writing job", "no-op job") for system in SYSTEMS
    ), report
    for system in SYSTEMS:
        assert sum(float(r[3]) for r in cpu if r[2] == system) > 0, f"{system}: {cpu}"
    assert all(
        re.search(r"\(worker processes [\d.]+, PostgreSQL [\d.]+, RabbitMQ [\d.]+ ms", r[1])
        for r in cpu
    ), cpu
    assert "- Machine-wide CPU per job is counted over each throughput run's own drain" in report
    # And the retention drop's baseline says which filesystem the data directory is on
    assert re.search(
        r"the data directory's filesystem: (\S+ mounted at /\S*, with(out)? online discard"
        r"|not on this machine)",
        report,
    ), report
    # And it left no database behind
    assert _bench_databases() <= before


@pytest.mark.timeout(120)
def test_only_runs_the_scenarios_named_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    # Given the real RabbitMQ and PostgreSQL
    require_servers()
    out = tmp_path / "BENCHMARKS.md"

    # When the harness is asked for the scheduler alone, and for a scenario it lacks
    done = _run_module(["bench", "--smoke", "--only", "scheduler", "--out", str(out)], timeout=110)
    unknown = _run_module(["bench", "--only", "speed"], timeout=60)

    # Then its report holds the scheduler's figures, says it is partial, and nothing else ran
    assert done.returncode == 0, done.stderr[-4000:]
    report = out.read_text()
    scenarios = {scenario for scenario, *_ in _rows(report)}
    assert len(scenarios) == 1 and next(iter(scenarios)).startswith("7. Scheduler"), report
    assert "- Command: `python -m bench --smoke --only scheduler --out" in report
    assert "Only the scenarios asked for ran: scheduler." in report
    assert unknown.returncode == 2 and "tenant-scale" in unknown.stderr


@pytest.mark.timeout(120)
def test_hot_path_bench_measures_every_way_and_cleans_up() -> None:
    # Given the real PostgreSQL
    require_servers()
    before = _bench_databases()

    # When the job-record micro-benchmark runs at a tiny size
    done = _run_module(["bench.hot_path", "--count", "20", "--runs", "1"], timeout=110)

    # Then it measured every way (a rate and a CPU time above zero each, and the
    # database backend's CPU, which 20 jobs may not move by one clock tick)
    assert done.returncode == 0, done.stderr[-4000:]
    line = re.compile(
        r"^run 1 (orm|hot|prepared): ([\d,.]+) jobs/s, ([\d,.]+) µs CPU per job,"
        r" ([\d,.]+ µs|n/a) database CPU per job$",
        re.M,
    )
    found = {
        m[1]: (float(m[2].replace(",", "")), float(m[3].replace(",", "")))
        for m in line.finditer(done.stdout)
    }
    assert set(found) == {"orm", "hot", "prepared"}, done.stdout
    assert all(rate > 0 and cpu > 0 for rate, cpu in found.values()), found
    # And it left no database behind
    assert _bench_databases() <= before


@pytest.mark.timeout(180)
def test_profile_samples_a_real_worker_and_names_where_its_cpu_goes(tmp_path: Path) -> None:
    # Given the real RabbitMQ and PostgreSQL
    require_servers()
    before = _bench_databases()
    raw = tmp_path / "stacks.txt"

    # When a worker draining a small backlog is profiled for a second, its stacks kept
    done = _run_module(
        ["bench.profile", "--count", "1000", "--seconds", "1", "--raw", str(raw)], timeout=170
    )

    # Then the report names the rate, the CPU share and where the samples were
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert re.search(r"^noop: 1,000 jobs at [\d,]+ jobs/s$", done.stdout, re.M), done.stdout
    assert re.search(r"^worker process CPU while sampled: \d+% of one core$", done.stdout, re.M)
    places = re.findall(r"^\s*[\d.]+%  (.+)$", done.stdout, re.M)
    assert any(place.startswith("DbSession.run") for place in places), done.stdout
    # And the stacks it kept are py-spy's raw lines (frames, then a count; a sample that caught
    # no Python frame has none), the worker's among them
    stacks = raw.read_text().splitlines()
    assert stacks and all(re.fullmatch(r".* \d+", line) for line in stacks), stacks[:3]
    assert any("DbSession.run" in line for line in stacks)
    # And it left no database behind
    assert _bench_databases() <= before


@pytest.mark.timeout(120)
def test_round_trips_times_each_way_of_sending_a_db_writing_jobs_statements() -> None:
    # Given the real PostgreSQL
    require_servers()
    before = _bench_databases()

    # When a few jobs' statements are sent each way
    done = _run_module(["bench.round_trips", "--count", "80", "--runs", "1"], timeout=110)

    # Then each way was timed, at a rate and a CPU cost above zero
    assert done.returncode == 0, done.stderr[-4000:]
    found = {
        m[1]: (float(m[2].replace(",", "")), float(m[3].replace(",", "")))
        for m in re.finditer(
            r"^run 1 (four|two|three): ([\d,]+) jobs/s, ([\d,]+) µs CPU per job$",
            done.stdout,
            re.M,
        )
    }
    assert set(found) == {"four", "two", "three"}, done.stdout
    assert all(rate > 0 and cpu > 0 for rate, cpu in found.values()), found
    # And it left no database behind
    assert _bench_databases() <= before


@pytest.mark.timeout(120)
def test_drop_cost_times_postgresqls_drop_beside_the_filesystems_removal() -> None:
    # Given the real PostgreSQL
    require_servers()
    before = _bench_databases()

    # When a small table's drop is timed in the default tablespace
    done = _run_module(["bench.drop_cost", "--mib", "8", "--runs", "1"], timeout=110)

    # Then the drop and the filesystem's removal of as many bytes were both timed
    assert done.returncode == 0, done.stderr[-4000:]
    run = re.search(
        r"^run 1 default tablespace: DROP of ([\d,]+) MiB ([\d,]+) ms; "
        r"the filesystem removing as many bytes ([\d,]+) ms$",
        done.stdout,
        re.M,
    )
    assert run, done.stdout
    assert int(run[1].replace(",", "")) >= 4
    assert re.search(
        r"^default tablespace: medians DROP [\d,]+ ms, filesystem [\d,]+ ms$", done.stdout, re.M
    )
    # And it said which filesystem that was, and whether it discards online
    assert re.search(
        r"^default tablespace: \S+ mounted at /\S*, with(out)? online discard", done.stdout, re.M
    ), done.stdout
    # And it left no database and no table behind
    assert _bench_databases() <= before


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--mib", "0"], "0 is not a positive whole number"),
        (["--tablespace-dir", "relative/dir"], "not an existing directory's absolute path"),
        (["--tablespace-dir", "{quoted}"], "refuses a tablespace location with a single quote"),
        (["--scratch-dir", "/nonexistent/scratch"], "not an existing directory"),
    ],
)
def test_drop_cost_refuses_bad_arguments_with_one_clear_line(
    args: list[str], says: str, tmp_path: Path
) -> None:
    quoted = tmp_path / "it's"
    quoted.mkdir()
    done = _run_module(
        ["bench.drop_cost", *(arg.format(quoted=quoted) for arg in args)], timeout=60
    )

    assert done.returncode == 2
    assert says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(120)
def test_gc_pause_times_a_full_collection_of_a_workers_heap_before_and_after_freezing() -> None:
    done = _run_module(["bench.gc_pause", "--runs", "1"], timeout=110)

    assert done.returncode == 0, done.stderr[-4000:]
    objects = re.search(r"^objects tracked: ([\d,]+)$", done.stdout, re.M)
    before = re.search(r"^full collection: ([\d.]+) ms \(median of 1\)$", done.stdout, re.M)
    after = re.search(
        r"^after gc.freeze\(\): ([\d.]+) ms \(([\d,]+) objects frozen\)$", done.stdout, re.M
    )
    assert objects and before and after, done.stdout
    assert int(objects[1].replace(",", "")) > 10_000
    assert int(after[2].replace(",", "")) > 10_000
    assert float(before[1]) > 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--count", "0"], "0 is not a positive whole number"),
        (["--count", "3"], "at least one job per thread"),
        (["--runs", "many"], "many is not a positive whole number"),
    ],
)
def test_round_trips_refuses_bad_arguments_with_one_clear_line(args: list[str], says: str) -> None:
    done = _run_module(["bench.round_trips", *args], timeout=60)

    assert done.returncode == 2
    assert says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


LATENCY_RUN = """
import sys, tempfile
from pathlib import Path
from bench.env import BenchEnv
env = BenchEnv(Path(tempfile.mkdtemp(prefix="taskyard-latency-test-")))
env.export()
from bench import latency
from bench.systems import Taskyard, all_queues, engine_of
taskyard = Taskyard(env)
try:
    taskyard.setup()
    latency.delays(taskyard, 20, 200, "check")
    records = sum(len(p.read_bytes().splitlines()) for p in env.scratch.glob("*.done.probe"))
    print(f"probe records: {records}")
finally:
    env.delete_queues(all_queues([taskyard]))
    engine_of(env).dispose()
    env.drop_database()
"""


@pytest.mark.timeout(120)
def test_the_latency_probes_are_the_ones_sent_to_the_running_worker() -> None:
    # Given the real RabbitMQ and PostgreSQL
    require_servers()
    before = _bench_databases()

    # When Taskyard's latency is timed over 20 probes (after its one warm-up probe)
    done = _run_python(["-c", LATENCY_RUN], timeout=110)

    # Then the worker ran those 20 and not the warm-up probe, which the reset purged
    # (left in the queue, it would be timed as the first probe, from before the worker started;
    # without the wait for its confirm, the purge beats the publish in most runs, not all)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "probe records: 20" in done.stdout, done.stdout + done.stderr[-2000:]
    assert _bench_databases() <= before
