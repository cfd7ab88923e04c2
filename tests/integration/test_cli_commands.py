"""`taskyard send`, `schedule`, `jobs retry|cancel`, `dead-letters` and `tenant delete`, as run."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy.orm import Session, sessionmaker

from db.models import Job, Tenant
from tests.integration.cli_harness import (
    BROKER_DOWN_URL,
    as_json,
    assert_one_line_error,
    taskyard,
)
from tests.support import WorkerProcess, wait_for

pytestmark = pytest.mark.integration

FEED = [{"id": "r1", "name": "First", "creation_date": "2024-01-02"}]


@pytest.fixture(autouse=True)
def _database(migrated_database: str) -> None:
    """Every test here runs the CLI on this run's migrated database."""


def job_status(sessions: sessionmaker[Session], message_id: str) -> str | None:
    with sessions() as session:
        job = session.get(Job, message_id)
        return job.status if job is not None else None


def test_send_prints_the_message_id_and_the_worker_runs_it(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = make_tenant("cli-send")
    httpserver.expect_request("/feed.json").respond_with_json(FEED)
    args = json.dumps({"source_url": httpserver.url_for("/feed.json")})

    result = taskyard("send", "ingest_resources", "--tenant", str(tenant_id), "--args", args)

    assert result.returncode == 0, result.stderr
    message_id = result.stdout.strip()
    wait_for(lambda: job_status(sessions, message_id) == "succeeded", what="the sent job")
    shown = as_json(taskyard("jobs", "show", message_id, "--json"))
    assert shown["tenant_id"] == tenant_id and shown["actor"] == "ingest_resources"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("send", "ingest_resources", "--args", "{nope"), "not valid JSON"),
        (("send", "ingest_resources", "--args", "[1]"), "must be a JSON object"),
        (("send", "no_such_actor"), "no tenant-scoped actor 'no_such_actor'"),
        (("send", "ingest_resources", "--args", '{"source_url": 5}'), "invalid arguments"),
        (("send", "ingest_resources", "--args", '{"bogus": 1}'), "invalid arguments"),
    ],
)
def test_send_refuses_bad_input_before_sending(
    make_tenant: Callable[[str], int], args: tuple[str, ...], expected: str
) -> None:
    tenant_id = str(make_tenant("cli-send-bad"))

    line = assert_one_line_error(taskyard(*args, "--tenant", tenant_id), 1)

    assert expected in line
    assert as_json(taskyard("jobs", "list", "--tenant", tenant_id, "--json")) == []


def test_send_to_an_unknown_tenant_fails() -> None:
    args = '{"source_url": "https://feeds.example/x.json"}'

    line = assert_one_line_error(
        taskyard("send", "ingest_resources", "--tenant", "987654321", "--args", args), 1
    )

    assert "987654321" in line and "taskyard tenant list" in line


def test_send_with_the_broker_down_keeps_the_job_and_says_so(
    make_tenant: Callable[[str], int],
) -> None:
    tenant_id = str(make_tenant("cli-broker-down"))
    args = '{"source_url": "https://feeds.example/x.json"}'

    result = taskyard(
        "send",
        "ingest_resources",
        "--tenant",
        tenant_id,
        "--args",
        args,
        BROKER_URL=BROKER_DOWN_URL,
    )

    # The send is durable in PostgreSQL: it succeeds, and says RabbitMQ has not taken it yet
    assert result.returncode == 0, result.stderr
    message_id = result.stdout.strip()
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "amqp://guest:***@127.0.0.1:1/%2F" in warning[0]
    assert message_id in warning[0] and "s3cret-pw" not in result.stderr
    # And the job waits, queued, for a worker's sweeper to publish it
    [job] = as_json(taskyard("jobs", "list", "--tenant", tenant_id, "--json"))
    assert (job["message_id"], job["status"]) == (message_id, "queued")


