"""Security: the metrics server listens on 127.0.0.1 unless TASKYARD_METRICS_HOST says otherwise.

A real worker is started without TASKYARD_METRICS_HOST (`worker_env` drops
every TASKYARD_ variable of the test run).  Its log line names the address,
and the kernel's socket table (/proc/net/tcp, read through the worker's own
/proc entry) shows who listens on its port: 127.0.0.1 only, never 0.0.0.0.
What the endpoint exposes is covered by test_secret_leaks.py's grep.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from settings import Settings
from tests.reliability.kill_support import Rig, open_rig
from tests.support import wait_for

pytestmark = [pytest.mark.integration]

TCP_LISTEN = "0A"


@pytest.fixture
def rig(reliability_database: str, settings: Settings, tmp_path: Path) -> Iterator[Rig]:
    """A tenant, its queue and a worker of this scenario."""
    with open_rig(reliability_database, settings, tmp_path) as made:
        yield made


def listening_addresses(pid: int, port: int) -> set[str]:
    """The IPv4 and IPv6 addresses listening on `port`, from the process's /proc/net tables."""
    found: set[str] = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, port_hex = local.split(":")
            if state == TCP_LISTEN and int(port_hex, 16) == port:
                found.add(_address(address))
    return found


def _address(hex_address: str) -> str:
    """/proc/net/tcp's little-endian hex address as text (IPv4 dotted; IPv6 as hex)."""
    if len(hex_address) == 8:
        return ".".join(str(b) for b in reversed(bytes.fromhex(hex_address)))
    return hex_address


def test_metrics_listen_on_loopback_only_by_default(rig: Rig) -> None:
    # Given a worker started without TASKYARD_METRICS_HOST
    worker = rig.start_worker("worker")
    # When its metrics server is up
    found = wait_for(
        lambda: re.search(r"Serving metrics on http://([^:/]+):(\d+)/metrics", worker.log()),
        timeout=15,
        what="the metrics log line",
    )
    host, port = found.group(1), int(found.group(2))
    # Then it says 127.0.0.1, and the kernel agrees: only 127.0.0.1 listens on that port
    assert host == "127.0.0.1"
    addresses = listening_addresses(worker.proc.pid, port)
    print(f"metrics port {port} listened on by {addresses}")
    assert addresses == {"127.0.0.1"}
