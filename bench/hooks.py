"""`python -m bench.hooks`: what calling a job's middleware hooks costs, dispatch alone.

Builds Taskyard's middleware stack as a worker does (`brokers.build_runtime`,
nothing started, nothing connected) and puts, for each of its middleware, a
stand-in defining the same hooks with empty bodies, so that only the dispatch
is timed.  Then, in this one thread, it emits a job's six signals (enqueue,
process_message and ack, before and after) `--count` times through two
in-process brokers holding that stack: Dramatiq's own dispatch (every
middleware, every signal) and Taskyard's (`transport.hooks.HookDispatch`:
only where a middleware defines the hook).  Prints the hooks called per job
and this process's CPU per job each way, `--runs` times, interleaved.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware

from bench.env import positive
from brokers import build_runtime
from db.session import make_engine, make_session_factory
from settings import load_settings
from transport.hooks import HookDispatch, defines_hook

# A job's signals, as the worker and the consumer emit them (with their arguments).
SIGNALS: tuple[tuple[str, str, tuple[Any, ...], dict[str, Any]], ...] = (
    ("before", "enqueue", (None,), {}),
    ("after", "enqueue", (None,), {}),
    ("before", "process_message", (), {}),
    ("after", "process_message", (), {"result": None}),
    ("before", "ack", (), {}),
    ("after", "ack", (), {}),
)


# The hooks those signals call.
HOOKS = tuple(f"{when}_{signal}" for when, signal, _args, _kwargs in SIGNALS)


def _nothing(self: Any, *args: Any, **kwargs: Any) -> None:
    return None


def stand_ins(stack: list[Middleware]) -> list[Middleware]:
    """For each middleware, one of a class defining the same hooks as it, doing nothing."""
    made: list[Middleware] = []
    for middleware in stack:
        body = {hook: _nothing for hook in HOOKS if defines_hook(middleware, hook)}
        made.append(type(f"{type(middleware).__name__}Shape", (Middleware,), body)())
    return made


class PlainBroker(StubBroker):
    """Dramatiq's in-process broker: Dramatiq's own dispatch."""


class DispatchingBroker(HookDispatch, StubBroker):
    """The same, with Taskyard's dispatch."""


def hooks_called(broker: StubBroker) -> int:
    """How many hooks one job's signals call through `broker` (as its dispatch chooses them)."""
    if isinstance(broker, HookDispatch):
        return sum(len(broker._hooked(hook)) for hook in HOOKS)
    return len(broker.middleware) * len(HOOKS)


def job_loop(broker: StubBroker, message: Any, count: int) -> float:
    """CPU seconds for `count` jobs' signals through `broker`."""
    emits: list[Callable[..., None]] = [
        broker.emit_before if when == "before" else broker.emit_after
        for when, _signal, _args, _kwargs in SIGNALS
    ]
    calls = [
        (emit, signal, (message, *args), kwargs)
        for emit, (_when, signal, args, kwargs) in zip(emits, SIGNALS, strict=True)
    ]
    started = time.process_time()
    for _ in range(count):
        for emit, signal, args, kwargs in calls:
            emit(signal, *args, **kwargs)
    return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hooks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--count", type=positive, default=100_000)
    parser.add_argument("--runs", type=positive, default=3)
    args = parser.parse_args(argv)
    settings = load_settings()
    # The engine is made, never connected: building the stack opens nothing.
    runtime = build_runtime(settings, make_session_factory(make_engine(settings)))
    stack = stand_ins(list(runtime.middleware))
    message = MessageProxy(Message("bench", "bench_noop", (), {}, {}))
    ways = {
        "dramatiq's dispatch": PlainBroker(middleware=stack),
        "taskyard's dispatch": DispatchingBroker(middleware=stack),
    }
    print(f"{len(stack)} middleware; {args.count:,} jobs a run, {len(SIGNALS)} signals a job")
    for run in range(1, args.runs + 1):
        for name, broker in ways.items():
            seconds = job_loop(broker, message, args.count)
            print(
                f"run {run} {name}: {hooks_called(broker)} hooks called a job,"
                f" {seconds / args.count * 1e6:.2f} µs CPU a job"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
