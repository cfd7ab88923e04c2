"""`python -m bench.profile`: where a Taskyard worker's CPU goes, per middleware hook.

Queues a backlog of bench jobs, starts the real worker (`dramatiq actors
bench.taskyard_actors --processes 1 --threads 8`), and samples its worker
process with py-spy (from the `bench` extra) while it drains the backlog:

- `--gil`: only the thread holding the GIL is sampled, so the shares are of
  the CPU Python spends, which is what limits a worker of many threads;
- the process's CPU over the same seconds (from /proc), to show whether it is
  bound by that CPU (near 100 % of a core) or by waiting.

Prints the shares by where a sample was (the middleware hook, the DB session's
steps, the consumer thread) and the worker's jobs/s.  Linux only.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.env import BenchEnv, BenchError
from bench.procstat import cpu_seconds

# The frames that call middleware hooks: Dramatiq's dispatch, and Taskyard's brokers'.
EMITS = frozenset(
    f"{owner}.emit_{when}" for owner in ("Broker", "HookDispatch") for when in ("before", "after")
)
# Places with a smaller share are summed on one line.
SHOWN_FROM = 0.005


def where(frames: list[str]) -> str:
    """The place a sample counts under: a hook, a step of the DB session, or a thread."""
    names = [frame.split(" (")[0] for frame in frames]
    for i, name in enumerate(names):
        if name == "MultiplexingConsumer.run":
            return "consumer thread (pika, decoding, hand-off)"
        if name == "DbSession.run" and i + 1 < len(names):
            step = names[i + 1]
            if step.endswith("<lambda>"):
                return "DbSession.run > the actor (arguments check and body)"
            if step == "TransactionalContext.__exit__":
                return "DbSession.run > commit"
            return f"DbSession.run > {step}"
        if name in EMITS and i + 1 < len(names):
            return f"{name.split('.')[1]} > {names[i + 1]}"
    for name in reversed(names):
        if name.startswith("WorkerThread."):
            return "worker thread (Dramatiq's own)"
    return "other threads"


def waited_on(frames: list[str]) -> str | None:
    """With `--waits`: what a worker thread's sample was doing; None for another thread."""
    names = [frame.split(" (")[0] for frame in frames]
    if not any(name.endswith("process_message") for name in names):
        return None
    leaf = names[-1]
    if leaf.endswith("do_execute"):
        if "HotStatement.execute" in names:
            return "waiting on the record's statement (a round trip)"
        if "Session._flush" in names:
            return "waiting on the ORM flush (the job's own INSERT)"
        return "waiting on another statement"
    if leaf.endswith("do_commit"):
        return "waiting on COMMIT"
    return "running Python (or waiting for the GIL)"


def wait_shares(raw: Path) -> tuple[int, Counter[str]]:
    """The worker threads' samples in py-spy's raw output (idle ones too), by `waited_on`."""
    counted: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        place = waited_on(stack.split(";")) if stack else None
        if place is None:
            continue
        total += int(count)
        counted[place] += int(count)
    return total, counted


def shares(raw: Path) -> tuple[int, Counter[str]]:
    """The samples in py-spy's raw output (one process), counted by `where`."""
    counted: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        total += int(count)
        counted[where(stack.split(";"))] += int(count)
    return total, counted


def main(argv: list[str] | None = None) -> int:
    """Profile one worker draining `--count` jobs of `--kind`."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--kind", choices=["noop", "write_row"], default="noop")
    parser.add_argument("--count", type=int, default=5_000)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument(
        "--waits",
        action="store_true",
        help="sample the worker threads idle or not (py-spy --idle): where their time goes, "
        "waiting on the database included, rather than where the GIL is held",
    )
    parser.add_argument(
        "--raw", type=Path, help="also keep py-spy's raw stacks in this file (one line a stack)"
    )
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("python -m bench.profile: py-spy is missing (pip install -e '.[bench]')")
        return 2
    env = BenchEnv(Path(tempfile.mkdtemp(prefix="taskyard-profile-")))
    env.export()
    from bench.systems import Taskyard, all_queues, engine_of

    taskyard = Taskyard(env)
    raw = env.scratch / "profile.txt"
    try:
        taskyard.setup()
        taskyard.reset()
        taskyard.send(args.kind, args.count)
        worker = taskyard.start("profile")
        try:
            pids = worker.pids()
            if len(pids) < 2:
                raise BenchError("the worker process did not start")
            pid = worker.worker_pid()
            cpu, started = cpu_seconds(pid), time.monotonic()
            sampling = ["--idle", "-r", "200"] if args.waits else ["--gil", "-r", "500"]
            record = ["record", *sampling, "-f", "raw", "--nonblocking"]
            subprocess.run(
                [spy, *record, "-p", str(pid), "-d", str(args.seconds), "-o", str(raw)],
                check=True,
                capture_output=True,
            )
            busy = cpu_seconds(pid) - cpu
            busy_share = busy / (time.monotonic() - started)
            done = worker.wait_done(args.kind, args.count, timeout=60 + args.count / 20)
        finally:
            worker.stop()
        if args.raw is not None:
            shutil.copyfile(raw, args.raw)
        total, counted = wait_shares(raw) if args.waits else shares(raw)
        rate = args.count / max(done["last_end"] - done["first_start"], 1e-6)
        print(f"{args.kind}: {args.count:,} jobs at {rate:,.0f} jobs/s")
        print(f"worker process CPU while sampled: {busy_share:.0%} of one core")
        print(f"{'worker threads' if args.waits else 'GIL-held'} samples: {total:,}")
        rest = 0
        for place, count in counted.most_common():
            if count / max(total, 1) < SHOWN_FROM:
                rest += count
                continue
            print(f"{count / max(total, 1):6.1%}  {place}")
        print(f"{rest / max(total, 1):6.1%}  (the rest, each under {SHOWN_FROM:.1%})")
    finally:
        env.delete_queues(all_queues([taskyard]))
        engine_of(env).dispose()
        env.drop_database()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
