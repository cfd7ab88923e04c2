"""`tests/conftest.py` for Dramatiq's own tests, run on two brokers in the same run.

Dramatiq's sdist ships its tests without their conftest; these fixtures are
written from what the tests use.  Only the broker fixtures differ from
Dramatiq's: `stub_broker` and `rabbitmq_broker` are each parametrized over
`plain` (Dramatiq's `RabbitmqBroker`, as Dramatiq's own `rabbitmq_broker`
fixture builds it) and `taskyard` (`brokers.build_broker(settings)`, exactly
as a Taskyard process builds it), so every test that uses a broker runs once
on each.  Copied next to Dramatiq's test files as `conftest.py` by
`harness.stage`; Taskyard's runner (`test_dramatiq_suite.py`) sets the
environment read below and compares the outcomes it writes.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.broker import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.rate_limits.backends import StubBackend as StubRateLimiterBackend
from dramatiq.results.backends import StubBackend

BROKER_KINDS = ("plain", "taskyard")
BROKER_FIXTURES = frozenset({"stub_broker", "rabbitmq_broker", "stub_worker", "rabbitmq_worker"})
REDIS_FIXTURES = frozenset({"redis_broker", "redis_worker", "redis_result_backend"})
# Set by the runner: the plain broker's URL (a vhost of its own), where to write outcomes.
PLAIN_BROKER_URL = os.environ["DRAMATIQ_SUITE_PLAIN_URL"]
OUTCOMES_PATH = Path(os.environ["DRAMATIQ_SUITE_OUTCOMES"])
NOT_SERVED = (
    "Redis and Memcached backends are not run: they are not Taskyard's, the same tests run "
    "with the stub backend on both brokers, and Redis on this machine is shared"
)

# Modules that import Dramatiq's Redis broker cannot even be collected without the redis
# package (Taskyard does not install it); they test nothing of a RabbitMQ broker.
REDIS_MODULES = ["test_cli.py", "test_redis.py", "test_watch.py"]
collect_ignore = [] if importlib.util.find_spec("redis") else REDIS_MODULES


# Tests never run, on either broker, with the reason.
NOT_RUN = {
    "test_rabbitmq.py::test_rabbitmq_workers_handle_rabbit_failures_gracefully": (
        "it stops and starts the RabbitMQ application of the machine's node "
        "(`rabbitmqctl stop_app`), which every other test run shares; Taskyard's outage "
        "tests stop private nodes only (tests/reliability)"
    ),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip what does not run on a broker under test: Redis, no broker at all, or NOT_RUN."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        reason = NOT_RUN.get(item.nodeid.removeprefix("tests/").split("[")[0])
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
        elif names & REDIS_FIXTURES:
            item.add_marker(pytest.mark.skip(reason="Dramatiq's Redis broker, not Taskyard's"))
        elif not names & BROKER_FIXTURES:
            item.add_marker(pytest.mark.skip(reason="uses no broker fixture"))


_outcomes: dict[str, dict[str, str]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep each test's outcome: failed if any phase failed, else skipped or passed."""
    entry = _outcomes.setdefault(report.nodeid, {"outcome": "passed", "detail": ""})
    if entry["outcome"] == "failed":
        return
    if report.failed:
        lines = [line for line in report.longreprtext.splitlines() if line.startswith("E ")]
        detail = lines[0] if lines else report.longreprtext.strip().splitlines()[-1:]
        entry.update(outcome="failed", detail=f"{report.when}: {str(detail)[:300]}")
    elif report.skipped and entry["outcome"] == "passed":
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else ""
        entry.update(outcome="skipped", detail=str(reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write every outcome for the runner."""
    OUTCOMES_PATH.write_text(json.dumps(_outcomes, indent=1, sort_keys=True))


def _taskyard_broker() -> Broker:
    # Imported here: importing `brokers` builds the module's broker from the environment.
    import brokers
    from settings import load_settings

    return brokers.build_broker(load_settings())


def _close(broker: Broker) -> None:
    broker.flush_all()
    broker.close()
    from middleware.runtime import runtime_of

    runtime = runtime_of(broker)
    if runtime is not None:
        runtime.session_factory.kw["bind"].dispose()
    from middleware.outbox import find_outbox

    outbox = find_outbox(broker)
    if outbox is not None:
        # The send path's own engine (one pooled connection each): left open, every
        # test's broker kept one, and the suite ran PostgreSQL out of connections.
        outbox.sends.dispose()


@pytest.fixture(params=BROKER_KINDS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    """Which broker the test runs on."""
    return str(request.param)


def _broker(kind: str) -> Iterator[Broker]:
    broker = (
        RabbitmqBroker(url=PLAIN_BROKER_URL, max_priority=10)
        if kind == "plain"
        else _taskyard_broker()
    )
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    _close(broker)


@pytest.fixture
def stub_broker(broker_kind: str) -> Iterator[Broker]:
    """The broker under test, where Dramatiq's tests use the in-process one."""
    yield from _broker(broker_kind)


@pytest.fixture
def rabbitmq_broker(broker_kind: str) -> Iterator[Broker]:
    """The broker under test."""
    yield from _broker(broker_kind)


@pytest.fixture
def stub_worker(stub_broker: Broker) -> Iterator[Worker]:
    """A worker on the broker under test, as Dramatiq's stub worker is configured."""
    worker = Worker(stub_broker, worker_timeout=100, worker_threads=32)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def rabbitmq_worker(rabbitmq_broker: Broker) -> Iterator[Worker]:
    """A worker on the broker under test."""
    worker = Worker(rabbitmq_broker, worker_threads=32)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def redis_broker() -> None:
    """Dramatiq's Redis broker is not run here."""
    pytest.skip("Dramatiq's Redis broker, not Taskyard's")


@pytest.fixture
def redis_worker(redis_broker: None) -> None:
    """Dramatiq's Redis broker is not run here."""


@pytest.fixture
def start_cli() -> None:
    """The CLI tests run Dramatiq's Redis broker; not run here."""
    pytest.skip("Dramatiq's CLI tests use its Redis broker")


@pytest.fixture
def stub_result_backend() -> StubBackend:
    """Dramatiq's in-memory result backend."""
    return StubBackend()


@pytest.fixture
def redis_result_backend() -> None:
    """Not run here (see NOT_SERVED)."""
    pytest.skip(NOT_SERVED)


@pytest.fixture
def memcached_result_backend() -> None:
    """Not run here (see NOT_SERVED)."""
    pytest.skip(NOT_SERVED)


@pytest.fixture(params=["memcached", "redis", "stub"])
def result_backend(request: pytest.FixtureRequest) -> Any:
    """Each result backend, as in Dramatiq's suite; only the stub one runs here."""
    if request.param != "stub":
        pytest.skip(NOT_SERVED)
    return StubBackend()


@pytest.fixture(params=["memcached", "redis", "stub"])
def rate_limiter_backend(request: pytest.FixtureRequest) -> Any:
    """Each rate limiter backend, as in Dramatiq's suite; only the stub one runs here."""
    if request.param != "stub":
        pytest.skip(NOT_SERVED)
    return StubRateLimiterBackend()


@pytest.fixture
def pickle_encoder() -> Iterator[dramatiq.PickleEncoder]:
    """Dramatiq's pickle encoder for the test, then the previous encoder again."""
    previous = dramatiq.get_encoder()
    encoder = dramatiq.PickleEncoder()
    dramatiq.set_encoder(encoder)
    yield encoder
    dramatiq.set_encoder(previous)
