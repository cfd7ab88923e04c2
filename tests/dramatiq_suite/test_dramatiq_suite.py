"""Dramatiq's own tests pass on Taskyard's broker as on Dramatiq's, but for the listed differences.

Given Dramatiq's test files for the installed version (its sdist, cached) and
fixtures that run each test that uses a broker on Dramatiq's plain
`RabbitmqBroker` and on `brokers.build_broker(settings)`,
When the suite runs once, on a database and RabbitMQ vhosts of its own,
Then every test that passes on the plain broker passes on Taskyard's, except
those listed in `differences.toml`, and no listed test passes on Taskyard's.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from sqlalchemy import create_engine, text

from db.migrate import upgrade_to_head
from tests.dramatiq_suite import harness
from tests.support import IN_CI, PG_SERVER_URL, require_servers

# The whole suite on both brokers, with margin for a slow machine (see docs/contributing.md, Tests).
SUITE_TIMEOUT_SECONDS = 1200

pytestmark = [
    pytest.mark.integration,
    pytest.mark.dramatiq_suite,
    pytest.mark.timeout(SUITE_TIMEOUT_SECONDS + 120),
]
logger = logging.getLogger(__name__)


@pytest.fixture
def suite_id() -> str:
    """This run's name for its database, vhosts and queue prefix."""
    return f"dqsuite{uuid.uuid4().hex[:10]}"


@pytest.fixture
def suite_database(suite_id: str) -> Iterator[str]:
    """A migrated database of the suite's own; dropped at the end."""
    url = f"{PG_SERVER_URL}/taskyard_test_{suite_id}"
    upgrade_to_head(url)
    yield url
    admin = create_engine(f"{PG_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "taskyard_test_{suite_id}" WITH (FORCE)'))
    admin.dispose()


def _vhost_url(broker_url: str, vhost: str) -> str:
    return broker_url.rsplit("/", 1)[0] + "/" + quote(vhost, safe="")


def test_dramatiq_suite_fails_on_taskyard_only_where_listed(
    suite_id: str, suite_database: str, tmp_path: Path
) -> None:
    """Run Dramatiq's suite on both brokers; only the listed tests may differ."""
    if os.environ.get("SKIP_DRAMATIQ_SUITE"):
        if IN_CI:
            pytest.fail("SKIP_DRAMATIQ_SUITE is for local runs only; CI runs Dramatiq's suite")
        pytest.skip("SKIP_DRAMATIQ_SUITE is set")
    require_servers()
    listed = harness.load_differences()
    try:
        tests = harness.fetch_tests()
    except harness.SuiteUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    broker_url = os.environ["BROKER_URL"]
    plain_vhost, taskyard_vhost = f"{suite_id}-plain", f"{suite_id}-taskyard"
    workdir = harness.stage(tests, tmp_path / "suite")
    env = {
        "DRAMATIQ_SUITE_PLAIN_URL": _vhost_url(broker_url, plain_vhost),
        "BROKER_URL": _vhost_url(broker_url, taskyard_vhost),
        "DATABASE_URL": suite_database,
        # No queue prefix: the vhost of its own already keeps the run apart, and a prefix
        # would rename a plain actor's queue (`default` -> `<prefix>default`), which
        # several of Dramatiq's tests read by its name.
    }
    user = urlsplit(broker_url).username or "guest"
    try:
        with harness.vhosts([plain_vhost, taskyard_vhost], user):
            outcomes = harness.run_suite(workdir, env, SUITE_TIMEOUT_SECONDS)
            first = harness.compare(outcomes, listed)
            # A problem must show again when its test runs again: Dramatiq's suite has
            # wall-clock bounds and joins that race delays, on either broker.
            again = first
            if first.suspects:
                rerun = harness.run_suite(
                    workdir, env, SUITE_TIMEOUT_SECONDS, first.suspects, name="rerun"
                )
                again = harness.compare(rerun, listed)
    except harness.SuiteUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    problems = harness.confirmed(first, again)
    logger.warning(
        "Dramatiq's suite: %d passed on the plain broker, %d on Taskyard's; %d listed",
        first.passed["plain"],
        first.passed["taskyard"],
        len(listed),
    )
    for note in [*first.notes, *(m for m in first.problems.values() if m not in problems)]:
        logger.warning("%s", note)
    assert not problems, "\n".join([*problems, f"(the run's logs: {workdir})"])