def test_schedule_add_list_show_pause_resume_run_remove(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = str(make_tenant("cli-schedule"))
    httpserver.expect_request("/feed.json").respond_with_json(FEED)
    args = json.dumps({"source_url": httpserver.url_for("/feed.json")})

    added = as_json(
        taskyard(
            "schedule", "add", "--tenant", tenant_id, "ingest_resources", "--cron", "0 3 * * *",
            "--tz", "Europe/Paris", "--args", args, "--catch-up", "skip", "--json",
        )
    )  # fmt: skip
    schedule_id = str(added["id"])
    listed = as_json(taskyard("schedule", "list", "--tenant", tenant_id, "--json"))
    paused = as_json(taskyard("schedule", "pause", schedule_id, "--json"))
    resumed = as_json(taskyard("schedule", "resume", schedule_id, "--json"))
    ran = taskyard("schedule", "run", schedule_id)
    shown = as_json(taskyard("schedule", "show", schedule_id, "--json"))

    assert (added["cron"], added["timezone"], added["catch_up"]) == (
        "0 3 * * *",
        "Europe/Paris",
        "skip",
    )
    assert [s["id"] for s in listed] == [added["id"]]
    assert paused["enabled"] is False and paused["blocked"] is not None
    assert resumed["enabled"] is True and resumed["blocked"] is None
    assert ran.returncode == 0, ran.stderr
    wait_for(lambda: job_status(sessions, ran.stdout.strip()) == "succeeded", what="the run")
    assert shown["id"] == added["id"]

    assert taskyard("schedule", "remove", schedule_id).returncode == 0
    line = assert_one_line_error(taskyard("schedule", "show", schedule_id), 1)
    assert schedule_id in line


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("--cron", "61 * * * *"), "not added: '61 * * * *'"),
        (("--cron", "* * * * *", "--tz", "Mars/Olympus"), "Mars/Olympus"),
        (("--cron", "* * * * *", "--args", "{"), "not valid JSON"),
    ],
)
def test_schedule_add_refuses_bad_input(
    make_tenant: Callable[[str], int], extra: tuple[str, ...], expected: str
) -> None:
    tenant_id = str(make_tenant("cli-schedule-bad"))
    args = ("--args", '{"source_url": "https://feeds.example/x.json"}')

    line = assert_one_line_error(
        taskyard("schedule", "add", "--tenant", tenant_id, "ingest_resources", *args, *extra), 1
    )

    assert expected in line
    assert as_json(taskyard("schedule", "list", "--tenant", tenant_id, "--json")) == []


def test_schedule_add_for_an_unknown_tenant_or_actor_fails() -> None:
    unknown_tenant = taskyard(
        "schedule", "add", "--tenant", "987654321", "ingest_resources", "--cron", "* * * * *",
        "--args", '{"source_url": "https://feeds.example/x.json"}',
    )  # fmt: skip
    unknown_actor = taskyard(
        "schedule", "add", "--tenant", "1", "no_such_actor", "--cron", "* * * * *"
    )

    assert "987654321" in assert_one_line_error(unknown_tenant, 1)
    assert "no_such_actor" in assert_one_line_error(unknown_actor, 1)


