"""The consumer's option table for callbacks and pipelines: every stage screened as a message."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from transport.rabbitmq import Refusal, screen

QUEUE = "tenant.1"


def stage(actor: str, options: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A well-formed message of tenant 1 as a dict (fields may be overridden)."""
    return {
        "queue_name": QUEUE,
        "actor_name": actor,
        "args": [],
        "kwargs": {"tenant_id": 1},
        "options": options or {},
        "message_id": str(uuid.uuid4()),
        "message_timestamp": int(time.time() * 1000),
    } | fields


def screened(options: dict[str, Any]) -> Any:
    return screen(json.dumps(stage("first", options)).encode(), queue_name=QUEUE, max_bytes=100_000)


def test_a_pipeline_with_callbacks_and_a_delay_is_taken() -> None:
    third = stage("third", {"on_failure": "report", "delay": 1_000})
    second = stage("second", {"pipe_ignore": True, "pipe_target": third})
    options = {"on_success": "done", "pipe_target": second}

    verdict = screened(options)

    assert not isinstance(verdict, Refusal) and verdict.options == options


@pytest.mark.parametrize(
    ("options", "error_part"),
    [
        ({"on_success": 5}, "'on_success'"),
        ({"on_failure": ""}, "'on_failure'"),
        ({"on_success": "x" * 201}, "'on_success'"),
        ({"pipe_ignore": "yes"}, "'pipe_ignore'"),
        ({"delay": -1}, "'delay'"),
        ({"pipe_target": ["not", "a", "message"]}, "'pipe_target'"),
        (
            {"pipe_target": stage("second", {"throws": 1})},
            "stage 2 of the pipeline: option 'throws'",
        ),
        ({"pipe_target": stage("second") | {"message_id": "x" * 37}}, "stage 2"),
        (
            {"pipe_target": stage("second", {"pipe_target": {"actor_name": "third"}})},
            "stage 3 of the pipeline: not a message object",
        ),
        (
            {"pipe_target": stage("second", {"pipe_target": stage("third", {"on_success": 1})})},
            "stage 3 of the pipeline: option 'on_success'",
        ),
    ],
)
def test_a_callback_or_stage_out_of_the_table_is_refused(
    options: dict[str, Any], error_part: str
) -> None:
    verdict = screened(options)

    assert isinstance(verdict, Refusal) and verdict.reason == "invalid_options"
    assert error_part in verdict.error


def test_a_pipeline_of_300_stages_is_screened_and_taken() -> None:
    target: dict[str, Any] | None = None
    for index in range(300):
        target = stage(f"s{index}", {"pipe_target": target} if target else {})
    assert target is not None

    verdict = screened({"pipe_target": target})

    assert not isinstance(verdict, Refusal)
