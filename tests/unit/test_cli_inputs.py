"""The command line's own input checks and error lines (nothing running)."""

from __future__ import annotations

import datetime as dt

import click
import pytest
from click.testing import CliRunner
from dramatiq.errors import BrokerConnectionError

from cli import EXIT_UNREACHABLE, main
from cli.common import SINCE, CommandFailed, describe_error, json_argument, shown_broker_url


def test_json_argument_reads_an_object_and_refuses_the_rest() -> None:
    assert json_argument('{"a": [1]}', "--args") == {"a": [1]}
    assert json_argument(None, "--args") == {}
    with pytest.raises(CommandFailed, match="not valid JSON"):
        json_argument("{a: 1}", "--args")
    with pytest.raises(CommandFailed, match="must be a JSON object"):
        json_argument("[1, 2]", "--args")


def test_since_takes_an_age_or_an_iso_time() -> None:
    before = dt.datetime.now(dt.UTC)

    age = SINCE.convert("2h", None, None)
    after = dt.datetime.now(dt.UTC)
    naive = SINCE.convert("2026-01-02T03:04:05", None, None)

    assert before - dt.timedelta(hours=2) <= age <= after - dt.timedelta(hours=2)
    assert naive == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    with pytest.raises(click.BadParameter, match="neither an age"):
        SINCE.convert("tuesday", None, None)


def test_a_broker_error_exits_3_without_the_password() -> None:
    url = "amqp://ops:hunter2@rabbit.internal:5672/%2F"

    code, message = describe_error(BrokerConnectionError("connection refused"), None, url)

    assert code == EXIT_UNREACHABLE
    assert "amqp://ops:***@rabbit.internal:5672/%2F" in message
    assert "hunter2" not in message
    assert shown_broker_url("amqp://127.0.0.1/") == "amqp://127.0.0.1/"


def test_every_command_group_is_there() -> None:
    result = CliRunner().invoke(main, ["--help"])

    for command in (
        "dead-letters", "health", "ingest", "jobs", "migrate", "schedule", "send", "tenant",
        "workers",
    ):  # fmt: skip
        assert command in result.stdout
