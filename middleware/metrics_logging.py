"""How a worker's log lines are formatted (JSON: `TASKYARD_LOG_FORMAT=json`) and written.

`JsonFormatter` is the one place Taskyard formats its log lines as JSON.
`QueuedLines` is the root handler of a `dramatiq actors` worker process: a
thread that logs never waits for the pipe to Dramatiq's main process (see
`middleware/log_setup.py`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the `extra` fields, any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# How many lines (records, and lines printed) a worker process holds for its writer thread;
# beyond that the oldest is dropped and counted, never waited for.
CAPACITY = 10_000
# Once it has written, the writer lets the next lines gather this long: one write for
# many lines when a worker is busy, at once for the first line of a quiet one.
LINGER_SECONDS = 0.05
# At most this many bytes per write: below the pipe's atomic write size (PIPE_BUF, 4,096
# bytes), so a worker killed mid-write (`dramatiq actors` sends its log lines to the main
# process over a pipe) never leaves half a message that the main process waits on for ever.
MAX_WRITE_BYTES = 3_800
# The logger of the line that says how many lines were dropped.
DROPPED_LOGGER = "WorkerLogging"


class QueuedLines(logging.Handler):
    """A handler that never waits: it queues each line for one writer thread.

    The threads that log (a worker's job threads above all) only append the
    record to a bounded queue; the writer thread formats each record with its
    target handlers and writes what it finds queued together, in writes of at
    most MAX_WRITE_BYTES.  When the stream cannot take more (Dramatiq's main
    process is not reading the worker's pipe yet), only the writer waits.  A
    full queue drops its oldest line for the new one, so what is written is
    the latest (a worker's "ready" line, its last error), and the writer says
    how many it dropped in one WARNING line where they were missed.  Text
    written to `stream()` (a print, a traceback on stderr) is queued the same way.
    """

    def __init__(
        self,
        targets: list[logging.Handler],
        *,
        raw: Any = None,
        capacity: int = CAPACITY,
        linger: float = LINGER_SECONDS,
    ) -> None:
        super().__init__()
        self.targets = targets
        # Where printed text goes: the stream of the target that writes to it, if any.
        self.raw = raw
        self.capacity = capacity
        self.linger = linger
        self._lines: deque[logging.LogRecord | str] = deque()
        self._dropped = 0
        # Lines queued so far (dropped ones included), and how many of them are dealt with.
        self._queued = 0
        self._done = 0
        self._closing = False
        self._lock = threading.Lock()
        self._has_lines = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskyard-log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record, its message formatted now (its arguments may change later)."""
        try:
            record.msg = record.getMessage()
            record.args = None
        except Exception:
            self.handleError(record)
            return
        self.put(record)

    def put(self, item: logging.LogRecord | str) -> None:
        """Queue a record or a line of text; a full queue drops its oldest line for it."""
        with self._lock:
            if len(self._lines) >= self.capacity:
                self._lines.popleft()
                self._dropped += 1
            self._lines.append(item)
            self._queued += 1
            self._has_lines.notify()

    def stream(self) -> QueuedStream:
        """A text stream whose lines are queued here (for sys.stdout and sys.stderr)."""
        return QueuedStream(self.put)

    def drain(self, timeout: float) -> bool:
        """Wait until every line queued so far is written (or dropped); False after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._queued
            self._has_lines.notify()
            while self._done < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._progress.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (waiting at most `timeout`), then stop the writer."""
        with self._lock:
            self._closing = True
            self._has_lines.notify()
        self._stopping.set()
        self._thread.join(timeout)
        super().close()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._lines and not self._closing:
                    self._has_lines.wait(0.5)
                lines = list(self._lines)
                self._lines.clear()
                dropped, self._dropped = self._dropped, 0
                taken, closing = self._queued, self._closing
            if dropped:
                # They were older than every line still queued: the notice goes first.
                lines.insert(0, _dropped_record(dropped))
            if lines:
                self._write(lines)
            with self._lock:
                self._done = taken
                self._progress.notify_all()
                if closing and not self._lines:
                    return
            if lines:
                self._stopping.wait(self.linger)

    def _write(self, lines: list[logging.LogRecord | str]) -> None:
        wrote_raw = False
        for target in self.targets:
            wrote_raw |= _write_to(target, lines, self.raw)
        printed = [line for line in lines if isinstance(line, str)]
        if printed and not wrote_raw and self.raw is not None:
            _write_chunks(self.raw, printed, None)


def _dropped_record(count: int) -> logging.LogRecord:
    return logging.makeLogRecord(
        {
            "name": DROPPED_LOGGER,
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": f"Dropped {count} log line(s): the log pipe was full",
        }
    )


def _write_to(target: logging.Handler, lines: list[logging.LogRecord | str], raw: Any) -> bool:
    """Write the lines a target takes; True if it also wrote the printed text (same stream)."""
    stream = getattr(target, "stream", None)
    if type(target) is not logging.StreamHandler or stream is None:
        for line in lines:
            if isinstance(line, logging.LogRecord) and line.levelno >= target.level:
                # Nowhere left to say it failed: stderr is this queue.
                with contextlib.suppress(Exception):
                    target.handle(line)
        return False
    with_raw = raw is not None and stream is raw
    texts: list[str] = []
    for line in lines:
        if isinstance(line, str):
            if with_raw:
                texts.append(line)
        elif line.levelno >= target.level and target.filter(line):
            try:
                texts.append(target.format(line) + target.terminator)
            except Exception:
                continue
    _write_chunks(stream, texts, target.lock)
    return with_raw


def _write_chunks(stream: Any, texts: list[str], lock: Any) -> None:
    if not texts:
        return
    try:
        with lock or threading.Lock():
            for chunk in _chunks(texts):
                stream.write(chunk)
            stream.flush()
    except Exception:
        pass  # a closed pipe (the main process is gone): nowhere left to write


class QueuedStream:
    """A text stream that hands each complete line to `put` (a print never waits)."""

    def __init__(self, put: Callable[[str], None]) -> None:
        self._put = put
        self._partial = ""
        self._lock = threading.Lock()
        self.encoding = "utf-8"
        self.errors = "replace"

    def write(self, text: str) -> int:
        """Queue every complete line; keep the rest until its newline or a flush."""
        with self._lock:
            held = self._partial + text
            cut = held.rfind("\n") + 1
            self._partial = held[cut:]
        for line in held[:cut].splitlines(keepends=True):
            self._put(line)
        return len(text)

    def flush(self) -> None:
        """Queue what is left of a line."""
        with self._lock:
            partial, self._partial = self._partial, ""
        if partial:
            self._put(partial)

    def isatty(self) -> bool:
        """Never a terminal."""
        return False

    def writable(self) -> bool:
        """Always writable."""
        return True


def _chunks(lines: list[str]) -> list[str]:
    """The lines joined into writes of at most MAX_WRITE_BYTES (a longer line alone)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        length = len(line.encode("utf-8", "replace"))
        if current and size + length > MAX_WRITE_BYTES:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += length
    if current:
        chunks.append("".join(current))
    return chunks
