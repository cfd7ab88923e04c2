"""The engine is one object, wired when built; its middleware order is checked, not commented."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from brokers import build_broker, build_runtime
from db.session import make_engine, make_session_factory
from middleware.runtime import ORDER, check_order, runtime_of
from settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def stub_settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(
        Settings(), broker_url="stub://", database_url=f"sqlite:///{tmp_path / 'rt.db'}"
    )


def test_the_broker_carries_its_runtime_and_each_part_is_handed_what_it_uses(
    tmp_path: Path,
) -> None:
    broker = build_broker(stub_settings(tmp_path))
    runtime = runtime_of(broker)

    assert runtime is not None
    assert list(runtime.middleware) == list(broker.middleware)
    assert runtime.engine.routing is runtime.routing
    assert runtime.engine.policy is runtime.policy
    assert runtime.engine.outbox is runtime.outbox and runtime.policy.outbox is runtime.outbox
    assert runtime.engine.state is runtime.state is runtime.routing.state
    broker.close()


def test_a_middleware_list_that_breaks_an_ordering_rule_refuses_to_build(tmp_path: Path) -> None:
    settings = stub_settings(tmp_path)
    runtime = build_runtime(settings, make_session_factory(make_engine(settings)))
    middleware = list(runtime.middleware)
    check_order(middleware)  # the stack as built keeps every rule

    for rule in ORDER:
        names = [type(m).__name__ for m in middleware]
        swapped = list(middleware)
        i, j = names.index(rule.first), names.index(rule.then)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        with pytest.raises(ValueError, match=f"{rule.first} must come before {rule.then}"):
            check_order(swapped)


def test_no_middleware_or_actor_looks_another_middleware_up() -> None:
    # The runtime hands each part what it uses; nothing searches broker.middleware.
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("middleware", "actors")
        for path in sorted((ROOT / folder).glob("*.py"))
        if "broker.middleware" in path.read_text() or "find_middleware(" in path.read_text()
    ]
    allowed = {
        "middleware/db_session.py",  # defines find_middleware for the tests' use
        # finds a Results middleware added by hand, which no runtime was handed
        "middleware/results.py",
    }
    assert [o for o in offenders if o not in allowed] == []


def test_importing_the_actors_connects_to_nothing_and_starts_no_thread() -> None:
    # Servers that are not there: an import that tried to reach one would fail or hang.
    script = "import threading, actors\nprint(sorted(t.name for t in threading.enumerate()))\n"
    env = {
        **os.environ,
        "BROKER_URL": "amqp://guest:guest@127.0.0.1:1/%2F",
        "DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/none",
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['MainThread']"
