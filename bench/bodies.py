"""The job bodies every system runs, and the tally that tells the harness when a run is done.

Each body calls `tally(kind, started)` last: one fixed-width record (start, end,
send-to-start delay) appended to `BENCH_DONE_FILE.<kind>` with O_APPEND, so the
worker processes of one system add to one file without a lock, and the harness
counts the jobs done from the file's size.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from pathlib import Path
from typing import TypedDict

from sqlalchemy import BigInteger, DateTime, Identity, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class BenchBase(DeclarativeBase):
    """The bench's own tables, created beside Taskyard's in the bench database."""


class BenchRow(BenchBase):
    """The one row a DB-writing job inserts."""

    __tablename__ = "bench_rows"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    system: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class Tally(TypedDict):
    """The records of one kind, summed up by the harness."""

    count: int
    first_start: float
    last_end: float
    delays: list[float]
    # Each record's start, in the order of `delays`.
    starts: list[float]


RECORD_BYTES = 49  # "%17.6f %17.6f %+012.6f\n"
_lock = threading.Lock()
_files: dict[str, int] = {}


def tally(kind: str, started: float, sent_at: float | None = None) -> None:
    """Append one finished job of `kind` to its record file (when the harness asked for one)."""
    done_file = os.environ.get("BENCH_DONE_FILE")
    if done_file is None:
        return
    ended = time.time()
    delay = started - sent_at if sent_at is not None else 0.0
    record = f"{started:17.6f} {ended:17.6f} {delay:+012.6f}\n".encode()
    path = f"{done_file}.{kind}"
    with _lock:
        fd = _files.get(path)
        if fd is None:
            fd = _files[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, record)


def read_tally(path: Path, count: int) -> Tally | None:
    """The first `count` records of a tally file, or None while fewer are there."""
    try:
        if path.stat().st_size < count * RECORD_BYTES:
            return None
    except FileNotFoundError:
        return None
    rows = [line.split() for line in path.read_text().splitlines()[:count]]
    return {
        "count": len(rows),
        "first_start": min(float(r[0]) for r in rows),
        "last_end": max(float(r[1]) for r in rows),
        "delays": [float(r[2]) for r in rows],
        "starts": [float(r[0]) for r in rows],
    }


def noop() -> None:
    """The no-op job."""
    tally("noop", time.time())


def write_row(session: Session, system: str, *, commit: bool) -> None:
    """The DB-writing job: one ORM session inserts one row (Taskyard's commits it after)."""
    started = time.time()
    session.add(BenchRow(system=system))
    if commit:
        session.commit()
    tally("write_row", started)


def probe(sent_at: float) -> None:
    """The latency probe: how long after its send the job started."""
    tally("probe", time.time(), sent_at)
