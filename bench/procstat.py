"""What a worker process costs, read from /proc: AMQP connections, threads, RSS, CPU time."""

from __future__ import annotations

import os
from pathlib import Path

AMQP_PORT = 5672


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def amqp_local_ports(pid: int) -> list[int]:
    """Local ports of `pid`'s established TCP connections to port 5672 (matched by socket inode)."""
    inodes = _socket_inodes(pid)
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            remote_port = int(cols[2].rsplit(":", 1)[1], 16)
            established = cols[3] == "01"
            if remote_port == AMQP_PORT and established and cols[9] in inodes:
                ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def amqp_connections(pid: int) -> int:
    """Established TCP connections of `pid` to port 5672."""
    return len(amqp_local_ports(pid))


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def threads(pid: int) -> int:
    """The process's thread count."""
    return _status(pid, "Threads")


def rss_mb(pid: int) -> float:
    """The process's resident set, in MiB."""
    return _status(pid, "VmRSS") / 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