def test_a_dead_job_is_listed_shown_retried_and_its_letters_purged(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    # Given two ingests that died because their feed was missing
    tenant_id = str(make_tenant("cli-dead"))
    httpserver.expect_oneshot_request("/later.json").respond_with_data("", status=404)
    httpserver.expect_oneshot_request("/later.json").respond_with_data("", status=404)
    args = json.dumps({"source_url": httpserver.url_for("/later.json")})
    ids = [
        taskyard("send", "ingest_resources", "--tenant", tenant_id, "--args", args).stdout.strip()
        for _ in range(2)
    ]
    for message_id in ids:
        wait_for(lambda m=message_id: job_status(sessions, m) == "dead", what="a dead job")

    # When the operator looks at them, then retries one and requeues the rest after the fix
    listed = as_json(taskyard("dead-letters", "list", "--tenant", tenant_id, "--json"))
    shown = as_json(taskyard("dead-letters", "show", ids[0], "--json"))
    httpserver.expect_request("/later.json").respond_with_json(FEED)
    retried = as_json(taskyard("jobs", "retry", ids[0], "--json"))
    again = taskyard("jobs", "retry", ids[0])
    requeued = as_json(
        taskyard("dead-letters", "requeue", "--all", "--tenant", tenant_id, "--json")
    )

    # Then both were dead for the same reason, and both run again under their own ids
    assert sorted(d["message_id"] for d in listed) == sorted(ids)
    assert shown["reason"] == "fetch_refused" and shown["requeueable"] is True
    assert retried == {"retried": ids[0], "message_id": ids[0], "how": "requeued"}
    assert requeued == {"requeued": 1, "message_ids": [ids[1]]}
    for message_id in ids:
        wait_for(lambda m=message_id: job_status(sessions, m) == "succeeded", what="a rerun")
    # A job that is no longer dead cannot be retried
    assert "only a dead or cancelled job" in assert_one_line_error(again, 1) or (
        "already requeued" in again.stderr
    )

    # And purging the tenant's letters (requeued ones included) leaves none
    purge = ("dead-letters", "purge", "--tenant", tenant_id, "--requeued", "--json")
    assert as_json(taskyard(*purge)) == {"purged": 2}
    every = ("dead-letters", "list", "--tenant", tenant_id, "--requeued", "--json")
    assert as_json(taskyard(*every)) == []


def test_dead_letter_commands_refuse_what_they_cannot_do() -> None:
    unknown = taskyard("dead-letters", "show", "no-such-message")
    both = taskyard("dead-letters", "requeue", "some-id", "--all")
    neither = taskyard("dead-letters", "requeue")
    unfiltered = taskyard("dead-letters", "purge")

    assert "no-such-message" in assert_one_line_error(unknown, 1)
    assert both.returncode == 2 and neither.returncode == 2
    assert "--yes" in assert_one_line_error(unfiltered, 1)


def test_a_delayed_job_is_cancelled_then_retried_as_a_new_message(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = str(make_tenant("cli-cancel"))
    httpserver.expect_request("/feed.json").respond_with_json(FEED)
    args = json.dumps({"source_url": httpserver.url_for("/feed.json")})
    sent = taskyard(
        "send", "ingest_resources", "--tenant", tenant_id, "--args", args, "--delay", "3600"
    )
    message_id = sent.stdout.strip()

    cancelled = as_json(taskyard("jobs", "cancel", message_id, "--json"))
    twice = taskyard("jobs", "cancel", message_id)
    retried = as_json(taskyard("jobs", "retry", message_id, "--json"))

    assert cancelled == {"message_id": message_id, "status": "cancelled"}
    assert "already cancelled" in assert_one_line_error(twice, 1)
    assert retried["how"] == "sent" and retried["message_id"] != message_id
    wait_for(lambda: job_status(sessions, retried["message_id"]) == "succeeded", what="retry")
    assert job_status(sessions, message_id) == "cancelled"


def test_tenant_delete_waits_for_the_deletion(
    worker: WorkerProcess, make_tenant: Callable[[str], int], sessions: sessionmaker[Session]
) -> None:
    tenant_id = make_tenant("cli-delete")

    deleted = as_json(taskyard("tenant", "delete", str(tenant_id), "--wait", "--json"))

    assert deleted["status"] == "succeeded"
    with sessions() as session:
        assert session.get(Tenant, tenant_id) is None
    line = assert_one_line_error(taskyard("tenant", "delete", str(tenant_id)), 1)
    assert str(tenant_id) in line


def test_requeue_of_an_unknown_dead_letter_fails() -> None:
    line = assert_one_line_error(taskyard("dead-letters", "requeue", "no-such-message"), 1)

    assert "no-such-message" in line


def test_jobs_list_since_filters_by_age(make_tenant: Callable[[str], int]) -> None:
    tenant_id = str(make_tenant("cli-since"))

    recent = taskyard("jobs", "list", "--tenant", tenant_id, "--since", "5m", "--json")
    bad = taskyard("jobs", "list", "--since", "yesterday-ish")

    assert as_json(recent) == []
    assert bad.returncode == 2 and "neither an age" in bad.stderr


def test_jobs_retry_refuses_a_record_whose_arguments_name_another_tenant(
    make_tenant: Callable[[str], int], sessions: sessionmaker[Session]
) -> None:
    # Given a dead record credited to no tenant (refused for its route), whose arguments
    # name a real tenant, and no dead letter (purged)
    victim = make_tenant("cli-retry-victim")
    message_id = f"refused-{victim}"
    with sessions.begin() as session:
        session.add(
            Job(
                message_id=message_id,
                tenant_id=None,
                actor="ingest_resources",
                queue="elsewhere",
                args={"tenant_id": victim, "source_url": "https://feeds.example/x.json"},
                status="dead",
                attempts=1,
            )
        )
    # When an operator retries it, then it is refused, and nothing is sent as the victim
    refused = taskyard("jobs", "retry", message_id)
    assert f"names tenant {victim}" in assert_one_line_error(refused, 1)
    with sessions() as session:
        assert session.query(Job).filter(Job.tenant_id == victim).count() == 0
