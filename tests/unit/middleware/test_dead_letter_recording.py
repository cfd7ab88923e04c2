"""Dead letters recorded on the way out: the DB session, nacked messages, refused bodies."""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dramatiq
import marshmallow
import pytest
from dramatiq import Message, Worker
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.encoder import JSONEncoder
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from actors.base import taskyard_actor
from brokers import build_broker
from db.migrate import upgrade_to_head
from db.models import DeadLetter
from db.session import make_engine, make_session_factory
from middleware.db_session import find_middleware
from middleware.dead_letters import DeadLetters
from services.errors import PermanentError, TransientError
from services.tenants import create_tenant
from settings import Settings
from transport.rabbitmq import MESSAGE_FIELDS, Refusal, ScreeningConsumer, publish_now, screen
from transport.rabbitmq import TaskyardRabbitmqBroker as RabbitBroker

QUEUE = "tenant.1"


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    """A migrated SQLite database's session factory, with tenant 1."""
    url = f"sqlite:///{tmp_path / 'taskyard.sqlite3'}"
    upgrade_to_head(url)
    sessions = make_session_factory(make_engine(Settings(database_url=url)))
    with sessions.begin() as session:
        create_tenant(session, "acme")
    return sessions


@pytest.fixture
def stub(sessions: sessionmaker[Session]) -> Iterator[StubBroker]:
    """A stub broker wired like production on that database, with a running worker."""
    url = str(sessions.kw["bind"].url)
    settings = Settings(broker_url="stub://", database_url=url, min_backoff_ms=1, max_backoff_ms=5)
    broker = build_broker(settings)
    assert isinstance(broker, StubBroker)
    broker.declare_queue(QUEUE)
    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    yield broker
    worker.stop()
    broker.close()


def run(broker: StubBroker, fn: Callable[..., Any], **options: Any) -> str:
    """Declare `fn` as an actor, send it for tenant 1, run everything; returns the message id."""
    actor = taskyard_actor(name=fn.__name__, broker=broker, **options)(fn)
    message = actor.send(tenant_id=1)
    for _ in range(3):
        broker.join(QUEUE, fail_fast=False, timeout=10_000)
    return message.message_id


def dead_letter(sessions: sessionmaker[Session], message_id: str) -> DeadLetter:
    """The dead letter of one message."""
    with sessions() as session:
        row = session.get(DeadLetter, message_id)
        assert row is not None, f"no dead letter for {message_id}"
        return row


def test_permanent_failure_keeps_a_dead_letter_with_its_traceback(
    stub: StubBroker, sessions: sessionmaker[Session]
) -> None:
    def hopeless(tenant_id: int) -> None:
        raise PermanentError("cannot be done", reason="hopeless")

    row = dead_letter(sessions, run(stub, hopeless))

    assert (row.reason, row.attempts, row.actor, row.tenant_id) == ("hopeless", 1, "hopeless", 1)
    assert row.error == "PermanentError: cannot be done"
    assert "raise PermanentError" in (row.traceback or "")
    assert row.message is not None and row.message["kwargs"] == {"tenant_id": 1}
    assert row.queue == QUEUE and row.requeued_at is None


def test_last_failed_attempt_is_kept_as_max_attempts_exceeded(
    stub: StubBroker, sessions: sessionmaker[Session]
) -> None:
    def always_down(tenant_id: int) -> None:
        raise TransientError("still down")

    row = dead_letter(sessions, run(stub, always_down))

    assert (row.reason, row.attempts) == ("max_attempts_exceeded", 3)
    assert "still down" in (row.traceback or "")


def test_arguments_the_schema_rejects_are_kept_as_invalid_arguments(
    stub: StubBroker, sessions: sessionmaker[Session]
) -> None:
    class Args(marshmallow.Schema):
        tenant_id = marshmallow.fields.Integer(required=True)
        name = marshmallow.fields.String(required=True)

    actor = taskyard_actor(name="named", broker=stub, schema=Args)(lambda **kw: None)
    # Sent around the producer's check, as a foreign producer would.
    message = actor.message(tenant_id=1, name="x").copy(kwargs={"tenant_id": 1, "name": 5})
    publish_now(stub, message)
    stub.join(QUEUE, fail_fast=False, timeout=10_000)

    assert dead_letter(sessions, message.message_id).reason == "invalid_arguments"


def test_message_for_an_unknown_actor_is_kept_when_nacked(
    stub: StubBroker, sessions: sessionmaker[Session]
) -> None:
    message = Message(
        queue_name=QUEUE, actor_name="nobody", args=(), kwargs={"tenant_id": 1}, options={}
    )
    publish_now(stub, message)
    stub.join(QUEUE, fail_fast=False, timeout=10_000)

    row = dead_letter(sessions, message.message_id)
    assert (row.reason, row.actor, row.tenant_id, row.attempts) == ("unknown_actor", "nobody", 1, 0)
    assert "ActorNotFound" in (row.error or "")
    assert row.message is not None and row.message["actor_name"] == "nobody"


def test_nack_with_the_database_away_is_logged_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> Session:
        raise ConnectionError("database away")

    middleware = DeadLetters(session_factory=SimpleNamespace(begin=broken))  # type: ignore[arg-type]
    message = Message(queue_name=QUEUE, actor_name="x", args=(), kwargs={}, options={})
    proxy = MessageProxy(message)

    with caplog.at_level(logging.ERROR):
        middleware.before_nack(StubBroker(), proxy)

    assert "goes only to RabbitMQ's tenant.1.XQ" in caplog.text


