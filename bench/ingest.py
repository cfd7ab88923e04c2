"""Ingest: a feed served over local HTTP, from `ingest_resources.send()` to the ingest completed.

One worker process of 8 threads fetches the feed, records its items and sends
one `process_resource` per item; the clock stops when the ingest's row says
completed.  The DB-writing job's rate is measured in the same run (as the
throughput scenario measures it) and is the baseline of the items/s.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy import select
from sqlalchemy.orm import Session

from bench import throughput
from bench.env import BenchError
from bench.report import Figure
from bench.systems import Taskyard, engine_of

SCENARIO = "9. Ingest (one worker process, 8 threads)"
WHAT = "feed items/s, send → ingest completed, against DB-writing jobs/s"
# The ingest's items/s over the DB-writing job's jobs/s, in the same run.
TARGET = 0.8


def feed(count: int) -> bytes:
    """A feed of `count` valid resources with ids of their own (a new run adds new ones)."""
    run = uuid.uuid4().hex[:8]
    now = dt.datetime.now(dt.UTC).isoformat()
    items = [
        {"id": f"{run}-{i}", "name": f"resource {i}", "creation_date": now, "tags": ["bench"]}
        for i in range(count)
    ]
    return json.dumps(items).encode()


@contextmanager
def serving(body: bytes) -> Iterator[str]:
    """Serve `body` as JSON on 127.0.0.1 until the block ends; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/feed.json"
    finally:
        server.shutdown()
        server.server_close()


def measure_ingest(taskyard: Taskyard, count: int, *, tag: str, timeout: float) -> float:
    """Items per second of one ingest of `count` items, from its send to its completion."""
    # Imported here: the harness's own broker must be Taskyard's when the actor is.
    from actors.ingest import ingest_resources
    from db.models import INGEST_COMPLETED, INGEST_FAILED, Ingest

    taskyard.reset()
    worker = taskyard.start(tag, env={"TASKYARD_HTTP_ALLOW_PRIVATE": "true"}, settle=True)
    try:
        with serving(feed(count)) as url, Session(engine_of(taskyard.env)) as session:
            started = time.monotonic()
            message = ingest_resources.send(tenant_id=taskyard.tenants[0], source_url=url)
            query = select(Ingest.status, Ingest.processed, Ingest.failed).where(
                Ingest.message_id == message.message_id
            )
            deadline = started + timeout
            while True:
                row = session.execute(query).first()
                session.rollback()
                if row is not None and row.status in (INGEST_COMPLETED, INGEST_FAILED):
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"ingest of {count} items not completed in {timeout:.0f} s")
                time.sleep(0.01)
            elapsed = time.monotonic() - started
        if row.status != INGEST_COMPLETED or (row.processed, row.failed) != (count, 0):
            raise BenchError(
                f"ingest ended {row.status} with {row.processed} processed, {row.failed} failed "
                f"of {count}"
            )
    finally:
        worker.stop()
    return count / max(elapsed, 1e-6)


def run(taskyard: Taskyard, *, count: int, runs: int) -> list[Figure]:
    """The ingest's items/s and the DB-writing job's jobs/s, `runs` times each, back to back."""
    jobs = Figure(SCENARIO, WHAT, "taskyard DB-writing job", "jobs/s")
    items = Figure(
        SCENARIO,
        WHAT,
        "taskyard ingest",
        "items/s",
        baseline="taskyard DB-writing job",
        ratio_at_least=TARGET,
    )
    for run_no in range(runs):
        jobs.values.append(
            throughput.measure(taskyard, "write_row", count, tag=f"ingest-jobs-{run_no}").rate
        )
        items.values.append(
            measure_ingest(taskyard, count, tag=f"ingest-{run_no}", timeout=60 + count / 10)
        )
    return [jobs, items]
