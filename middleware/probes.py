"""Liveness and readiness of a `dramatiq actors` command, for a cluster scheduler's probes.

Each worker process writes what it knows of itself to a small file in the
command's directory (the one its metrics share) on every heartbeat: when,
whether its worker and consumer threads are alive, whether its last beat
reached PostgreSQL, whether the database's migrations match its code.  The
command's exposition server answers `/healthz` and `/readyz` from those files
(`probe_status`), so a probe never waits on RabbitMQ or PostgreSQL itself.

- **Live** (`/healthz`): every worker process has written its file within
  `STALE_BEATS` beats, and all its worker and consumer threads are alive.  A
  process that is stuck, or has lost a thread, fails it: restart it.
- **Ready** (`/readyz`): live, and every process consumes, reached the
  database on its last beat, and runs against a database at its migrations'
  head.  Not ready is not a reason to restart: the process waits for the
  database or the migration and serves again on its own.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, TypedDict

# Where each worker process's probe file goes, in the command's directory.
PROBE_PREFIX = "probe-"
# A process whose file is older than this many beats is taken for stuck.
STALE_BEATS = 5
# Probe paths the exposition server answers besides `/metrics`.
LIVE_PATH, READY_PATH = "/healthz", "/readyz"


class ProcessProbe(TypedDict):
    """What one worker process wrote of itself at its last beat."""

    pid: int
    at: float
    interval: float
    worker_threads: int
    worker_threads_alive: int
    consumers: int
    consumers_alive: int
    database: bool
    schema: bool
    schema_error: str | None


def probe_path(directory: Path, pid: int) -> Path:
    """The probe file of process `pid`."""
    return directory / f"{PROBE_PREFIX}{pid}.json"


def write_probe(directory: Path, probe: ProcessProbe) -> None:
    """Replace this process's probe file at once (a reader never sees half of it)."""
    path = probe_path(directory, probe["pid"])
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(probe))
    os.replace(partial, path)


def remove_probe(directory: Path, pid: int) -> None:
    """Remove a process's probe file (it stopped on purpose)."""
    probe_path(directory, pid).unlink(missing_ok=True)


def read_probes(directory: Path) -> tuple[list[ProcessProbe], list[str]]:
    """Every process's probe, and the files that could not be read (named, with why)."""
    probes: list[ProcessProbe] = []
    unreadable: list[str] = []
    for path in sorted(directory.glob(f"{PROBE_PREFIX}*.json")):
        try:
            data = json.loads(path.read_text())
            probes.append(_checked(data))
        except FileNotFoundError:
            continue  # removed by a process stopping between the listing and the read
        except (OSError, ValueError, KeyError, TypeError) as exc:
            unreadable.append(f"{path.name}: {type(exc).__name__}: {exc}")
    return probes, unreadable


def _checked(data: Any) -> ProcessProbe:
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    for key in ProcessProbe.__annotations__:
        if key not in data:
            raise KeyError(key)
    numbers = ("pid", "at", "interval", "worker_threads", "worker_threads_alive")
    for key in (*numbers, "consumers", "consumers_alive"):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{key} is not a number: {value!r}")
    probe: ProcessProbe = data  # type: ignore[assignment]
    return probe


def _process_problems(probe: ProcessProbe, now: float) -> tuple[list[str], list[str]]:
    """(why it is not live, why it is not ready) for one process."""
    dead: list[str] = []
    unready: list[str] = []
    age = now - probe["at"]
    if age > STALE_BEATS * probe["interval"]:
        dead.append(f"no beat for {age:.0f} s")
    if probe["worker_threads_alive"] < probe["worker_threads"]:
        dead.append(
            f"{probe['worker_threads'] - probe['worker_threads_alive']} of "
            f"{probe['worker_threads']} worker threads dead"
        )
    if probe["consumers_alive"] < probe["consumers"]:
        dead.append(f"{probe['consumers'] - probe['consumers_alive']} consumer thread(s) dead")
    if probe["consumers"] == 0:
        unready.append("consumes no queue")
    if not probe["database"]:
        unready.append("its last beat could not reach PostgreSQL")
    if not probe["schema"]:
        unready.append(f"database migrations: {probe['schema_error']}")
    return dead, unready


def probe_status(
    directory: Path, path: str, *, now: float | None = None
) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body of `/healthz` or `/readyz` for the command's processes."""
    now = time.time() if now is None else now
    probes, unreadable = read_probes(directory)
    processes: list[dict[str, Any]] = []
    live = bool(probes) and not unreadable
    ready = live
    for probe in probes:
        dead, unready = _process_problems(probe, now)
        live = live and not dead
        ready = ready and not dead and not unready
        processes.append(
            {
                "pid": probe["pid"],
                "seconds_since_beat": round(now - probe["at"], 1),
                "live": not dead,
                "ready": not dead and not unready,
                "problems": dead + unready,
            }
        )
    problems = [f"unreadable probe file {name}" for name in unreadable]
    if not probes:
        problems.append("no worker process has written a probe yet (starting, or all stopped)")
    ok = live if path == LIVE_PATH else ready
    body = {
        "status": "ok" if ok else "failing",
        "live": live,
        "ready": ready,
        "processes": processes,
        "problems": problems,
    }
    return (200 if ok else 503), body


def check_over_http(kind: str, port: int, *, host: str = "127.0.0.1", timeout: float = 5.0) -> int:
    """Ask this host's exposition server one probe; print its answer; 0 when it passes.

    What the image's HEALTHCHECK and an exec probe run
    (`python -m middleware.probes live|ready`): the command's answer, not a new check.
    """
    import urllib.error
    import urllib.request

    path = LIVE_PATH if kind == "live" else READY_PATH
    url = f"http://{host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            print(response.read().decode(errors="replace"))
            return 0
    except urllib.error.HTTPError as error:
        print(error.read().decode(errors="replace"))
    except OSError as exc:
        print(f"{url} did not answer ({exc}): is this a `dramatiq actors` command?")
    return 1


def main(argv: list[str]) -> int:
    """`python -m middleware.probes [--scheduler] live|ready`: exit 0 when the probe passes.

    With `--scheduler`, the scheduler's probe (TASKYARD_SCHEDULER_PROBE_PORT);
    otherwise the workers' (TASKYARD_METRICS_PORT).
    """
    scheduler = argv[:1] == ["--scheduler"]
    args = argv[1:] if scheduler else argv
    if len(args) != 1 or args[0] not in ("live", "ready"):
        print("usage: python -m middleware.probes [--scheduler] live|ready")
        return 2
    from settings import load_settings

    settings = load_settings()
    port = settings.scheduler_probe_port if scheduler else settings.metrics_port
    return check_over_http(args[0], port)


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
