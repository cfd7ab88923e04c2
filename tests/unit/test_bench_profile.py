"""`python -m bench.profile --waits`: where a worker thread's sample counts."""

from __future__ import annotations

from pathlib import Path

from bench.profile import wait_shares, waited_on, where

WORKER = "run (dramatiq/worker.py:1);process_message (dramatiq/worker.py:2)"


def stack(*frames: str) -> list[str]:
    return [*WORKER.split(";"), *(f"{frame} (x.py:1)" for frame in frames)]


def test_a_worker_threads_waits_are_told_apart() -> None:
    record = stack("DbSession._commit", "HotStatement.execute", "DefaultDialect.do_execute")
    flush = stack("Session.commit", "Session._flush", "DefaultDialect.do_execute")
    commit = stack("Session.commit", "DefaultDialect.do_commit")
    python = stack("DbSession.run", "job_record")

    assert waited_on(record) == "waiting on the record's statement (a round trip)"
    assert waited_on(flush) == "waiting on the ORM flush (the job's own INSERT)"
    assert waited_on(commit) == "waiting on COMMIT"
    assert waited_on(python) == "running Python (or waiting for the GIL)"
    # Another thread (the consumer, the group commit's writer) is not counted
    assert waited_on(["MultiplexingConsumer.run (t.py:1)", "poll (x.py:1)"]) is None


def test_wait_shares_count_only_worker_threads(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    commit = ";".join(stack("Session.commit", "DefaultDialect.do_commit"))
    raw.write_text(f"{commit} 3\nMultiplexingConsumer.run (t.py:1);poll (x.py:2) 7\n")

    total, counted = wait_shares(raw)

    assert total == 3 and counted == {"waiting on COMMIT": 3}


def test_a_hooks_samples_count_under_the_hook_whichever_broker_dispatched_it() -> None:
    worker = "WorkerThread.run (dramatiq/worker.py:1);WorkerThread.process_message (w.py:2)"
    for emit in ("Broker.emit_after", "HookDispatch.emit_after"):
        frames = [*worker.split(";"), f"{emit} (x.py:1)", "Metrics.after_process_message (m.py:1)"]
        assert where(frames) == "emit_after > Metrics.after_process_message"
    # Dramatiq's own loop, outside any hook
    assert where(worker.split(";")) == "worker thread (Dramatiq's own)"
