"""Running `taskyard` as an operator does, for the command-line tests: subprocess, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# The console script the package installs next to this interpreter; `python -m cli` if not.
TASKYARD = Path(sys.executable).with_name("taskyard")
COMMAND = [str(TASKYARD)] if TASKYARD.exists() else [sys.executable, "-m", "cli"]
# Nothing listens on port 1: a broker or database there is down.
BROKER_DOWN_URL = "amqp://guest:s3cret-pw@127.0.0.1:1/%2F"


def taskyard(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `taskyard ARGS` with this run's environment (plus `env`)."""
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **env},
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The one JSON document a successful `--json` command printed."""
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """Check the failure shape every command shares, and return the error line."""
    assert result.returncode == exit_code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


def unique(prefix: str = "cli") -> str:
    """A name no other test or run uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
