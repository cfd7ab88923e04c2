"""A real `dramatiq actors` command's /healthz and /readyz: ready once it consumes, not live
while one of its worker processes is stopped, live again once it resumes."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from settings import Settings
from tests.support import REPO, WorkerProcess, delete_prefix_queues, free_port, wait_for, worker_env

pytestmark = pytest.mark.integration


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return 0, {}


def probe_command(kind: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m middleware.probes <kind>`, as the image's HEALTHCHECK runs it."""
    return subprocess.run(
        [sys.executable, "-m", "middleware.probes", kind],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_probes_follow_the_worker_processes(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    port = free_port()
    prefix = f"p{uuid.uuid4().hex[:8]}."
    env = worker_env(
        TASKYARD_QUEUE_PREFIX=prefix,
        TASKYARD_METRICS_PORT=str(port),
        TASKYARD_HEARTBEAT_SECONDS="0.5",
    )
    worker = WorkerProcess(tmp_path / "worker.log", env, threads=2)
    stopped: int | None = None
    try:
        worker.wait_ready()
        # Ready once its process has beaten: consuming, database reached, migrations current
        wait_for(lambda: get(port, "/readyz")[0] == 200, timeout=20, what="/readyz 200")
        code, body = get(port, "/healthz")
        assert code == 200 and body["live"] and len(body["processes"]) == 1
        # The image's HEALTHCHECK command says the same
        assert probe_command("live", env).returncode == 0

        # When its worker process stops (stuck), the command is not live within a few beats
        stopped = int(body["processes"][0]["pid"])
        os.kill(stopped, signal.SIGSTOP)
        wait_for(lambda: get(port, "/healthz")[0] == 503, timeout=15, what="/healthz 503")
        code, body = get(port, "/readyz")
        assert code == 503 and "no beat for" in body["processes"][0]["problems"][0]
        failing = probe_command("live", env)
        assert failing.returncode == 1 and "no beat for" in failing.stdout

        # And live again once it resumes
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        wait_for(lambda: get(port, "/healthz")[0] == 200, timeout=15, what="/healthz 200")
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        worker.stop()
        delete_prefix_queues(dataclasses.replace(settings, queue_prefix=prefix), engine)
