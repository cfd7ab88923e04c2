"""A worker's log lines go through a bounded queue and one writer: logging never waits."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from middleware.metrics_logging import MAX_WRITE_BYTES, QueuedLines


class SizedStream(io.StringIO):
    """A stream that keeps the size of every write."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, text: str) -> int:
        self.sizes.append(len(text.encode()))
        return super().write(text)


class StuckStream(SizedStream):
    """A stream whose writes wait until it is let go (a pipe nobody reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.let_go = threading.Event()

    def write(self, text: str) -> int:
        self.let_go.wait(10)
        return super().write(text)


def handler_on(
    stream: io.StringIO, level: int = logging.NOTSET
) -> logging.StreamHandler[io.StringIO]:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.setLevel(level)
    return handler


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of the test's own, that does not reach the root logger's handlers."""
    made = logging.getLogger(f"test.queued.{time.monotonic_ns()}")
    made.setLevel(logging.DEBUG)
    made.propagate = False
    yield made
    for handler in list(made.handlers):
        made.removeHandler(handler)


def test_lines_are_written_in_order_in_writes_a_pipe_takes_at_once(logger: logging.Logger) -> None:
    stream = SizedStream()
    queued = QueuedLines([handler_on(stream)], linger=0.05)
    logger.addHandler(queued)

    for n in range(500):
        logger.info("job %04d %s", n, "x" * 90)
    assert queued.drain(5)
    queued.close()

    assert stream.getvalue().splitlines() == [f"INFO job {n:04d} {'x' * 90}" for n in range(500)]
    # Written together, and no write larger than a pipe takes at once (a worker killed
    # mid-write must not leave half a message in the main process's pipe).
    assert 1 < len(stream.sizes) < 500 and max(stream.sizes) <= MAX_WRITE_BYTES


def test_each_target_keeps_its_level(logger: logging.Logger) -> None:
    loud, quiet = SizedStream(), SizedStream()
    queued = QueuedLines([handler_on(loud), handler_on(quiet, logging.WARNING)])
    logger.addHandler(queued)

    logger.info("one")
    logger.warning("two")
    queued.close()

    assert loud.getvalue().splitlines() == ["INFO one", "WARNING two"]
    assert quiet.getvalue().splitlines() == ["WARNING two"]


def test_a_line_is_formatted_when_logged_not_when_written(logger: logging.Logger) -> None:
    stream = StuckStream()
    queued = QueuedLines([handler_on(stream)])
    logger.addHandler(queued)
    seen: list[int] = [1]

    logger.info("seen %s", seen)
    seen.append(2)
    stream.let_go.set()
    queued.close()

    assert stream.getvalue() == "INFO seen [1]\n"


def test_logging_never_waits_for_a_stuck_stream_and_says_how_many_lines_it_dropped(
    logger: logging.Logger,
) -> None:
    # Given a stream that takes nothing (a pipe the main process does not read yet)
    stream = StuckStream()
    queued = QueuedLines([handler_on(stream)], capacity=100)
    logger.addHandler(queued)

    # When a thread logs far more than the queue holds
    started = time.monotonic()
    for n in range(1_000):
        logger.info("line %d", n)
    logger.warning("the last line")

    # Then it never waited
    assert time.monotonic() - started < 1.0

    # And once the stream takes lines again, the last is written, and a line says how
    # many were dropped each time some were: every line is written or counted
    stream.let_go.set()
    assert queued.drain(5)
    queued.close()
    lines = stream.getvalue().splitlines()
    assert lines[-1] == "WARNING the last line"
    dropped = [int(line.split()[2]) for line in lines if line.startswith("WARNING Dropped ")]
    written = [int(line.split()[2]) for line in lines if line.startswith("INFO line ")]
    assert dropped and len(written) + sum(dropped) == 1_000
    assert written == sorted(written)


def test_printed_text_goes_to_its_stream_in_order_with_the_log_lines(
    logger: logging.Logger,
) -> None:
    stream = SizedStream()
    queued = QueuedLines([handler_on(stream)], raw=stream)
    logger.addHandler(queued)
    printed = queued.stream()

    logger.info("before")
    printed.write("a printed ")
    printed.write("line\nand half")
    logger.info("after")
    printed.flush()
    queued.close()

    assert stream.getvalue() == "INFO before\na printed line\nINFO after\nand half"


def test_printed_text_without_a_stream_target_is_written_to_its_own_stream(
    logger: logging.Logger,
) -> None:
    raw = SizedStream()
    queued = QueuedLines([logging.NullHandler()], raw=raw)
    print("a traceback line", file=queued.stream())
    queued.close()

    assert raw.getvalue() == "a traceback line\n"
