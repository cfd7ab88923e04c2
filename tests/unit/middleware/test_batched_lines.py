"""The per-job log lines are written in batches: one write per stream, nothing lost or reordered."""

from __future__ import annotations

import io
import logging

from middleware.metrics_logging import (
    MAX_WRITE_BYTES,
    BatchedLines,
    batch_lines,
    unbatch_lines,
)


class CountingStream(io.StringIO):
    """A stream that counts its writes."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_held_lines_are_written_together_in_order_once_flushed() -> None:
    stream = CountingStream()
    target = logging.StreamHandler(stream)
    target.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test.batched.order")
    logger.setLevel(logging.INFO)
    batched = BatchedLines([target])
    logger.addHandler(batched)
    logger.propagate = False

    for n in range(50):
        logger.info("job %d done", n)
    assert stream.getvalue() == ""  # held until the flush

    batched.flush()
    assert stream.getvalue().splitlines() == [f"INFO job {n} done" for n in range(50)]
    assert stream.writes == 1
    logger.removeHandler(batched)


def test_a_full_batch_is_written_at_once_and_each_target_keeps_its_level() -> None:
    loud, quiet = CountingStream(), CountingStream()
    loud_handler, quiet_handler = logging.StreamHandler(loud), logging.StreamHandler(quiet)
    quiet_handler.setLevel(logging.WARNING)
    batched = BatchedLines([loud_handler, quiet_handler], capacity=3)
    logger = logging.getLogger("test.batched.capacity")
    logger.setLevel(logging.INFO)
    logger.addHandler(batched)
    logger.propagate = False

    logger.info("one")
    logger.warning("two")
    logger.info("three")  # the third fills the batch

    assert loud.getvalue().splitlines() == ["one", "two", "three"]
    assert quiet.getvalue().splitlines() == ["two"]
    logger.removeHandler(batched)


def test_batching_a_logger_sends_its_lines_to_the_root_handlers_and_undoing_it_flushes() -> None:
    stream = CountingStream()
    root_handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(root_handler)
    logger = logging.getLogger("test.batched.root")
    logger.setLevel(logging.INFO)
    try:
        batched = batch_lines(logger)
        logger.info("held")
        assert stream.getvalue() == "" and logger.propagate is False
        unbatch_lines(logger, batched)
        assert stream.getvalue() == "held\n" and logger.propagate is True
    finally:
        root.removeHandler(root_handler)


class SizedStream(io.StringIO):
    """A stream that keeps the size of every write."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, text: str) -> int:
        self.sizes.append(len(text.encode()))
        return super().write(text)


def test_no_write_is_larger_than_a_pipe_writes_at_once() -> None:
    # A worker killed mid-write must not leave half a message in the main process's pipe.
    stream = SizedStream()
    batched = BatchedLines([logging.StreamHandler(stream)])
    logger = logging.getLogger("test.batched.size")
    logger.setLevel(logging.INFO)
    logger.addHandler(batched)
    logger.propagate = False

    for n in range(500):
        logger.info("job %04d %s", n, "x" * 90)
    batched.flush()

    assert len(stream.sizes) > 1 and max(stream.sizes) <= MAX_WRITE_BYTES
    assert stream.getvalue().splitlines() == [f"job {n:04d} {'x' * 90}" for n in range(500)]
    logger.removeHandler(batched)
