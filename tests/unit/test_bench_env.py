"""The bench refuses to start, with what to do, when a server it needs does not answer."""

from __future__ import annotations

import pytest

from bench import env


def test_unreachable_names_each_server_and_the_variable_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given nothing listening on ports 1 and 2 of localhost
    monkeypatch.setattr(env, "BROKER_URL", "amqp://guest:guest@127.0.0.1:1/%2F")
    monkeypatch.setattr(env, "PG_SERVER_URL", "postgresql+psycopg2://postgres@127.0.0.1:2")
    # When the bench checks its servers
    problems = env.unreachable()
    # Then both are named, with where and what to set
    assert len(problems) == 2
    assert problems[0].startswith("PostgreSQL at 127.0.0.1:2 does not answer")
    assert problems[0].endswith("start it or set BENCH_PG_URL")
    assert problems[1].startswith("RabbitMQ at 127.0.0.1:1 does not answer")
    assert problems[1].endswith("start it or set BROKER_URL")
