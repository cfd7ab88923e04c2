"""Taskyard's tables: tenants, their resources and ingests, and the record of every job."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text, true
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, BigIntPk, BigIntType, CreatedAt, JsonType, TenantId, UpdatedAt
from db.states import JOB_CANCELLED as JOB_CANCELLED
from db.states import JOB_DEAD as JOB_DEAD
from db.states import JOB_EXPIRED as JOB_EXPIRED
from db.states import JOB_FINAL_STATES as JOB_FINAL_STATES
from db.states import JOB_QUEUED as JOB_QUEUED
from db.states import JOB_RETRYING as JOB_RETRYING
from db.states import JOB_RUNNING as JOB_RUNNING
from db.states import JOB_SKIPPED as JOB_SKIPPED
from db.states import JOB_SUCCEEDED as JOB_SUCCEEDED

TENANT_ACTIVE = "active"
TENANT_DISABLED = "disabled"
# Being deleted by delete_tenant: nothing new runs for it.
TENANT_DELETING = "deleting"

INGEST_RUNNING = "running"
INGEST_COMPLETED = "completed"
INGEST_FAILED = "failed"

ITEM_PENDING = "pending"
ITEM_REJECTED = "rejected"
ITEM_PROCESSED = "processed"
ITEM_FAILED = "failed"

# What a schedule does with slots missed while nothing ran (see services/schedule_slots.py).
CATCH_UP_LATEST = "latest"
CATCH_UP_ALL = "all"
CATCH_UP_SKIP = "skip"
CATCH_UP_MODES = (CATCH_UP_LATEST, CATCH_UP_ALL, CATCH_UP_SKIP)


class Tenant(Base):
    """A customer of Taskyard; every job and every row of data belongs to one."""

    __tablename__ = "tenants"

    id: Mapped[BigIntPk]
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=TENANT_ACTIVE)
    # Where notify_webhook posts; its signing key is the locker entry `webhook.signing_key`.
    webhook_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class Resource(Base):
    """One item of a tenant's resource feed, upserted by (tenant, resource id)."""

    __tablename__ = "resources"
    __table_args__ = (UniqueConstraint("tenant_id", "resource_id"),)

    id: Mapped[BigIntPk]
    tenant_id: Mapped[TenantId]
    resource_id: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(500))
    description: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[Any]]
    creation_date: Mapped[dt.datetime]
    last_ingest_id: Mapped[int | None] = mapped_column(BigIntType)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class Ingest(Base):
    """One run of a tenant's resource feed: where it came from and how it went."""

    __tablename__ = "ingests"
    __table_args__ = (
        Index(None, "tenant_id", "created_at"),
        Index(None, "tenant_id", "message_id"),
        # Retention's (services/retention.py), from the oldest.
        Index(None, "created_at"),
        # The sweeper's look for running ingests whose last item never completed them.
        Index(
            "ix_ingests_running",
            "created_at",
            postgresql_where=text("status = 'running'"),
            sqlite_where=text("status = 'running'"),
        ),
    )

    id: Mapped[BigIntPk]
    tenant_id: Mapped[TenantId]
    source_url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=INGEST_RUNNING)
    fetched: Mapped[int] = mapped_column(default=0)
    valid: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[int] = mapped_column(default=0)
    processed: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[CreatedAt]
    finished_at: Mapped[dt.datetime | None]


class IngestItem(Base):
    """One item of one ingest: accepted and processed, rejected, or failed, with why."""

    __tablename__ = "ingest_items"
    __table_args__ = (
        UniqueConstraint("ingest_id", "position"),
        Index(None, "tenant_id", "ingest_id", "status"),
        # process_resource finds its item by resource id; rejected rows may repeat an id.
        Index(
            "uq_ingest_items_accepted_resource",
            "tenant_id",
            "ingest_id",
            "resource_id",
            unique=True,
            postgresql_where=text("status <> 'rejected'"),
            sqlite_where=text("status <> 'rejected'"),
        ),
    )

    id: Mapped[BigIntPk]
    tenant_id: Mapped[TenantId]
    ingest_id: Mapped[int] = mapped_column(BigIntType, ForeignKey("ingests.id", ondelete="CASCADE"))
    # The item's index in the fetched array: stable even when its id is missing or repeated.
    position: Mapped[int]
    resource_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=ITEM_PENDING)
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[UpdatedAt]


