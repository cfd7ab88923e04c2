"""`taskyard dead-letters requeue --all` on a terminal: its progress bar over several batches."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import uuid

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.dead_letters import REQUEUE_BATCH, record_dead_letter
from settings import Settings
from tests.integration.cli_harness import COMMAND
from tests.support import REPO, queue_state

pytestmark = pytest.mark.integration

# More than one batch: the bar advances once per committed batch.
LETTERS = REQUEUE_BATCH + 7
# Rich's control sequences (colours, cursor moves, erasing the transient bar).
CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_a_terminal(*args: str) -> tuple[int, str]:
    """Run `taskyard ARGS` with its stdout on a pseudo-terminal; its exit code and output."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    proc = subprocess.Popen(
        [*COMMAND, *args], stdin=follower, stdout=follower, stderr=follower, cwd=REPO, env=env
    )
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command exited and the terminal closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(60), b"".join(chunks).decode("utf-8", "replace")


def test_requeue_all_shows_a_bar_to_its_total_and_publishes_every_letter(
    migrated_database: str, settings: Settings, sessions: sessionmaker[Session], queue: str
) -> None:
    # Given more dead letters of one actor than one requeue batch takes
    actor = f"progress_{uuid.uuid4().hex[:8]}"
    with sessions.begin() as session:
        for n in range(LETTERS):
            message_id = f"{actor}-{n}"
            message = {
                "queue_name": queue,
                "actor_name": actor,
                "args": [],
                "kwargs": {},
                "options": {},
                "message_id": message_id,
                "message_timestamp": 1_700_000_000_000,
            }
            record_dead_letter(
                session,
                message_id=message_id,
                queue=queue,
                reason="actor_failed",
                error="boom",
                traceback=None,
                attempts=3,
                actor=actor,
                message=message,
            )

    # When an operator requeues them all on a terminal
    code, output = run_on_a_terminal("dead-letters", "requeue", "--all", "--actor", actor)

    # Then the bar was drawn with its description and reached its total, and all were sent
    text = CONTROL.sub("", output)
    assert code == 0, text
    assert "requeueing dead letters" in text
    assert "100%" in text
    assert f"requeued {LETTERS} dead letter(s)" in text
    assert queue_state(settings.broker_url, queue) == (LETTERS, 0)
    # And with --json the terminal gets the JSON document alone, with no bar in it
    code, output = run_on_a_terminal("dead-letters", "requeue", "--all", "--actor", actor, "--json")
    assert code == 0, output
    assert json.loads(output) == {"requeued": 0, "message_ids": []}
