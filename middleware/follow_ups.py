"""Callbacks and pipelines: a job's follow-up messages, held in the job's own transaction.

Dramatiq's Callbacks and Pipelines send the next message from an after-hook,
once the job is over: a crash between the acknowledgement and that send loses
the next stage, and a crash between the send and the acknowledgement runs the
stage again and sends its next stage twice.  Here the engine holds a Taskyard
actor's follow-ups while the job's transaction is open (`hold_after_success`,
`hold_after_failure`): they are written with the record's final statement and
published once it commits, so a stage's commit and its next stage's send
happen together or not at all.

A follow-up runs in the world of the job that sends it: a tenant's job only
to actors of the same tenant (the tenant is the job's, from its route, never
from bytes in the message), a system job only to system actors, a plain
Dramatiq actor only to plain actors, which are sent as Dramatiq sends them.
`follow_up_refusal` is that rule, checked at send, by the consumer before a
body becomes a job, and by the engine before the job runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dramatiq import Actor, Message
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Callbacks, Pipelines

from middleware.actor_options import is_taskyard
from services.errors import PermanentError, valid_tenant_id
from services.groups import MAX_GROUP_ID_CHARS
from transport.rabbitmq import DEFAULT_MAX_MESSAGE_BYTES, Refusal

if TYPE_CHECKING:
    from middleware.context import MessageContext
    from middleware.outbox import Outbox

# The keyword under which a pipeline hands the previous stage's result to a Taskyard
# actor (Dramatiq appends it to the positional arguments, which Taskyard's actors refuse).
PIPE_RESULT = "pipe_result"
CALLBACK_OPTIONS = ("on_success", "on_failure")
# What Dramatiq's group.run() puts on each member (the last stage, for a pipeline).
GROUP_OPTION = "group_completion_uuid"
GROUP_CALLBACKS_OPTION = "group_completion_callbacks"
# A group's completion sends at most this many callbacks.
MAX_GROUP_CALLBACKS = 100
# A follow-up is sent as a message; over the consumer's limit it would only be refused there.
MAX_FOLLOW_UP_BYTES = DEFAULT_MAX_MESSAGE_BYTES

# (kind, tenant): kind is "tenant", "system" or "dramatiq"; tenant is None but for "tenant".
World = tuple[str, Any]
# A follow-up to send and its delay (ms; None: at once).
FollowUp = tuple[Message[Any], int | None]


class FollowUpRefused(PermanentError, ValueError):
    """A callback or pipeline stage that may not be sent from this job (`reason` says why)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.error, reason=refusal.reason)


def world_of(actor: Actor[Any, Any], kwargs: Mapping[str, Any]) -> World:
    """The world a message of `actor` with `kwargs` runs in: its tenant, system or plain."""
    if not is_taskyard(actor):
        return ("dramatiq", None)
    if actor.options.get("tenant_scoped"):
        tenant_id = kwargs.get("tenant_id")
        # Compared by value: True == 1 in Python, and no tenant is called True.
        return ("tenant", tenant_id if valid_tenant_id(tenant_id) else f"invalid {tenant_id!r}")
    return ("system", None)


def _describe(world: World) -> str:
    kind, tenant = world
    if kind == "tenant":
        return f"tenant {tenant!r}"
    return "a system actor" if kind == "system" else "a plain Dramatiq actor"


def follow_up_refusal(
    actors: Mapping[str, Actor[Any, Any]], actor: Actor[Any, Any], message: Message[Any]
) -> Refusal | None:
    """Why `message`'s callbacks or later pipeline stages may not follow its job (None: they may).

    Every callback (`on_success`, `on_failure`, the message's or its actor's)
    and every later stage of its pipeline must be an actor known here, of the
    job's own world: the same tenant for a tenant's job (a callback gets the
    job's tenant; a stage must name it), system for system, plain for plain.
    """
    world = world_of(actor, message.kwargs)
    stage_actor, options, stage = actor, message.options, 1
    while True:
        where = f"stage {stage} ({stage_actor.actor_name}): " if stage > 1 else ""
        for option in CALLBACK_OPTIONS:
            name = options.get(option) or stage_actor.options.get(option)
            if name is None:
                continue
            target = actors.get(name) if isinstance(name, str) else None
            if target is None:
                return Refusal("unknown_actor", f"{where}{option} names no known actor: {name!r}")
            if world_of(target, {"tenant_id": world[1]}) != world:
                return Refusal(
                    "invalid_options",
                    f"{where}{option} {name} is not an actor of {_describe(world)}; a callback "
                    "stays within the world of the job that sends it",
                )
        refused = _group_refusal(actors, options, world, where)
        if refused is not None:
            return refused
        data = options.get("pipe_target")
        if data is None:
            return None
        stage += 1
        what = f"stage {stage} of the pipeline"
        refused = _message_data_refusal(actors, data, world, what)
        if refused is not None:
            return refused
        stage_actor, options = actors[data["actor_name"]], data["options"]


