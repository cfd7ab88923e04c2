"""`transport.queue_depth`: the unacknowledged messages from RabbitMQ's management API.

A local HTTP server stands in for the API (this machine's RabbitMQ may not run the
plugin); the AMQP side is stubbed here and read for real in
tests/integration/test_queue_depth.py.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from settings import Settings
from transport import queue_depth
from transport.queue_depth import ApiUnreadable, QueueDepth, Ready, queue_depths, read_unacked

QUEUES = [
    {"name": "p.tenant.7", "messages_unacknowledged": 3},
    {"name": "p.tenant.8", "messages_unacknowledged": 0},
    {"name": "p.taskyard.system"},
]


class Api:
    """What the fake API was asked."""

    paths: list[str]
    authorizations: list[str | None]


@pytest.fixture
def api() -> Iterator[tuple[str, Api]]:
    seen = Api()
    seen.paths, seen.authorizations = [], []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.paths.append(self.path)
            seen.authorizations.append(self.headers.get("Authorization"))
            body = json.dumps(QUEUES).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://ops:pa%40ss@127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_reads_the_vhosts_queues_with_the_urls_credentials(api: tuple[str, Api]) -> None:
    url, seen = api
    found = read_unacked(url, "amqp://guest:guest@127.0.0.1:5672/%2F")
    assert found == {"p.tenant.7": 3, "p.tenant.8": 0, "p.taskyard.system": 0}
    assert seen.paths == ["/api/queues/%2F?columns=name,messages_unacknowledged"]
    assert seen.authorizations == ["Basic " + base64.b64encode(b"ops:pa@ss").decode()]


def test_an_api_that_does_not_answer_is_one_error_without_the_password() -> None:
    with pytest.raises(ApiUnreadable) as caught:
        read_unacked("http://ops:secret@127.0.0.1:1", "amqp://127.0.0.1/%2F")
    assert "secret" not in str(caught.value)
    assert "TASKYARD_RABBITMQ_API_URL" in str(caught.value)


def _ready(monkeypatch: pytest.MonkeyPatch) -> None:
    def read_ready(broker_url: str, names: Sequence[str]) -> dict[str, Ready | None]:
        known = {"p.tenant.7": Ready(5, 2), "p.tenant.8": Ready(0, 1)}
        return {name: known.get(name) for name in names}

    monkeypatch.setattr(queue_depth, "read_ready", read_ready)


def test_queue_depths_by_tenant_with_the_api(
    api: tuple[str, Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    _ready(monkeypatch)
    settings = Settings(queue_prefix="p.", rabbitmq_api_url=api[0])
    assert queue_depths(settings, [7, 8, 9]) == {
        7: QueueDepth(ready=5, unacked=3, consumers=2),
        8: QueueDepth(ready=0, unacked=0, consumers=1),
        9: None,
    }


def test_queue_depths_without_the_api_leave_unacked_unknown(
    api: tuple[str, Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    _ready(monkeypatch)
    settings = dataclasses.replace(Settings(queue_prefix="p."), rabbitmq_api_url="")
    assert queue_depths(settings, [7]) == {7: QueueDepth(ready=5, unacked=None, consumers=2)}
    assert api[1].paths == []
