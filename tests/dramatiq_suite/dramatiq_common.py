"""`tests/common.py` for Dramatiq's own tests (the sdist ships the tests without it).

Copied next to Dramatiq's test files as `common.py` by `harness.stage`; written
from what the tests import from it.  Not collected by Taskyard's own run.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika
import pytest
from dramatiq import Worker
from dramatiq.broker import Broker

RABBITMQ_USERNAME = os.environ.get("RABBITMQ_USERNAME", "guest")
RABBITMQ_PASSWORD = os.environ.get("RABBITMQ_PASSWORD", "guest")
RABBITMQ_CREDENTIALS = pika.PlainCredentials(RABBITMQ_USERNAME, RABBITMQ_PASSWORD)

skip_on_windows = pytest.mark.skipif(platform.system() == "Windows", reason="not on Windows")
skip_on_pypy = pytest.mark.skipif(platform.python_implementation() == "PyPy", reason="not on PyPy")
# Dramatiq skips these timing-sensitive tests in its CI; they never use a broker fixture.
skip_in_ci = pytest.mark.skipif(
    os.environ.get("CI", "").lower() in ("1", "true", "yes"), reason="skipped in CI"
)
# The servers are checked once by Taskyard's runner before this run starts.
skip_unless_rabbit_mq = pytest.mark.skipif(False, reason="RabbitMQ is running")


@contextmanager
def worker(broker: Broker, **kwargs: Any) -> Iterator[Worker]:
    """A started worker on `broker`, stopped on exit."""
    started = Worker(broker, **kwargs)
    started.start()
    try:
        yield started
    finally:
        started.stop()