def _message_data_refusal(
    actors: Mapping[str, Actor[Any, Any]], data: Any, world: World, what: str
) -> Refusal | None:
    """Why a message carried as data (a pipeline stage, a group callback) may not be sent."""
    if not (
        isinstance(data, dict)
        and isinstance(data.get("kwargs"), dict)
        and isinstance(data.get("options"), dict)
        and isinstance(data.get("args"), list | tuple)
    ):
        return Refusal("invalid_options", f"{what} is not a message")
    name = data.get("actor_name")
    target = actors.get(name) if isinstance(name, str) else None
    if target is None:
        return Refusal("unknown_actor", f"{what} names no known actor: {name!r}")
    if is_taskyard(target) and data["args"]:
        return Refusal(
            "invalid_arguments", f"{what}: {target.actor_name} takes keyword arguments only"
        )
    target_world = world_of(target, data["kwargs"])
    if target_world != world:
        both_tenants = world[0] == target_world[0] == "tenant"
        return Refusal(
            "tenant_mismatch" if both_tenants else "invalid_options",
            f"{what} ({target.actor_name}) runs for "
            f"{_describe(target_world)}, not for {_describe(world)} as the job sending it",
        )
    return None


def _group_refusal(
    actors: Mapping[str, Actor[Any, Any]], options: Mapping[str, Any], world: World, where: str
) -> Refusal | None:
    """Why a message's group options (its group's id, its completion callbacks) are refused."""
    group_id = options.get(GROUP_OPTION)
    callbacks = options.get(GROUP_CALLBACKS_OPTION)
    if group_id is None and callbacks is None:
        return None
    if not isinstance(group_id, str) or not 0 < len(group_id) <= MAX_GROUP_ID_CHARS:
        return Refusal(
            "invalid_options",
            f"{where}{GROUP_OPTION} must be a group's id of 1 to {MAX_GROUP_ID_CHARS} characters",
        )
    if not isinstance(callbacks, list) or not 0 < len(callbacks) <= MAX_GROUP_CALLBACKS:
        return Refusal(
            "invalid_options",
            f"{where}{GROUP_CALLBACKS_OPTION} must be a list of 1 to {MAX_GROUP_CALLBACKS} "
            "messages",
        )
    for index, data in enumerate(callbacks, start=1):
        refused = _message_data_refusal(
            actors, data, world, f"{where}group completion callback {index}"
        )
        if refused is not None:
            return refused
    return None


def check_follow_ups(broker: Broker, message: Message[Any]) -> None:
    """Refuse at send (`FollowUpRefused`) a message whose follow-ups may not follow its job."""
    refused = follow_up_refusal(broker.actors, broker.get_actor(message.actor_name), message)
    if refused is not None:
        raise FollowUpRefused(refused)


def _checked(follow_up: Message[Any], sender: str) -> Message[Any]:
    """`follow_up`, or `FollowUpRefused` when it cannot travel (not JSON, over the size limit)."""
    try:
        size = len(follow_up.encode())
    except (TypeError, ValueError) as exc:
        raise FollowUpRefused(
            Refusal(
                "follow_up_refused",
                f"{sender}'s result cannot be passed to {follow_up.actor_name}: not JSON ({exc})",
            )
        ) from None
    if size > MAX_FOLLOW_UP_BYTES:
        raise FollowUpRefused(
            Refusal(
                "follow_up_refused",
                f"the message {sender} sends to {follow_up.actor_name} would be {size} bytes, "
                f"over the limit of {MAX_FOLLOW_UP_BYTES}: return ids, not data",
            )
        )
    return follow_up


