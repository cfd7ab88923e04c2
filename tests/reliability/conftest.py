"""Reliability fixtures: private RabbitMQ nodes and a database of their own, never the shared ones.

A scenario here may slow, reconfigure or stop its RabbitMQ, so it starts a
node of its own (`start_rabbit_node`).  Its workers get a database of their
own too (`reliability_database`): every worker sweeps the outbox of its
database, and a worker of the shared RabbitMQ (the integration tests' worker
lives for the whole run) would otherwise publish this suite's parked
messages to the shared server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import pytest
import sqlalchemy.exc
from sqlalchemy import create_engine, make_url, text

from db.migrate import upgrade_to_head
from settings import Settings
from tests.reliability.pg_cluster import PgCluster, postgres_bin
from tests.reliability.rabbit_node import RabbitNode, rabbitmq_bin
from tests.support import IN_CI


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} (CI needs it)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def start_rabbit_node() -> Iterator[Callable[..., RabbitNode]]:
    """Start private RabbitMQ nodes; each one started is stopped, by its own pid, at the end."""
    if rabbitmq_bin() is None:
        _missing("rabbitmq-server is not installed: no private RabbitMQ node")
    started: list[RabbitNode] = []

    def start(*, config: Mapping[str, str] | None = None, advanced: str = "[].") -> RabbitNode:
        node = RabbitNode(config=config, advanced=advanced)
        started.append(node)
        node.start()
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def start_pg_cluster() -> Iterator[Callable[[], PgCluster]]:
    """Start private PostgreSQL clusters; each is stopped (by its data dir) and removed after."""
    if postgres_bin() is None:
        _missing("PostgreSQL's pg_ctl is not installed: no private cluster")
    started: list[PgCluster] = []

    def start() -> PgCluster:
        cluster = PgCluster()
        started.append(cluster)
        cluster.init()
        cluster.start()
        return cluster

    yield start
    for cluster in started:
        cluster.destroy()


@pytest.fixture(scope="session")
def reliability_database(settings: Settings) -> Iterator[str]:
    """A database at head for this run's reliability scenarios; dropped when the run ends."""
    url = make_url(settings.database_url)
    url = url.set(database=f"{url.database}_rel")
    database_url = url.render_as_string(hide_password=False)
    try:
        upgrade_to_head(database_url)
    except sqlalchemy.exc.OperationalError as exc:
        _missing(f"PostgreSQL not reachable: {type(exc).__name__}")
    yield database_url
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    admin.dispose()
