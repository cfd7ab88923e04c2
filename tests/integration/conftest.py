"""Integration fixtures: a real `dramatiq actors` worker, tenants that commit, queue clean-up."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from services.tenants import create_tenant
from settings import Settings
from tests.support import (
    WorkerProcess,
    delete_prefix_queues,
    delete_queues,
    queue_family,
    worker_env,
)

pytestmark = pytest.mark.integration

PIPELINE_ACTORS = ["tests.integration.pipeline_actors"]
# How much of a worker's log a failed test shows.
WORKER_LOG_TAIL = 8000


@pytest.fixture(scope="session")
def start_worker(
    migrated_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes; every one still running is stopped at the end."""
    started: list[WorkerProcess] = []

    def start(threads: int = 4, **env: str) -> WorkerProcess:
        log = tmp_path_factory.mktemp("worker") / "worker.log"
        # The pipeline test's actors too: any worker serving every tenant may take its
        # messages while it runs, and must know them.
        worker = WorkerProcess(log, worker_env(**env), threads=threads, modules=PIPELINE_ACTORS)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    """A failed test that used a worker shows the end of that worker's log (CI keeps no files)."""
    report: pytest.TestReport = yield
    funcargs = getattr(item, "funcargs", {})
    if report.failed and call.when == "call":
        for name, value in funcargs.items():
            if isinstance(value, WorkerProcess) and value.log_path.exists():
                report.sections.append((f"{name}'s log, its end", value.log()[-WORKER_LOG_TAIL:]))
    return report


@pytest.fixture(scope="session")
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """One shared worker for the tests that need an ordinary one."""
    return start_worker()


@pytest.fixture
def make_tenant(sessions: sessionmaker[Session]) -> Callable[[str], int]:
    """Create a committed tenant with a unique name; returns its id."""
    counter = iter(range(1_000_000))

    def make(name: str = "tenant") -> int:
        with sessions.begin() as session:
            tenant = create_tenant(session, f"{name}-{time.monotonic_ns()}-{next(counter)}")
            return tenant.id

    return make


@pytest.fixture(scope="session", autouse=True)
def delete_test_queues(settings: Settings, engine: Engine) -> Iterator[None]:
    """Delete this run's queues from RabbitMQ when the run ends."""
    yield
    delete_prefix_queues(settings, engine)


@pytest.fixture
def queue(settings: Settings) -> Iterator[str]:
    """A queue name of this run that no worker consumes; it and its .DQ/.XQ queues are
    deleted afterwards."""
    name = f"{settings.queue_prefix}scratch.{uuid.uuid4().hex[:8]}"
    yield name
    delete_queues(settings.broker_url, queue_family([name]))
