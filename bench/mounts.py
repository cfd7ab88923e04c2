"""Which filesystem a path is on, and whether it is mounted with online discard (Linux).

The retention drop's time is the filesystem's freeing of a day's files, and
online `discard` (each freed extent discarded as the files go) can make that
several times slower on some disks (docs/guides/jobs.md): `bench.drop_cost`
and the store scenario say which kind of filesystem they measured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# The kernel's table of mounted filesystems (Linux).
MOUNTS = Path("/proc/self/mounts")


@dataclass(frozen=True)
class Mount:
    """A mounted filesystem: where, of which type, with which options."""

    point: str
    fstype: str
    options: tuple[str, ...]

    @property
    def online_discard(self) -> bool:
        """Mounted with `discard`: freed extents are discarded as files are removed."""
        return "discard" in self.options


def _unescape(field: str) -> str:
    # /proc/self/mounts writes a space, tab, newline or backslash in a path as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def mount_of(path: Path, mounts: str) -> Mount | None:
    """The filesystem `path` is on, from a mounts table's text (None: no entry holds it)."""
    target = str(path.resolve())
    found: Mount | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = _unescape(fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        # The longest mount point wins; of two at the same point, the later (on top).
        if inside and (found is None or len(point) >= len(found.point)):
            found = Mount(point, fields[2], tuple(fields[3].split(",")))
    return found


def describe_mount(path: Path) -> str:
    """One line on the filesystem under `path` and its online discard."""
    try:
        mount = mount_of(path, MOUNTS.read_text())
    except OSError:
        mount = None
    if mount is None:
        return "its filesystem's mount options could not be read"
    discard = (
        "with online discard (freed extents are discarded as the files go)"
        if mount.online_discard
        else "without online discard"
    )
    return f"{mount.fstype} mounted at {mount.point}, {discard}"
