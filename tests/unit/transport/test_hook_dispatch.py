"""transport/hooks.py: a broker calls exactly the hooks Dramatiq would, and skips the no-op ones."""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, SkipMessage
from dramatiq.worker import Worker

from brokers import TaskyardStubBroker
from transport.hooks import defines_hook
from transport.rabbitmq import TaskyardRabbitmqBroker


class Recorder(Middleware):
    """Records every hook it defines, with its own name."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def before_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        self.calls.append(f"{self.name}.before_enqueue")

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        self.calls.append(f"{self.name}.after_enqueue")

    def before_process_message(self, broker: Any, message: Any) -> None:
        self.calls.append(f"{self.name}.before_process_message")

    def after_process_message(self, broker: Any, message: Any, **kwargs: Any) -> None:
        self.calls.append(f"{self.name}.after_process_message")

    def before_ack(self, broker: Any, message: Any) -> None:
        self.calls.append(f"{self.name}.before_ack")

    def after_ack(self, broker: Any, message: Any) -> None:
        self.calls.append(f"{self.name}.after_ack")


class OnlyAfter(Middleware):
    """Defines one hook; every other is Dramatiq's no-op default."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def after_process_message(self, broker: Any, message: Any, **kwargs: Any) -> None:
        self.calls.append("only_after.after_process_message")


class Empty(Middleware):
    """Defines no hook at all."""


def _run_one_job(broker_class: type[StubBroker]) -> list[str]:
    calls: list[str] = []
    broker = broker_class(
        middleware=[Recorder("a", calls), Empty(), OnlyAfter(calls), Recorder("b", calls)]
    )
    broker.emit_after("process_boot")

    @dramatiq.actor(broker=broker, queue_name="hooks")
    def job() -> None:
        calls.append("body")

    job.send()
    worker = Worker(broker, worker_threads=1)
    worker.start()
    try:
        broker.join("hooks")
        worker.join()
    finally:
        worker.stop()
    return calls


def test_a_job_meets_the_same_hooks_in_the_same_order_as_under_dramatiqs_dispatch() -> None:
    taskyard = _run_one_job(TaskyardStubBroker)
    assert taskyard == _run_one_job(StubBroker)
    # The order itself: before-hooks in the list's order, after-hooks reversed.
    assert taskyard[:4] == [
        "a.before_enqueue",
        "b.before_enqueue",
        "b.after_enqueue",
        "a.after_enqueue",
    ]
    assert "only_after.after_process_message" in taskyard
    assert taskyard.index("b.after_process_message") < taskyard.index(
        "only_after.after_process_message"
    )


def test_only_the_middleware_defining_a_hook_are_called_for_it() -> None:
    calls: list[str] = []
    only_after, empty = OnlyAfter(calls), Empty()
    broker = TaskyardStubBroker(middleware=[empty, only_after])
    assert broker._hooked("after_process_message") == (only_after,)
    assert broker._hooked("before_process_message") == ()
    assert not defines_hook(empty, "before_ack")
    assert defines_hook(only_after, "after_process_message")


def test_a_hook_set_on_the_instance_is_called() -> None:
    calls: list[str] = []
    empty = Empty()
    empty.before_ack = lambda broker, message: calls.append("instance.before_ack")  # type: ignore[method-assign]
    broker = TaskyardStubBroker(middleware=[empty])
    broker.emit_before("ack", object())
    assert calls == ["instance.before_ack"]


def test_middleware_added_after_a_dispatch_is_called_from_then_on() -> None:
    calls: list[str] = []
    broker = TaskyardStubBroker(middleware=[OnlyAfter(calls)])
    broker.emit_before("ack", object())
    broker.add_middleware(Recorder("late", calls))
    broker.emit_before("ack", object())
    assert calls == ["late.before_ack"]
    # A list replaced whole is read again too.
    broker.middleware = [Recorder("new", calls)]
    broker.emit_after("ack", object())
    assert calls == ["late.before_ack", "new.after_ack"]


class Skipper(Middleware):
    def before_process_message(self, broker: Any, message: Any) -> None:
        raise SkipMessage()


class Broken(Middleware):
    def before_ack(self, broker: Any, message: Any) -> None:
        raise RuntimeError("boom")

    def after_ack(self, broker: Any, message: Any) -> None:
        raise RuntimeError("boom after")


def test_errors_are_handled_as_dramatiq_handles_them(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    broker = TaskyardStubBroker(middleware=[Broken(), Skipper(), Recorder("next", calls)])
    # A MiddlewareError (SkipMessage) stops the before-hooks and reaches the worker.
    with pytest.raises(SkipMessage):
        broker.emit_before("process_message", object())
    assert calls == []
    # Any other failure is logged, and the hooks after it still run.
    with caplog.at_level(logging.CRITICAL):
        broker.emit_before("ack", object())
        broker.emit_after("ack", object())
    assert calls == ["next.before_ack", "next.after_ack"]
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(failures) == 2
    assert failures[0].startswith("Unexpected failure in before_ack of ")


def test_both_of_taskyards_brokers_dispatch_this_way() -> None:
    for broker_class in (TaskyardStubBroker, TaskyardRabbitmqBroker):
        assert broker_class.emit_before.__module__ == "transport.hooks"
        assert broker_class.emit_after.__module__ == "transport.hooks"