class Job(Base):
    """The record of one message: what ran, for whom, how it went, what it returned.

    `tenant_id` is deliberately not a foreign key: a message that names an
    unknown tenant still gets a record, which says why it was dead-lettered.
    """

    __tablename__ = "jobs"
    # Every listing reads its page from one of these, newest `created_at` first (migration
    # 0009); `updated_at` stays unindexed, so it never stops an update from being heap-only.
    __table_args__ = (
        Index(None, "status", "finished_at"),
        Index(None, "created_at"),
        Index(None, "tenant_id", "created_at"),
        # Without the succeeded records (migration 0015): their listing reads the creation-time
        # indexes, and a job's final update to succeeded inserts into neither of these.
        Index(
            None,
            "tenant_id",
            "status",
            "created_at",
            postgresql_where=text(f"status <> '{JOB_SUCCEEDED}'"),
            sqlite_where=text(f"status <> '{JOB_SUCCEEDED}'"),
        ),
        Index(
            None,
            "status",
            "created_at",
            postgresql_where=text(f"status <> '{JOB_SUCCEEDED}'"),
            sqlite_where=text(f"status <> '{JOB_SUCCEEDED}'"),
        ),
        Index(None, "actor", "created_at"),
        Index(None, "tenant_id", "actor", "created_at"),
        # A schedule's last runs join their records by (schedule, slot) (migration 0013).
        Index(
            "ix_jobs_schedule_slot",
            "schedule_id",
            "slot_at",
            postgresql_where=text("schedule_id IS NOT NULL"),
            sqlite_where=text("schedule_id IS NOT NULL"),
        ),
    )

    message_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(BigIntType)
    actor: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(200))
    args: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default=JOB_QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    # Starts of a redelivered copy (RabbitMQ's redelivered flag): a worker died with it
    # running, or with it unacknowledged. Counted apart from attempts, which a crash
    # rolls back, so that a message that kills its worker is dead-lettered in the end.
    deliveries: Mapped[int] = mapped_column(server_default=text("0"))
    enqueued_at: Mapped[dt.datetime | None]
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    # The failed attempts, oldest first (services/jobs.py `record_failure` appends one in
    # the statement that records the failure); NULL for a job that never failed.
    attempt_history: Mapped[list[Any] | None] = mapped_column(JsonType, nullable=True)
    # What the actor returned, as JSON (any JSON value; NULL: None, or not kept).
    result: Mapped[Any] = mapped_column(JsonType, nullable=True)
    # Why the result was not kept (not JSON, too large); NULL when it was (services/results.py).
    result_dropped: Mapped[str | None] = mapped_column(Text)
    # Set when a schedule sent the job: which one, and for which slot. Not a foreign
    # key: the record outlives a removed schedule.
    schedule_id: Mapped[int | None] = mapped_column(BigIntType)
    slot_at: Mapped[dt.datetime | None]
    # When the record was first written (at send, or at the end of a message sent around
    # Taskyard's send()); never changed after, so listings page by it.
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class OutboxMessage(Base):
    """A message waiting to be published: held by a transaction, or delayed until `publish_at`.

    Sends made inside a Taskyard transaction are written here in that
    transaction and published after it commits; a sweeper publishes what a
    crash left behind.  Long delays wait here too, not in a worker's memory.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index(None, "publish_at"), Index(None, "message_id"))

    id: Mapped[BigIntPk]
    message_id: Mapped[str] = mapped_column(String(36))
    tenant_id: Mapped[int | None] = mapped_column(BigIntType)
    queue: Mapped[str] = mapped_column(String(200))
    # The message exactly as Dramatiq encodes it (JSON).
    body: Mapped[str] = mapped_column(Text)
    publish_at: Mapped[dt.datetime]
    created_at: Mapped[CreatedAt]


class JobGroup(Base):
    """A Dramatiq group run with completion callbacks: its id (the group's uuid) and size.

    Written by `group.run()` (Taskyard's GroupCallbacks), before its members are sent.
    """

    __tablename__ = "job_groups"
    __table_args__ = (Index(None, "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int]
    created_at: Mapped[CreatedAt]


class JobGroupMember(Base):
    """A member of a group that finished (succeeded, or dead), written in its own transaction.

    Counted per world (a tenant, system, or plain Dramatiq): a message of another
    tenant naming the group's id counts in a group of its own world, never in this one.
    `callbacks` are the member's completion callbacks, checked against its world.
    """

    __tablename__ = "job_group_members"
    __table_args__ = (
        UniqueConstraint("group_id", "world", "message_id"),
        Index(None, "tenant_id"),
        Index(None, "created_at"),
    )

    id: Mapped[BigIntPk]
    group_id: Mapped[str] = mapped_column(String(64))
    world: Mapped[str] = mapped_column(String(40))
    tenant_id: Mapped[int | None] = mapped_column(BigIntType)
    message_id: Mapped[str] = mapped_column(String(36))
    dead: Mapped[bool] = mapped_column(default=False)
    callbacks: Mapped[list[Any]]
    created_at: Mapped[CreatedAt]


class JobGroupCompletion(Base):
    """A group's completion in one world, claimed once: its callbacks were sent with it."""

    __tablename__ = "job_group_completions"
    __table_args__ = (UniqueConstraint("group_id", "world"), Index(None, "tenant_id"))

    id: Mapped[BigIntPk]
    group_id: Mapped[str] = mapped_column(String(64))
    world: Mapped[str] = mapped_column(String(40))
    tenant_id: Mapped[int | None] = mapped_column(BigIntType)
    # succeeded: every member succeeded and the callbacks were sent; failed: a member died.
    outcome: Mapped[str] = mapped_column(String(16))
    message_id: Mapped[str | None] = mapped_column(String(36))
    completed_at: Mapped[CreatedAt]


class DeadLetter(Base):
    """A message that will not be retried, kept until an operator requeues or purges it.

    RabbitMQ's own dead-letter queues expire messages after 7 days; this
    table never does.  `body` holds the original message, or the raw bytes
    (as text, replaced where not UTF-8) of one that could not be decoded.
    """

    __tablename__ = "dead_letters"
    __table_args__ = (
        Index(None, "created_at"),
        Index(None, "tenant_id", "created_at"),
        Index(None, "actor", "created_at"),
        Index(None, "reason", "created_at"),
        # The letters waiting for an operator (migration 0016): their count (the overview's)
        # and a requeue's order, without reading the requeued or undecodable ones.
        Index(
            "ix_dead_letters_waiting",
            "tenant_id",
            "created_at",
            postgresql_where=text("requeued_at IS NULL AND message IS NOT NULL"),
            sqlite_where=text("requeued_at IS NULL AND message IS NOT NULL"),
        ),
        # Retention's: only a requeued letter expires (the others wait for an operator).
        Index(
            "ix_dead_letters_requeued",
            "requeued_at",
            postgresql_where=text("requeued_at IS NOT NULL"),
            sqlite_where=text("requeued_at IS NOT NULL"),
        ),
    )

    message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(BigIntType)
    actor: Mapped[str | None] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    # The decoded message (actor, kwargs, options), when it could be decoded.
    message: Mapped[dict[str, Any] | None]
    raw_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[CreatedAt]
    requeued_at: Mapped[dt.datetime | None]


class CancelRequest(Base):
    """Someone asked a job to stop while it ran; a long actor checks with `cancel_requested()`.

    Kept apart from `jobs`: the attempt's transaction holds its job record
    locked until it ends, so a request written there could not be seen (or
    even written) while the job runs.
    """

    __tablename__ = "cancel_requests"
    # Retention's (services/retention.py), from the oldest.
    __table_args__ = (Index(None, "requested_at"),)

    message_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    requested_at: Mapped[CreatedAt]


class Schedule(Base):
    """A tenant's recurring job: an actor and its arguments, sent at every slot of a cron.

    `next_slot_at` (UTC) is the first slot not yet handled; the tick finds due
    schedules by it, and NULL means no slot is left (past `end_at`).
    """

    __tablename__ = "schedules"
    __table_args__ = (
        Index(None, "tenant_id", "actor"),
        # The tick's one query, across tenants: the enabled schedules due by now.
        Index(
            "ix_schedules_due",
            "next_slot_at",
            postgresql_where=text("enabled"),
            sqlite_where=text("enabled"),
        ),
    )

    id: Mapped[BigIntPk]
    tenant_id: Mapped[TenantId]
    actor: Mapped[str] = mapped_column(String(200))
    args: Mapped[dict[str, Any]]
    cron: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    catch_up: Mapped[str] = mapped_column(String(8), default=CATCH_UP_LATEST)
    enabled: Mapped[bool] = mapped_column(default=True, server_default=true())
    start_at: Mapped[dt.datetime | None]
    end_at: Mapped[dt.datetime | None]
    last_slot_at: Mapped[dt.datetime | None]
    next_slot_at: Mapped[dt.datetime | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class ScheduleRun(Base):
    """One claimed (schedule, slot): the unique constraint makes every slot run once."""

    __tablename__ = "schedule_runs"
    __table_args__ = (
        UniqueConstraint("schedule_id", "slot_at"),
        Index(None, "tenant_id", "created_at"),
        # Retention's (services/retention.py), from the oldest.
        Index(None, "created_at"),
    )

    id: Mapped[BigIntPk]
    tenant_id: Mapped[TenantId]
    schedule_id: Mapped[int] = mapped_column(
        BigIntType, ForeignKey("schedules.id", ondelete="CASCADE")
    )
    slot_at: Mapped[dt.datetime]
    created_at: Mapped[CreatedAt]


class Worker(Base):
    """A live (or lately live) worker process: what it serves and when it last said so.

    Each `dramatiq actors` process writes its row every few seconds; the
    command line's `workers`, `health` and `jobs` read them (a job is *running*
    when a live row lists it, never by its own record).  Rows of processes that
    stopped are removed at shutdown, and ones that vanished are removed by the
    retention job once their heartbeat is old.
    """

    __tablename__ = "workers"
    __table_args__ = (Index(None, "heartbeat_at"),)

    # host:pid:start, unique across restarts of the same pid.
    worker_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="worker")
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int]
    queues: Mapped[list[Any]]
    threads: Mapped[int] = mapped_column(default=0)
    in_progress: Mapped[int] = mapped_column(default=0)
    # What each of its threads runs, as of the last beat: a JSON list of objects
    # (message_id, actor, queue, tenant_id, thread, thread_id, started_at), written by
    # middleware/heartbeat.py and read by services/workers.running_jobs.
    running: Mapped[list[Any]] = mapped_column(server_default=text("'[]'"))
    started_at: Mapped[dt.datetime]
    heartbeat_at: Mapped[dt.datetime]


class LockerEntry(Base):
    """One secret of a tenant's locker, encrypted with Fernet; the plaintext is never stored."""

    __tablename__ = "locker_entries"
    __table_args__ = (UniqueConstraint("tenant_id", "key"),)

    id: Mapped[BigIntPk]
    tenant_id: Mapped[TenantId]
    key: Mapped[str] = mapped_column(String(200))
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class Integration(Base):
    """A tenant's connection to an outside system: a kind and its validated config."""

    __tablename__ = "integrations"
    __table_args__ = (Index(None, "tenant_id", "kind"),)

    id: Mapped[BigIntPk]
    tenant_id: Mapped[TenantId]
    kind: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]]
    last_synced_at: Mapped[dt.datetime | None]
    last_status: Mapped[str | None] = mapped_column(String(16))
    last_summary: Mapped[dict[str, Any] | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class GithubMember(Base):
    """A member of a GitHub organisation, as a `github` integration last saw it."""

    __tablename__ = "github_members"
    __table_args__ = (UniqueConstraint("integration_id", "github_id"),)

    id: Mapped[BigIntPk]
    tenant_id: Mapped[TenantId]
    integration_id: Mapped[int] = mapped_column(
        BigIntType, ForeignKey("integrations.id", ondelete="CASCADE")
    )
    github_id: Mapped[int] = mapped_column(BigIntType)
    login: Mapped[str] = mapped_column(String(200))
    type: Mapped[str | None] = mapped_column(String(32))
    site_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class GithubRepository(Base):
    """A repository of a GitHub organisation, as a `github` integration last saw it."""

    __tablename__ = "github_repositories"
    __table_args__ = (UniqueConstraint("integration_id", "github_id"),)

    id: Mapped[BigIntPk]
    tenant_id: Mapped[TenantId]
    integration_id: Mapped[int] = mapped_column(
        BigIntType, ForeignKey("integrations.id", ondelete="CASCADE")
    )
    github_id: Mapped[int] = mapped_column(BigIntType)
    name: Mapped[str] = mapped_column(String(200))
    full_name: Mapped[str] = mapped_column(String(400))
    private: Mapped[bool] = mapped_column(default=False)
    archived: Mapped[bool] = mapped_column(default=False)
    description: Mapped[str | None] = mapped_column(Text)
    default_branch: Mapped[str | None] = mapped_column(String(200))
    html_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


WEB_ADMIN = "admin"
WEB_VIEWER = "viewer"
WEB_ROLES = (WEB_ADMIN, WEB_VIEWER)


class WebUser(Base):
    """An operator who may sign in to the web console: a viewer reads, an admin also acts.

    `tenant_ids` limits the user to those tenants (null: every tenant); the
    password is kept only as its Argon2id hash.
    """

    __tablename__ = "web_users"

    id: Mapped[BigIntPk]
    name: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16))
    tenant_ids: Mapped[list[Any] | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
