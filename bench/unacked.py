"""How many unacknowledged messages RabbitMQ counts on a process's connections."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable

from bench.procstat import amqp_local_ports


def unacked_messages(pids: Iterable[int]) -> int:
    """The unacknowledged messages on every channel of these processes' AMQP connections.

    Read with `rabbitmqctl list_channels`, whose channel names start with the
    client's address (`127.0.0.1:41344 -> 127.0.0.1:5672 (1)`).
    """
    ports: set[int] = set()
    for pid in pids:
        try:
            ports.update(amqp_local_ports(pid))
        except OSError:
            continue  # the process is gone
    listing = subprocess.run(
        ["rabbitmqctl", "list_channels", "name", "messages_unacknowledged", "-q"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    total = 0
    for line in listing.stdout.splitlines():
        name, _, unacked = line.rpartition("\t")
        port = name.split(" ", 1)[0].rpartition(":")[2]
        if port.isdigit() and int(port) in ports and unacked.strip().isdigit():
            total += int(unacked)
    return total
