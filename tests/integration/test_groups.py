"""Groups with completion callbacks end to end, tracked in PostgreSQL; their races and isolation."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from dramatiq import group
from dramatiq.middleware import GroupCallbacks
from dramatiq.rate_limits.backends import StubBackend
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import DeadLetter, Job, JobGroupCompletion, JobGroupMember, Resource
from middleware.context import MessageContext
from middleware.runtime import runtime_of
from services import groups
from settings import Settings
from tests.integration.pipeline_actors import add_resource, group_done, pipe_clash, pipe_count
from tests.security.support import body, publish
from tests.support import WorkerProcess, wait_for, worker_env
from transport.rabbitmq import TaskyardRabbitmqBroker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def group_worker(
    migrated_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A worker that knows the test's actors."""
    log = tmp_path_factory.mktemp("group-worker") / "worker.log"
    worker = WorkerProcess(log, worker_env(), modules=["tests.integration.pipeline_actors"])
    worker.wait_ready()
    yield worker
    worker.stop()


def keys(sessions: sessionmaker[Session], tenant_id: int, label: str) -> list[str]:
    with sessions() as session:
        query = select(Resource.resource_id).where(
            Resource.tenant_id == tenant_id, Resource.resource_id.startswith(label)
        )
        return sorted(session.scalars(query))


def jobs_of(sessions: sessionmaker[Session], message_ids: list[str]) -> list[Job]:
    with sessions() as session:
        return list(session.scalars(select(Job).where(Job.message_id.in_(message_ids))))


def completions(sessions: sessionmaker[Session], group_id: str) -> list[tuple[str, str]]:
    with sessions() as session:
        query = select(JobGroupCompletion.world, JobGroupCompletion.outcome).where(
            JobGroupCompletion.group_id == group_id
        )
        return sorted((world, outcome) for world, outcome in session.execute(query).all())


def group_id_of(sessions: sessionmaker[Session], message_id: str) -> str:
    with sessions() as session:
        found = session.scalar(
            select(JobGroupMember.group_id).where(JobGroupMember.message_id == message_id)
        )
    assert found is not None
    return found


def assert_callback_ran_once_after(
    sessions: sessionmaker[Session], tenant: int, label: str, members: list[str]
) -> None:
    done = f"{label}-group-done"
    wait_for(lambda: done in keys(sessions, tenant, label), what="the completion callback")
    records = jobs_of(sessions, members)
    assert [job.status for job in records] == ["succeeded"] * len(members)
    with sessions() as session:
        callback = session.scalars(
            select(Job).where(Job.actor == group_done.actor_name, Job.tenant_id == tenant)
        ).all()
    assert len(callback) == 1 and callback[0].status == "succeeded"
    last_member = max(job.finished_at for job in records if job.finished_at is not None)
    assert callback[0].started_at is not None and callback[0].started_at >= last_member


def test_a_group_of_messages_runs_its_callback_once_after_all_members(
    group_worker: WorkerProcess,
    sessions: sessionmaker[Session],
    make_tenant: Callable[[str], int],
) -> None:
    tenant = make_tenant("group")
    label = uuid.uuid4().hex[:8]
    members = [pipe_count.message(tenant_id=tenant, label=f"{label}-m{i}") for i in range(5)]
    g = group(members)
    g.add_completion_callback(group_done.message(tenant_id=tenant, label=label))

    g.run()

    assert_callback_ran_once_after(sessions, tenant, label, [m.message_id for m in members])
    group_id = group_id_of(sessions, members[0].message_id)
    assert completions(sessions, group_id) == [(f"tenant:{tenant}", "succeeded")]


def test_a_group_of_pipelines_runs_its_callback_once_after_every_stage(
    group_worker: WorkerProcess,
    sessions: sessionmaker[Session],
    make_tenant: Callable[[str], int],
) -> None:
    tenant = make_tenant("group-pipes")
    label = uuid.uuid4().hex[:8]
    first = pipe_count.message(tenant_id=tenant, label=f"{label}-p")
    second = pipe_count.message(tenant_id=tenant, label=f"{label}-p")
    alone = pipe_count.message(tenant_id=tenant, label=f"{label}-a")
    g = group([first | second, alone])
    g.add_completion_callback(group_done.message(tenant_id=tenant, label=label))

    g.run()

    members = [first.message_id, second.message_id, alone.message_id]
    assert_callback_ran_once_after(sessions, tenant, label, members)
    assert keys(sessions, tenant, label) == [
        f"{label}-a-1",
        f"{label}-group-done",
        f"{label}-p-1",
        f"{label}-p-2",
    ]


