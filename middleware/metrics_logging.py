"""The one place Taskyard formats its log lines as JSON (`TASKYARD_LOG_FORMAT=json`)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
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


def use_json_logs(logger: logging.Logger | None = None) -> None:
    """Format every handler of `logger` (the root logger by default) as JSON lines."""
    target = logger if logger is not None else logging.getLogger()
    for handler in target.handlers:
        handler.setFormatter(JsonFormatter())


class BatchedLines(logging.Handler):
    """Holds a busy logger's records and hands them on in batches: one write per stream.

    The per-job outcome line is the worker's busiest: written one at a time,
    each is a write and a flush of the stream (for `dramatiq actors`, a pipe
    that the main process reads and writes out again).  Held here, they are
    formatted by each target handler as usual and written together, at the
    latest `flush_every` seconds after they were logged (and at shutdown).
    A target that is not a plain stream handler gets each record as before.
    """

    def __init__(self, targets: list[logging.Handler], *, capacity: int = 1_000) -> None:
        super().__init__()
        self.targets = targets
        self.capacity = capacity
        self._held: list[logging.LogRecord] = []
        self._hold = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        """Hold the record; write the batch at once if it is full."""
        with self._hold:
            self._held.append(record)
            full = len(self._held) >= self.capacity
        if full:
            self.flush()

    def flush(self) -> None:
        """Hand every held record to the targets: one write per stream handler."""
        with self._hold:
            records, self._held = self._held, []
        if not records:
            return
        for target in self.targets:
            wanted = [r for r in records if r.levelno >= target.level and target.filter(r)]
            stream = getattr(target, "stream", None)
            if type(target) is not logging.StreamHandler or stream is None:
                for record in wanted:
                    target.handle(record)
                continue
            try:
                lines = [target.format(r) + target.terminator for r in wanted]
                with target.lock or threading.Lock():
                    for chunk in _chunks(lines):
                        stream.write(chunk)
                    stream.flush()
            except Exception:
                for record in wanted:
                    target.handleError(record)


# At most this many bytes per write: below the pipe's atomic write size (PIPE_BUF, 4,096
# bytes), so a worker killed mid-write (`dramatiq actors` sends its log lines to the main
# process over a pipe) never leaves half a message that the main process waits on for ever.
MAX_WRITE_BYTES = 3_800


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


def batch_lines(logger: logging.Logger) -> BatchedLines:
    """Route `logger`'s records through a `BatchedLines` to the root logger's handlers."""
    batched = BatchedLines(list(logging.getLogger().handlers))
    logger.addHandler(batched)
    logger.propagate = False
    return batched


def unbatch_lines(logger: logging.Logger, batched: BatchedLines) -> None:
    """Write what is held and give `logger` back its usual path."""
    batched.flush()
    logger.removeHandler(batched)
    logger.propagate = True