class FollowUps(Callbacks, Pipelines):
    """Sends a job's callbacks and next pipeline stage; for Taskyard's actors, in its transaction.

    Every job's follow-ups, a plain Dramatiq actor's included, are held by the
    engine (`DbSession.run`) in the job's transaction; Dramatiq's after-hooks,
    which would send them again after the acknowledgement, are switched off.
    A Dramatiq subclass, so `add_middleware(..., after=Callbacks)` finds it.
    """

    def __init__(self, *, outbox: Outbox | None = None) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.outbox = outbox

    @property
    def actor_options(self) -> set[str]:
        """Dramatiq's callback and pipeline options."""
        return {"on_success", "on_failure", "pipe_ignore", "pipe_target"}

    def refusal(
        self, broker: Broker, actor: Actor[Any, Any], message: Message[Any]
    ) -> Refusal | None:
        """Why `message`'s follow-ups may not be sent from its job (`follow_up_refusal`)."""
        return follow_up_refusal(broker.actors, actor, message)

    def after_success(
        self,
        broker: Broker,
        message: Message[Any],
        result: Any,
        tenant_id: int | None,
        *,
        pipe: bool = True,
    ) -> list[FollowUp]:
        """What a job's success sends: its on_success callback, its pipeline's next stage.

        A callback gets Dramatiq's arguments, (message_data, result); a
        Taskyard actor gets them as keywords, with `tenant_id` the job's own.
        `pipe=False`: not the next stage (Dramatiq's Pipelines skips a failed message).
        """
        actor = broker.get_actor(message.actor_name)
        sends: list[FollowUp] = []
        name = message.options.get("on_success") or actor.options.get("on_success")
        if name:
            sends.append((self._callback(broker, name, message, "result", result, tenant_id), None))
        data = message.options.get("pipe_target")
        if data is not None and pipe:
            sends.append(self._next_stage(broker, actor, data, result))
        return sends

    def after_failure(
        self, broker: Broker, message: Message[Any], exception: BaseException, tenant_id: int | None
    ) -> list[FollowUp]:
        """What a job that failed for good sends: its on_failure callback, if any."""
        actor = broker.get_actor(message.actor_name)
        name = message.options.get("on_failure") or actor.options.get("on_failure")
        if not name:
            return []
        exception_data = {"type": type(exception).__name__, "message": str(exception)}
        callback = self._callback(
            broker, name, message, "exception_data", exception_data, tenant_id
        )
        return [(callback, None)]

    def hold_after_success(
        self,
        broker: Broker,
        ctx: MessageContext,
        message: Message[Any],
        result: Any,
        tenant_id: int | None,
    ) -> None:
        """Hold what a Taskyard job's success sends, to be written in its transaction."""
        self._hold(broker, ctx, self.after_success(broker, message, result, tenant_id))

    def hold_after_failure(
        self,
        broker: Broker,
        ctx: MessageContext,
        message: Message[Any],
        exception: BaseException,
        tenant_id: int | None,
    ) -> None:
        """Hold a Taskyard job's on_failure callback in the transaction recording its death."""
        self._hold(broker, ctx, self.after_failure(broker, message, exception, tenant_id))

    def _hold(self, broker: Broker, ctx: MessageContext, sends: list[FollowUp]) -> None:
        if sends and self.outbox is None:
            raise RuntimeError("follow-ups of a Taskyard job need the runtime's outbox")
        for follow_up, delay in sends:
            assert self.outbox is not None
            self.outbox.hold(broker, ctx, follow_up, delay)

    def _callback(
        self,
        broker: Broker,
        name: str,
        message: Message[Any],
        key: str,
        value: Any,
        tenant_id: int | None,
    ) -> Message[Any]:
        target = broker.get_actor(name)
        message_data = message.asdict()
        if not is_taskyard(target):
            return _checked(target.message(message_data, value), message.actor_name)
        kwargs = {"message_data": message_data, key: value}
        if target.options.get("tenant_scoped"):
            kwargs["tenant_id"] = tenant_id
        return _checked(target.message_with_options(kwargs=kwargs), message.actor_name)

    def _next_stage(
        self, broker: Broker, actor: Actor[Any, Any], data: dict[str, Any], result: Any
    ) -> FollowUp:
        """The pipeline's next stage, its queue chosen by its actor (never by the bytes)."""
        ignore = data["options"].get("pipe_ignore") or actor.options.get("pipe_ignore")
        built, delay = message_from_data(broker, data, () if ignore else (result,))
        return _checked(built, actor.actor_name), delay

    def group_callbacks(
        self, broker: Broker, callbacks: list[dict[str, Any]], sender: str
    ) -> list[FollowUp]:
        """A completed group's callbacks, as messages to send (checked by `follow_up_refusal`)."""
        return [
            (_checked(built, sender), delay)
            for built, delay in (message_from_data(broker, data, ()) for data in callbacks)
        ]

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Nothing: the engine held this job's follow-ups in its transaction."""


def message_from_data(
    broker: Broker, data: dict[str, Any], piped: tuple[Any, ...]
) -> tuple[Message[Any], int | None]:
    """The message `data` describes (a pipeline stage, a group callback), and its delay.

    Its queue is chosen by its actor (never by the bytes); it keeps the id the
    producer knows it by (`get_results` reads it).  `piped`: the previous
    stage's result, appended as Dramatiq does (a Taskyard actor gets it as
    the `pipe_result` keyword).
    """
    target = broker.get_actor(data["actor_name"])
    options = dict(data["options"])
    # A delivery's own (set by a delayed enqueue), never the next message's.
    options.pop("eta", None)
    if is_taskyard(target):
        kwargs = dict(data["kwargs"])
        if piped:
            kwargs[PIPE_RESULT] = piped[0]
        built = target.message_with_options(kwargs=kwargs, **options)
    else:
        built = Message(
            queue_name=target.queue_name,
            actor_name=target.actor_name,
            args=tuple(data["args"]) + piped,
            kwargs=dict(data["kwargs"]),
            options=options,
        )
    ids: dict[str, Any] = {}
    if isinstance(data.get("message_id"), str):
        ids["message_id"] = data["message_id"]
    if type(data.get("message_timestamp")) is int:
        ids["message_timestamp"] = data["message_timestamp"]
    return built.copy(**ids), options.get("delay")