def test_a_group_with_a_dead_member_completes_failed_and_sends_no_callback(
    group_worker: WorkerProcess,
    sessions: sessionmaker[Session],
    make_tenant: Callable[[str], int],
) -> None:
    tenant = make_tenant("group-dead")
    label = uuid.uuid4().hex[:8]
    with sessions.begin() as session:
        add_resource(session, tenant, f"{label}-clash")
    ok = pipe_count.message(tenant_id=tenant, label=f"{label}-ok")
    clash = pipe_clash.message(tenant_id=tenant, label=f"{label}-clash")
    g = group([ok, clash])
    g.add_completion_callback(group_done.message(tenant_id=tenant, label=label))

    g.run()

    group_id = wait_for(
        lambda: (
            jobs_of(sessions, [clash.message_id])
            and jobs_of(sessions, [clash.message_id])[0].status == "dead"
            and group_id_of(sessions, clash.message_id)
        ),
        what="the dead member",
    )
    outcome = [(f"tenant:{tenant}", "failed")]
    wait_for(lambda: completions(sessions, group_id) == outcome, what="the group failed")
    assert f"{label}-group-done" not in keys(sessions, tenant, label)


def _member(tenant: int, group_id: str, label: str) -> groups.Member:
    callback = group_done.message(tenant_id=tenant, label=label).asdict()
    return groups.Member(
        group_id=group_id,
        world=f"tenant:{tenant}",
        tenant_id=tenant,
        message_id=str(uuid.uuid4()),
        dead=False,
        callbacks=[dict(callback)],
    )


def test_two_last_members_finishing_at_once_complete_the_group_once(
    group_worker: WorkerProcess,
    sessions: sessionmaker[Session],
    make_tenant: Callable[[str], int],
) -> None:
    tenant = make_tenant("group-race")
    label = uuid.uuid4().hex[:8]
    broker = pipe_count.broker
    runtime = runtime_of(broker)
    assert runtime is not None
    group_id = str(uuid.uuid4())
    with runtime.outbox.sends.connect() as connection:
        groups.create_group(connection, group_id, 2)
        connection.commit()
    members = [_member(tenant, group_id, label) for _ in range(2)]
    # Both members' transactions have committed; neither has checked its group yet.
    for member in members:
        with sessions.begin() as session:
            groups.record_member(session, member)
    both_counted = threading.Barrier(2)
    results: list[bool] = []

    def complete(member: groups.Member, ctx: MessageContext) -> None:
        found = groups.progress(ctx.session, member.group_id, member.world)
        assert found is not None and found.done
        both_counted.wait(timeout=10)  # both found the group done before either claims it
        results.append(runtime.groups.complete(broker, ctx, member=member))

    threads = [
        threading.Thread(
            target=runtime.outbox.follow_on,
            args=(broker, lambda ctx, member=member: complete(member, ctx)),
        )
        for member in members
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(results) == [False, True]
    wait_for(lambda: f"{label}-group-done" in keys(sessions, tenant, label), what="the callback")
    assert completions(sessions, group_id) == [(f"tenant:{tenant}", "succeeded")]
    with sessions() as session:
        sent = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.actor == group_done.actor_name)
            .where(Job.tenant_id == tenant)
        )
    assert sent == 1


def test_a_group_whose_last_member_crashed_before_its_check_is_completed_by_the_sweeper(
    group_worker: WorkerProcess,
    sessions: sessionmaker[Session],
    make_tenant: Callable[[str], int],
) -> None:
    tenant = make_tenant("group-crash")
    label = uuid.uuid4().hex[:8]
    broker = pipe_count.broker
    runtime = runtime_of(broker)
    assert runtime is not None
    group_id = str(uuid.uuid4())
    with runtime.outbox.sends.connect() as connection:
        groups.create_group(connection, group_id, 2)
        connection.commit()
    # Both members committed; the process died before either checked its group.
    for _ in range(2):
        with sessions.begin() as session:
            groups.record_member(session, _member(tenant, group_id, label))
    assert completions(sessions, group_id) == []

    swept = runtime.groups.sweep(broker, stalled_after=-60)

    assert swept >= 1
    wait_for(lambda: f"{label}-group-done" in keys(sessions, tenant, label), what="the callback")
    assert completions(sessions, group_id) == [(f"tenant:{tenant}", "succeeded")]
    # Swept again: the completion is claimed already, the callback not sent again.
    runtime.groups.sweep(broker, stalled_after=-60)
    assert completions(sessions, group_id) == [(f"tenant:{tenant}", "succeeded")]
    with sessions() as session:
        query = select(func.count()).select_from(Job).where(Job.tenant_id == tenant)
        assert session.scalar(query.where(Job.actor == group_done.actor_name)) == 1


