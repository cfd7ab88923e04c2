"""`message.get_result()` read from the job record: a real worker, RabbitMQ, PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

import dramatiq
import pytest
from dramatiq.results import ResultFailure, ResultMissing, ResultTimeout

from services.results import MAX_RESULT_BYTES, ResultNotKept
from tests.integration.cli_harness import as_json, taskyard
from tests.integration.pipeline_actors import pipe_count, result_fail, result_unkept, result_value
from tests.support import REPO, WorkerProcess, worker_env

pytestmark = pytest.mark.integration

# Generous for a loaded machine; a result normally arrives well within a second.
WAIT_MS = 30_000


def test_get_result_returns_what_the_actor_returned_any_json_value(
    worker: WorkerProcess, make_tenant: Callable[[str], int]
) -> None:
    tenant = make_tenant("results")
    values = [42, "text", [1, "two"], {"value": 1}, {"truncated": True, "bytes": 3}, None]
    messages = [result_value.send(tenant_id=tenant, value=value) for value in values]

    # Dicts shaped like the old wrapped or dropped forms come back as returned.
    assert [m.get_result(block=True, timeout=WAIT_MS) for m in messages] == values


def test_get_result_is_missing_until_the_job_is_over_and_times_out_when_asked(
    worker: WorkerProcess, make_tenant: Callable[[str], int]
) -> None:
    tenant = make_tenant("results-wait")
    message = result_value.send(tenant_id=tenant, value="late", sleep_ms=3_000)

    with pytest.raises(ResultMissing):
        message.get_result()
    started = time.monotonic()
    with pytest.raises(ResultTimeout):
        message.get_result(block=True, timeout=300)
    waited = time.monotonic() - started
    # Waits the whole timeout (not less), and not much more.
    assert 0.3 <= waited < 2.0
    assert message.get_result(block=True, timeout=WAIT_MS) == "late"


def test_a_dead_job_raises_result_failure_carrying_its_recorded_error(
    worker: WorkerProcess, make_tenant: Callable[[str], int]
) -> None:
    tenant = make_tenant("results-fail")
    message = result_fail.send(tenant_id=tenant, text="no such invoice 7")

    with pytest.raises(ResultFailure) as failed:
        message.get_result(block=True, timeout=WAIT_MS)

    assert failed.value.orig_exc_type == "ValueError"
    assert failed.value.orig_exc_msg == "no such invoice 7"
    assert str(failed.value) == "actor raised ValueError: no such invoice 7"


def test_a_result_too_large_or_not_json_raises_result_not_kept_saying_why(
    worker: WorkerProcess, make_tenant: Callable[[str], int]
) -> None:
    tenant = make_tenant("results-unkept")
    large = result_unkept.send(tenant_id=tenant, size=MAX_RESULT_BYTES + 1)
    not_json = result_unkept.send(tenant_id=tenant)

    with pytest.raises(ResultNotKept, match=rf"over the limit of {MAX_RESULT_BYTES} bytes"):
        large.get_result(block=True, timeout=WAIT_MS)
    with pytest.raises(ResultNotKept, match="of type set, is not JSON"):
        not_json.get_result(block=True, timeout=WAIT_MS)


def test_group_get_results_reads_every_member(
    worker: WorkerProcess, make_tenant: Callable[[str], int]
) -> None:
    tenant = make_tenant("results-group")
    members = [result_value.message(tenant_id=tenant, value=i, sleep_ms=100) for i in range(5)]

    done = dramatiq.group(members).run()

    assert list(done.get_results(block=True, timeout=WAIT_MS)) == [0, 1, 2, 3, 4]


def test_pipeline_get_result_is_the_last_stages_result(
    worker: WorkerProcess, make_tenant: Callable[[str], int]
) -> None:
    tenant = make_tenant("results-pipe")
    pipe = (
        pipe_count.message(tenant_id=tenant, label="r1")
        | pipe_count.message(tenant_id=tenant, label="r1")
    ).run()

    assert pipe.get_result(block=True, timeout=WAIT_MS) == {"n": 2}
    assert list(pipe.get_results()) == [{"n": 1}, {"n": 2}]


_READ_IN_A_NEW_PROCESS = """
import json, sys
from dramatiq import Message
from dramatiq.results import ResultFailure
from middleware.results import JobResults
from settings import load_settings

backend = JobResults.from_settings(load_settings())
out = []
for spec in json.loads(sys.argv[1]):
    message = Message(args=(), kwargs={}, options={}, **spec)
    try:
        out.append(["value", message.get_result(backend=backend)])
    except ResultFailure as exc:
        out.append(["failure", exc.orig_exc_type, exc.orig_exc_msg])
print(json.dumps(out))
"""


def test_results_are_read_by_a_new_process_with_only_the_database(
    worker: WorkerProcess, make_tenant: Callable[[str], int]
) -> None:
    tenant = make_tenant("results-fresh")
    ok = result_value.send(tenant_id=tenant, value={"invoice": 7})
    bad = result_fail.send(tenant_id=tenant, text="card declined")
    ok.get_result(block=True, timeout=WAIT_MS)
    with pytest.raises(ResultFailure):
        bad.get_result(block=True, timeout=WAIT_MS)
    specs = [
        {"queue_name": m.queue_name, "actor_name": m.actor_name, "message_id": m.message_id}
        for m in (ok, bad)
    ]
    # No broker: the process knows the database URL and nothing else of Taskyard's.
    env = {k: v for k, v in worker_env().items() if k != "BROKER_URL"}

    done = subprocess.run(
        [sys.executable, "-c", _READ_IN_A_NEW_PROCESS, json.dumps(specs)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        ["value", {"invoice": 7}],
        ["failure", "ValueError", "card declined"],
    ]


def test_a_message_reusing_another_jobs_id_never_reads_that_jobs_result(
    worker: WorkerProcess, make_tenant: Callable[[str], int]
) -> None:
    tenant, other = make_tenant("results-owner"), make_tenant("results-other")
    mine = result_value.send(tenant_id=tenant, value="secret of the first tenant")
    mine.get_result(block=True, timeout=WAIT_MS)
    # The same id on another tenant's queue (a crafted or mistaken message).
    theirs = result_value.message(tenant_id=other, value=None).copy(message_id=mine.message_id)

    with pytest.raises(ResultMissing, match="record of another job"):
        theirs.get_result(block=True, timeout=WAIT_MS)


def test_jobs_show_gives_the_result_as_returned_or_why_it_was_not_kept(
    worker: WorkerProcess, make_tenant: Callable[[str], int]
) -> None:
    tenant = make_tenant("results-cli")
    number = result_value.send(tenant_id=tenant, value=7)
    large = result_unkept.send(tenant_id=tenant, size=MAX_RESULT_BYTES + 1)
    assert number.get_result(block=True, timeout=WAIT_MS) == 7
    with pytest.raises(ResultNotKept):
        large.get_result(block=True, timeout=WAIT_MS)

    shown = as_json(taskyard("jobs", "show", number.message_id, "--json"))
    unkept = as_json(taskyard("jobs", "show", large.message_id, "--json"))
    table = taskyard("jobs", "show", large.message_id)

    assert (shown["result"], shown["result_dropped"]) == (7, None)
    assert unkept["result"] is None
    assert "over the limit of 8192 bytes" in unkept["result_dropped"]
    assert table.returncode == 0 and "result_dropped" in table.stdout