def test_refused_body_is_kept_raw_under_a_new_id_and_credited_to_no_tenant(
    sessions: sessionmaker[Session],
) -> None:
    middleware = DeadLetters(session_factory=sessions)
    claimed = json.dumps({"message_id": "m-1", "actor_name": "a", "kwargs": {"tenant_id": 1}})

    middleware.record_poison(QUEUE, claimed.encode(), "undecodable", "missing fields")
    middleware.record_poison(QUEUE, claimed.encode(), "undecodable", "missing fields")
    middleware.record_poison(QUEUE, b"\x80\x04\x95pickle\x00", "undecodable", "not JSON")

    with sessions() as session:
        rows = list(session.scalars(select(DeadLetter)))
    # The claimed id is untrusted: never the key (it could squat another job's dead letter)
    assert len(rows) == 3 and "m-1" not in {row.message_id for row in rows}
    claiming = [row for row in rows if row.raw_body == claimed]
    assert len(claiming) == 2
    assert all("claims message id 'm-1'" in (row.error or "") for row in claiming)
    # The body names tenant 1, but nothing routed it there: it is nobody's
    assert {(row.actor, row.tenant_id, row.attempts) for row in claiming} == {("a", None, 0)}
    assert all(row.message is None and row.reason == "undecodable" for row in rows)


def body(queue: str = QUEUE, **changes: Any) -> bytes:
    """A valid message body for `queue`, with some fields changed (None drops one)."""
    fields = Message(
        queue_name=queue, actor_name="a", args=(), kwargs={"tenant_id": 1}, options={}
    ).asdict()
    fields.update(changes)
    return json.dumps({k: v for k, v in fields.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("raw", "reason", "error_part"),
    [
        (b"not json", "undecodable", "JSONDecodeError"),
        (pickle.dumps({"actor_name": "a"}), "undecodable", "UnicodeDecodeError"),
        (b"\xff\xfe{}", "undecodable", "UnicodeDecodeError"),
        (b"[1, 2]", "undecodable", "a JSON list"),
        (b'"text"', "undecodable", "a JSON str"),
        (body(options=None), "undecodable", "missing ['options']"),
        (body(extra=1), "undecodable", "unexpected ['extra']"),
        (body(kwargs=[]), "undecodable", "kwargs is a JSON list"),
        (body(message_timestamp=True), "undecodable", "message_timestamp is a JSON bool"),
        (body(message_id="x" * 37), "undecodable", "message_id must have"),
        (body(kwargs={"tenant_id": 1, "s": "a\x00b"}), "undecodable", "NUL"),
        (body(kwargs={"tenant_id": 2**70}), "undecodable", "64 bits"),
        (body().replace(b"{}", b'{"x": NaN}'), "undecodable", "NaN"),
        (body().replace(b"{}", b'{"x": 1e999}'), "undecodable", "out of range"),
        (body(queue="tenant.2"), "queue_mismatch", "arrived on 'tenant.1'"),
        (b"{" + b" " * 2_000 + b"}", "too_large", "over the limit of 1000"),
    ],
)
def test_screen_refuses_poison_bodies(raw: bytes, reason: str, error_part: str) -> None:
    verdict = screen(raw, queue_name=QUEUE, max_bytes=1_000)

    assert isinstance(verdict, Refusal)
    assert verdict.reason == reason and error_part in verdict.error


def test_screen_decodes_a_valid_message_as_dramatiq_would() -> None:
    raw = body(args=[1], kwargs={"tenant_id": 1, "x": [1.5]})
    assert screen(raw, queue_name=QUEUE, max_bytes=1_000) == Message.decode(raw)


def test_only_json_is_on_the_wire() -> None:
    assert isinstance(dramatiq.get_encoder(), JSONEncoder)
    assert set(MESSAGE_FIELDS) == {f.name for f in dataclasses.fields(Message)}


def test_consumer_nacks_and_reports_a_poison_body_then_goes_on() -> None:
    # Given a consumer (its pika connection stubbed) with a poison body, then a valid one
    reported: list[tuple[str, bytes, str, str]] = []
    broker = RabbitBroker(url="amqp://127.0.0.1:1/%2F", on_poison=lambda *a: reported.append(a))
    nacked: list[tuple[int, bool]] = []
    consumer = ScreeningConsumer.__new__(ScreeningConsumer)
    consumer.broker, consumer.queue_name, consumer.known_tags = broker, QUEUE, set()
    consumer.connection = SimpleNamespace(add_callback_threadsafe=lambda callback: callback())
    consumer.channel = SimpleNamespace(basic_nack=lambda t, requeue: nacked.append((t, requeue)))
    method = [SimpleNamespace(delivery_tag=tag, redelivered=False) for tag in (1, 2)]
    consumer.iterator = iter([(method[0], None, b"not json"), (method[1], None, body())])

    # When it is read twice
    first, second = next(consumer), next(consumer)

    # Then the poison body is reported and nacked, and the valid message comes through
    assert first is None and nacked == [(1, False)]
    assert [(q, r) for q, _, r, _ in reported] == [(QUEUE, "undecodable")]
    assert second is not None and second.actor_name == "a" and consumer.known_tags == {2}


def test_rabbitmq_broker_hands_refused_bodies_to_dead_letters(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lazy.db'}"
    broker = build_broker(Settings(broker_url="amqp://127.0.0.1:1/%2F", database_url=url))

    assert isinstance(broker, RabbitBroker)
    dead_letters = find_middleware(broker, DeadLetters)
    assert dead_letters is not None and broker.on_poison == dead_letters.record_poison
