"""The scheduler's probes: live while it sends, ready when its last send went through."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from middleware.scheduler_probe import STALE_SECONDS, SchedulerProbe, serve


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_live_at_start_ready_after_a_send_and_stuck_when_sends_stop() -> None:
    clock = Clock()
    probe = SchedulerProbe(clock)
    # Just started: live (its first send is due), not ready (nothing sent yet)
    assert (probe.status()["live"], probe.status()["ready"]) == (True, False)
    # A send went through: ready
    clock.now += 30
    probe.note_send()
    assert probe.status() | {"seconds_since_last_send": 0.0} == {
        "status": "ready",
        "live": True,
        "ready": True,
        "seconds_since_last_send": 0.0,
        "last_error": None,
    }
    # A send failed: still live (the next tick catches up), not ready, with why
    clock.now += 60
    probe.note_send("SendFailed: cannot connect to RabbitMQ")
    status = probe.status()
    assert (status["live"], status["ready"]) == (True, False)
    assert status["last_error"] == "SendFailed: cannot connect to RabbitMQ"
    # Nothing sent for longer than two missed ticks: stuck
    clock.now += STALE_SECONDS + 1
    assert probe.status()["status"] == "stuck" and not probe.status()["live"]


def _get(port: int, path: str) -> tuple[int, dict[str, object] | None]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        return error.code, json.loads(body) if path in ("/healthz", "/readyz") else None


def test_the_server_answers_200_when_passing_503_when_not_and_404_elsewhere() -> None:
    clock = Clock()
    probe = SchedulerProbe(clock)
    server = serve("127.0.0.1", 0, probe)
    assert server is not None
    port = server.server_address[1]
    try:
        assert _get(port, "/healthz")[0] == 200
        assert _get(port, "/readyz")[0] == 503
        probe.note_send()
        code, body = _get(port, "/readyz")
        assert code == 200 and body is not None and body["status"] == "ready"
        clock.now += STALE_SECONDS + 1
        assert _get(port, "/healthz")[0] == 503
        assert _get(port, "/metrics")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_a_taken_port_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    first = serve("127.0.0.1", 0, SchedulerProbe())
    assert first is not None
    try:
        assert serve("127.0.0.1", first.server_address[1], SchedulerProbe()) is None
        assert "TASKYARD_SCHEDULER_PROBE_PORT" in caplog.text
    finally:
        first.shutdown()
        first.server_close()
