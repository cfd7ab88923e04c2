"""Liveness and readiness of the scheduler (`periodiq schedules`), for a cluster's probes.

periodiq sleeps until the next slot of its periodic actors, then sends them;
`scheduler_tick` is due every minute, so a scheduler that sent nothing for
`STALE_SECONDS` is stuck.  Each send is noted here (`note_send`), and a small
HTTP server in the scheduler's process answers:

- `/healthz`, **live**: a send was tried within `STALE_SECONDS` (or the
  process started less than that ago).  Failing means stuck: restart it.
- `/readyz`, **ready**: live, and the last send went through (RabbitMQ and
  PostgreSQL took it).  A send that failed is caught up by the next tick:
  not ready is not a reason to restart.

Both answer JSON (`status`, `live`, `ready`, the seconds since the last send
and its error), 200 when passing and 503 when not; anything else is 404.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from middleware.probes import LIVE_PATH, READY_PATH

# scheduler_tick is due every 60 s: two missed slots, and a margin, mean stuck.
STALE_SECONDS = 150.0

logger = logging.getLogger("SchedulerProbe")


class SchedulerProbe:
    """What the scheduler's process knows of its sends (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        self._last: float | None = None
        self._error: str | None = None

    def note_send(self, error: str | None = None) -> None:
        """A periodic actor's send was tried now; `error` says why it failed, if it did."""
        with self._lock:
            self._last = self.clock()
            self._error = error

    def status(self) -> dict[str, Any]:
        """The probe's answer: live, ready, and what they were judged on."""
        now = self.clock()
        with self._lock:
            last, error = self._last, self._error
        since = now - (last if last is not None else self.started)
        live = since <= STALE_SECONDS
        ready = live and last is not None and error is None
        return {
            "status": "ready" if ready else "live" if live else "stuck",
            "live": live,
            "ready": ready,
            "seconds_since_last_send": None if last is None else round(now - last, 1),
            "last_error": error,
        }


# The scheduler process's probe (periodiq runs one scheduler per process).
PROBE = SchedulerProbe()


def _handler(probe: SchedulerProbe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path not in (LIVE_PATH, READY_PATH):
                self.send_error(404, "only /healthz and /readyz are served here")
                return
            status = probe.status()
            passing = status["live"] if path == LIVE_PATH else status["ready"]
            body = json.dumps(status).encode()
            self.send_response(200 if passing else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # probes every few seconds: not worth a log line each

    return Handler


def serve(host: str, port: int, probe: SchedulerProbe = PROBE) -> ThreadingHTTPServer | None:
    """Answer the probes on host:port in a daemon thread; None (logged) if the port is taken."""
    try:
        server = ThreadingHTTPServer((host, port), _handler(probe))
    except OSError as exc:
        logger.error(
            "The scheduler's probes are not served on %s:%d (%s): set "
            "TASKYARD_SCHEDULER_PROBE_PORT to a free port",
            host,
            port,
            exc,
        )
        return None
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="scheduler-probe", daemon=True)
    thread.start()
    logger.info("Scheduler probes on http://%s:%d%s and %s", host, port, LIVE_PATH, READY_PATH)
    return server
