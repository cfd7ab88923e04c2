"""Results read from the job record, on the in-process broker and SQLite; how a result is kept."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.results import ResultFailure, ResultMissing, Results, ResultTimeout
from dramatiq.results.backends import StubBackend
from sqlalchemy.orm import Session, sessionmaker

from actors.base import taskyard_actor
from middleware.actor_options import OptionRefused
from middleware.results import JobResults, TaskyardResults
from services.errors import PermanentError
from services.results import MAX_RESULT_BYTES, Kept, Outcome, error_parts, keep_result
from tests.unit.middleware.stub_world import drain, stub_world
from transport.rabbitmq import option_problem

log = logging.getLogger("test")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[StubBroker, Worker, sessionmaker[Session]]]:
    with stub_world(tmp_path, max_attempts=1) as (broker, worker, sessions, settings):
        broker.declare_queue(settings.tenant_queue(1))
        yield broker, worker, sessions


def test_keep_result_keeps_any_json_value_as_returned() -> None:
    for value in (1, "s", [1, 2], {"value": 1}, {"truncated": True, "bytes": 1}, True):
        assert keep_result(value, log) == Kept(value, None)
    assert keep_result(None, log) == Kept(None, None)
    # Values with a text of their own, as their text.
    assert keep_result({"at": dt.date(2024, 5, 1)}, log) == Kept({"at": "2024-05-01"}, None)


def test_keep_result_drops_what_is_not_json_or_too_large_and_says_why() -> None:
    kept = keep_result({"ids": {1, 2}}, log)
    assert kept.result is None and kept.dropped is not None
    assert kept.dropped.startswith("the result, of type dict, is not JSON")
    assert keep_result(float("nan"), log).dropped is not None
    big = keep_result("x" * MAX_RESULT_BYTES, log)
    assert big.result is None
    assert big.dropped == (
        f"the result, {MAX_RESULT_BYTES + 2} bytes of JSON, is over the limit of "
        f"{MAX_RESULT_BYTES} bytes: return ids, not data"
    )
    assert keep_result("x" * (MAX_RESULT_BYTES - 2), log).result is not None


def test_error_parts_reads_type_and_message_without_the_attempt_note() -> None:
    assert error_parts("ValueError: bad [attempt 3 was the last; gave up: x]") == (
        "ValueError",
        "bad",
    )
    assert error_parts("KeyError: 'a: b'") == ("KeyError", "'a: b'")
    assert error_parts("no type here") == ("", "no type here")
    assert error_parts(None) == ("", "(no error recorded)")


def _outcome(status: str, **fields: Any) -> Outcome:
    values: dict[str, Any] = {"result": None, "dropped": None, "error": None, **fields}
    return Outcome(message_id="m", actor="a", queue="q", status=status, **values)


def test_outcome_value_per_status() -> None:
    assert _outcome("succeeded", result=[1]).value() == [1]
    assert _outcome("skipped").value() is None
    assert not _outcome("queued").final and not _outcome("retrying").final
    with pytest.raises(ResultFailure) as dead:
        _outcome("dead", error="TenantDisabled: tenant 3 is disabled").value()
    assert (dead.value.orig_exc_type, dead.value.orig_exc_msg) == (
        "TenantDisabled",
        "tenant 3 is disabled",
    )
    with pytest.raises(ResultFailure) as expired:
        _outcome("expired", error="expired: 5 ms after it was sent").value()
    assert expired.value.orig_exc_type == "JobExpired"
    assert expired.value.orig_exc_msg == "expired: 5 ms after it was sent"
    with pytest.raises(ResultFailure) as cancelled:
        _outcome("cancelled").value()
    assert cancelled.value.orig_exc_type == "JobCancelled"


def test_get_result_on_the_stub_broker_reads_the_record(
    world: tuple[StubBroker, Worker, sessionmaker[Session]],
) -> None:
    broker, worker, _ = world
    release = threading.Event()

    @taskyard_actor(name="res_ok", broker=broker)
    def ok(tenant_id: int, x: int) -> dict[str, int]:
        release.wait(10)
        return {"double": 2 * x}

    @taskyard_actor(name="res_bad", broker=broker)
    def bad(tenant_id: int) -> None:
        raise PermanentError("nothing to do")

    good, failed = ok.send(tenant_id=1, x=4), bad.send(tenant_id=1)
    backend = broker.get_results_backend()
    assert isinstance(backend, JobResults)
    with pytest.raises(ResultMissing):
        good.get_result(backend=backend)
    with pytest.raises(ResultTimeout):
        good.get_result(backend=backend, block=True, timeout=0)
    release.set()
    drain(broker, worker)

    assert good.get_result(backend=backend) == {"double": 8}
    with pytest.raises(ResultFailure, match="actor raised PermanentError: nothing to do"):
        failed.get_result(backend=backend)


def test_a_results_middleware_added_by_hand_is_the_one_get_result_reads(
    world: tuple[StubBroker, Worker, sessionmaker[Session]],
) -> None:
    broker, worker, _ = world
    added = StubBackend()
    broker.add_middleware(Results(backend=added))

    @taskyard_actor(name="res_added", broker=broker, store_results=True)
    def answer(tenant_id: int) -> int:
        return 42

    message = answer.send(tenant_id=1)
    drain(broker, worker)

    assert broker.get_results_backend() is added
    # The added backend stored the value itself (not None), and the record has it too.
    assert added.get_result(message) == 42
    assert message.get_result(backend=JobResults(broker_engine(broker))) == 42


def broker_engine(broker: StubBroker) -> Any:
    for middleware in broker.middleware:
        if isinstance(middleware, TaskyardResults):
            return middleware.backend.engine
    raise AssertionError("no TaskyardResults")


def test_store_results_and_result_ttl_are_accepted_and_checked(
    world: tuple[StubBroker, Worker, sessionmaker[Session]],
) -> None:
    broker, _, _ = world
    taskyard_actor(name="res_opts", broker=broker, store_results=True, result_ttl=60_000)(
        lambda tenant_id: None
    )
    dramatiq.actor(actor_name="res_plain", broker=broker, store_results=False)(lambda: None)
    with pytest.raises(OptionRefused, match="store_results"):
        taskyard_actor(name="res_bad_opt", broker=broker, store_results="yes")(
            lambda tenant_id: None
        )
    with pytest.raises(OptionRefused, match="result_ttl"):
        taskyard_actor(name="res_bad_ttl", broker=broker, result_ttl=-1)(lambda tenant_id: None)
    # Messages may carry them too, as Dramatiq's may.
    assert option_problem("store_results", True) is None
    assert option_problem("result_ttl", 1000) is None


def test_bad_message_ids_and_option_values_are_refused_with_one_clear_error(
    world: tuple[StubBroker, Worker, sessionmaker[Session]],
) -> None:
    broker, _, _ = world
    backend = broker.get_results_backend()
    for message_id in ("'; drop table jobs; --", "x" * 5_000, "ü☃", ""):
        message = dramatiq.Message(
            queue_name="q", actor_name="a", args=(), kwargs={}, options={}, message_id=message_id
        )
        with pytest.raises(ResultMissing):
            backend.get_result(message)
    with pytest.raises(ResultMissing, match="NUL character"):
        backend.get_result(
            dramatiq.Message(
                queue_name="q", actor_name="a", args=(), kwargs={}, options={}, message_id="a\x00"
            ),
            block=True,
        )
    # On the wire: the consumer dead-letters a message with these (`invalid_options`).
    assert option_problem("store_results", "yes") is not None
    assert option_problem("result_ttl", 0) is not None
    assert option_problem("result_ttl", "1000") is not None