def _crafted(
    settings: Settings, tenant: int, label: str, options: dict[str, object]
) -> tuple[str, str]:
    queue = settings.tenant_queue(tenant)
    crafted = body(queue, pipe_count.actor_name, {"tenant_id": tenant, "label": label})
    crafted["options"] = options
    broker = pipe_count.broker
    assert isinstance(broker, TaskyardRabbitmqBroker)
    broker.declare_queue(queue)
    broker.ensure_queues([queue])
    [message_id] = publish(settings.broker_url, queue, [crafted])
    return queue, message_id


def test_a_crafted_group_callback_of_another_tenant_is_refused(
    group_worker: WorkerProcess,
    sessions: sessionmaker[Session],
    settings: Settings,
    make_tenant: Callable[[str], int],
) -> None:
    tenant_a, tenant_b = make_tenant("group-a"), make_tenant("group-b")
    label = uuid.uuid4().hex[:8]
    callback_b = group_done.message(tenant_id=tenant_b, label=label).asdict()
    group_id = str(uuid.uuid4())
    with sessions.begin() as session:
        groups.create_group(session, group_id, 1)
    options: dict[str, object] = {
        "group_completion_uuid": group_id,
        "group_completion_callbacks": [callback_b],
    }
    _, message_id = _crafted(settings, tenant_a, label, options)

    def kept() -> DeadLetter | None:
        with sessions() as session:
            query = select(DeadLetter).where(DeadLetter.error.contains(message_id))
            return session.scalars(query).first()

    letter = wait_for(kept, what="the crafted message's dead letter")
    assert letter.reason == "tenant_mismatch" and letter.tenant_id is None
    assert "group completion callback 1" in (letter.error or "")
    assert keys(sessions, tenant_a, label) == [] and keys(sessions, tenant_b, label) == []
    assert jobs_of(sessions, [str(callback_b["message_id"])]) == []
    assert completions(sessions, group_id) == []


def test_a_crafted_member_naming_another_tenants_group_never_completes_it(
    group_worker: WorkerProcess,
    sessions: sessionmaker[Session],
    settings: Settings,
    make_tenant: Callable[[str], int],
) -> None:
    tenant_a, tenant_b = make_tenant("group-ua"), make_tenant("group-ub")
    label_a, label_b = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    # B's group of one member, not run yet; A learns its id.
    member_b = pipe_count.message(tenant_id=tenant_b, label=f"{label_b}-m")
    runtime = runtime_of(pipe_count.broker)
    assert runtime is not None
    group_id = str(uuid.uuid4())
    with runtime.outbox.sends.connect() as connection:
        groups.create_group(connection, group_id, 1)
        connection.commit()
    # A's crafted member names B's group, with A's own callback.
    callback_a = group_done.message(tenant_id=tenant_a, label=label_a).asdict()
    options: dict[str, object] = {
        "group_completion_uuid": group_id,
        "group_completion_callbacks": [callback_a],
    }
    _, message_id = _crafted(settings, tenant_a, f"{label_a}-m", options)
    wait_for(lambda: jobs_of(sessions, [message_id]), what="A's crafted member")
    # It counted in A's world only: B's group is not completed, nothing ran for B.
    wait_for(
        lambda: (f"tenant:{tenant_a}", "succeeded") in completions(sessions, group_id),
        what="A's own completion",
    )
    assert (f"tenant:{tenant_b}", "succeeded") not in completions(sessions, group_id)
    assert keys(sessions, tenant_b, label_b) == []
    # B's own member then completes B's group, whose callback runs once, for B.
    crafted_b = member_b.copy(
        options={
            "group_completion_uuid": group_id,
            "group_completion_callbacks": [
                group_done.message(tenant_id=tenant_b, label=label_b).asdict()
            ],
        }
    )
    pipe_count.broker.enqueue(crafted_b)
    wait_for(
        lambda: f"{label_b}-group-done" in keys(sessions, tenant_b, label_b),
        what="B's callback",
    )
    assert completions(sessions, group_id) == sorted(
        [(f"tenant:{tenant_a}", "succeeded"), (f"tenant:{tenant_b}", "succeeded")]
    )


def test_a_users_own_group_callbacks_middleware_is_ignored() -> None:
    broker = pipe_count.broker
    before = list(broker.middleware)

    broker.add_middleware(GroupCallbacks(StubBackend()))

    assert broker.middleware == before
    found = [m for m in broker.middleware if isinstance(m, GroupCallbacks)]
    assert len(found) == 1 and getattr(found[0], "taskyard_groups", False)
