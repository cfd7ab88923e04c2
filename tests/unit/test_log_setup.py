"""One place sets logging up from the settings: the level and format of every Taskyard process."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import EXIT_FAILED, EXIT_UNREACHABLE, main
from middleware.log_setup import configure_logging, in_command_process, load_settings_or_exit
from middleware.metrics_logging import JsonFormatter, QueuedLines
from settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    """The root logger, with its handlers, level and alembic's level put back after the test."""
    logger = logging.getLogger()
    handlers, level = list(logger.handlers), logger.level
    alembic_level = logging.getLogger("alembic").level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logging.getLogger("alembic").setLevel(alembic_level)


def test_the_level_applies_to_the_root_logger_and_alembic_is_held_to_warnings(
    root: logging.Logger,
) -> None:
    configure_logging(dataclasses.replace(Settings(), log_level="WARNING"))
    assert root.level == logging.WARNING
    assert logging.getLogger("alembic").getEffectiveLevel() == logging.WARNING

    configure_logging(dataclasses.replace(Settings(), log_level="INFO"))
    assert root.level == logging.INFO
    assert logging.getLogger("alembic").getEffectiveLevel() == logging.WARNING

    configure_logging(dataclasses.replace(Settings(), log_level="DEBUG"))
    assert logging.getLogger("alembic").getEffectiveLevel() == logging.DEBUG


def test_json_formats_the_handlers_behind_a_queue_too(root: logging.Logger) -> None:
    stream = io.StringIO()
    target = logging.StreamHandler(stream)
    queued = QueuedLines([target])
    root.handlers[:] = [queued]

    configure_logging(dataclasses.replace(Settings(), log_format="json"))
    logging.getLogger("test.log_setup").warning("in %s", "json")
    queued.close()

    assert isinstance(target.formatter, JsonFormatter)
    entry = json.loads(stream.getvalue())
    assert (entry["level"], entry["logger"], entry["message"]) == (
        "WARNING",
        "test.log_setup",
        "in json",
    )


def test_a_root_logger_without_a_handler_gets_one_on_stderr(root: logging.Logger) -> None:
    root.handlers[:] = [logging.NullHandler()]
    configure_logging(Settings())
    assert [type(h) for h in root.handlers] == [logging.NullHandler, logging.StreamHandler]


def test_a_variable_taskyard_cannot_use_ends_the_process_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKYARD_LOG_LEVEL", "nonsense")
    with pytest.raises(SystemExit) as exited:
        load_settings_or_exit()
    message = str(exited.value.code)
    assert message.startswith("error: TASKYARD_LOG_LEVEL='nonsense' is invalid")
    assert "debug, info, warning or error" in message and "\n" not in message


def test_a_producer_importing_the_broker_keeps_its_own_logging() -> None:
    # Only a process of `dramatiq actors` or `periodiq` is set up on import.
    assert not in_command_process()
    script = (
        "import logging; logging.basicConfig(level=logging.DEBUG)\n"
        "import brokers\n"
        "print(logging.getLogger().level, len(logging.getLogger().handlers))\n"
    )
    env = {**os.environ, "BROKER_URL": "stub://", "TASKYARD_LOG_LEVEL": "error"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(logging.DEBUG), "1"]


def test_a_worker_with_a_bad_log_level_says_so_in_one_line_and_exits() -> None:
    env = {**os.environ, "BROKER_URL": "stub://", "TASKYARD_LOG_LEVEL": "nonsense"}
    done = subprocess.run(
        [sys.executable, "-c", "import brokers"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: TASKYARD_LOG_LEVEL='nonsense' is invalid: expected debug, info, warning or "
        "error (must be one of debug, info, warning, error): fix that variable of the environment"
    ]


def test_taskyard_debug_shows_the_libraries_lines_at_the_level_asked(
    root: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKYARD_LOG_LEVEL", "warning")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:1/none")
    result = CliRunner().invoke(main, ["--debug", "tenant", "list"])
    assert result.exit_code == EXIT_UNREACHABLE
    assert root.level == logging.WARNING


def test_taskyard_with_a_bad_log_level_says_so_in_one_line(
    root: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKYARD_LOG_LEVEL", "nonsense")
    for args in (["tenant", "list"], ["--debug", "tenant", "list"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == EXIT_FAILED
        assert (
            result.output.strip()
            .splitlines()[-1]
            .startswith("error: TASKYARD_LOG_LEVEL='nonsense' is invalid")
        )
