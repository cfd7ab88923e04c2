"""What a process costs, read from /proc: AMQP connections, threads, RSS, CPU time, its tree.

The functions that take `proc` read that directory in place of /proc (the
tests give them a small fake one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

AMQP_PORT = 5672
PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK")


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


def amqp_local_ports(pid: int, port: int = AMQP_PORT) -> list[int]:
    """Local ports of `pid`'s established TCP connections to `port` (RabbitMQ's, 5672 by
    default; matched by socket inode)."""
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
            if remote_port == port and established and cols[9] in inodes:
                ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def amqp_connections(pid: int, port: int = AMQP_PORT) -> int:
    """Established TCP connections of `pid` to `port` (RabbitMQ's, 5672 by default)."""
    return len(amqp_local_ports(pid, port))


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
    return parse_stat(Path(f"/proc/{pid}/stat").read_text()).cpu


@dataclass(frozen=True)
class Stat:
    """What the harness reads of one process's /proc/<pid>/stat."""

    pid: int
    comm: str
    ppid: int
    # utime + stime, in seconds (the kernel counts them in clock ticks of 1/SC_CLK_TCK s).
    cpu: float
    # When the process started, in clock ticks since boot: with the pid, it names one
    # process, so a pid used again by a new process is not taken for the old one.
    started: int


def parse_stat(text: str) -> Stat:
    """One /proc/<pid>/stat line (the name in parentheses may hold spaces and parentheses)."""
    head, rest = text.rsplit(")", 1)
    pid, name = head.split(" (", 1)
    # `rest` starts at field 3 (state): utime and stime are fields 14 and 15, starttime 22.
    fields = rest.split()
    return Stat(
        pid=int(pid),
        comm=name,
        ppid=int(fields[1]),
        cpu=(int(fields[11]) + int(fields[12])) / TICK,
        started=int(fields[19]),
    )


# The sampler reads these every few ms: os.open and os.read on strings (half the cost of
# open() and a file object), no Path objects.
def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(fd, 4096)]
        while chunks[-1]:
            chunks.append(os.read(fd, 4096))
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_stat(pid: int, proc: Path = PROC) -> Stat | None:
    """The process's stat, or None once it has gone."""
    try:
        return parse_stat(_read(f"{proc}/{pid}/stat").decode(errors="replace"))
    except (OSError, ValueError, IndexError):
        return None


def comm(pid: int, proc: Path = PROC) -> str:
    """The process's name as the kernel keeps it (15 characters at most), or '' once gone."""
    try:
        return _read(f"{proc}/{pid}/comm").decode(errors="replace").strip()
    except OSError:
        return ""


def title(pid: int, proc: Path = PROC) -> str:
    """The process's command line with its arguments joined by spaces (PostgreSQL's
    processes write their title there), or '' once gone."""
    try:
        raw = _read(f"{proc}/{pid}/cmdline")
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def pids(proc: Path = PROC) -> list[int]:
    """Every process now running."""
    return sorted(int(name) for name in os.listdir(proc) if name.isdigit())


def children(pid: int, proc: Path = PROC) -> list[int]:
    """The process's children: each thread's own (a child belongs to the thread that forked it)."""
    found: list[int] = []
    tasks = f"{proc}/{pid}/task"
    try:
        threads = os.listdir(tasks)
    except OSError:
        return found
    for thread in threads:
        try:
            found += [int(child) for child in _read(f"{tasks}/{thread}/children").split()]
        except OSError:
            continue
    return found


def descendants(pid: int, proc: Path = PROC) -> list[int]:
    """The process's children, their children and so on (not the process itself)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children(todo.pop(), proc):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found
