"""bench/mounts.py: which filesystem a place is on, and whether it discards online."""

from __future__ import annotations

from pathlib import Path

from bench.mounts import describe_mount, mount_of

MOUNTS = """\
/dev/vda / ext4 rw,relatime,discard,resv_strict 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
/dev/vdb /var/lib/postgresql ext4 rw,relatime 0 0
/dev/loop0 /mnt/with\\040space xfs rw,noatime,discard 0 0
/dev/vdc /var/lib/postgresql ext4 rw,noatime 0 0
"""


def test_the_longest_mount_point_holding_the_path_is_its_filesystem() -> None:
    data = mount_of(Path("/var/lib/postgresql/15/main"), MOUNTS)
    # Two filesystems at one point: the later one is on top.
    assert data is not None
    assert (data.point, data.fstype, data.options) == (
        "/var/lib/postgresql",
        "ext4",
        ("rw", "noatime"),
    )
    assert not data.online_discard
    root = mount_of(Path("/var/tmp"), MOUNTS)
    assert root is not None and root.point == "/" and root.online_discard
    # A sibling whose name only starts like a mount point is not inside it.
    assert mount_of(Path("/var/lib/postgresql-old"), MOUNTS).point == "/"  # type: ignore[union-attr]


def test_an_escaped_mount_point_is_read_as_its_path() -> None:
    spaced = mount_of(Path("/mnt/with space/pg"), MOUNTS)
    assert spaced is not None
    assert (spaced.point, spaced.fstype, spaced.online_discard) == ("/mnt/with space", "xfs", True)


def test_no_entry_holding_the_path_is_none() -> None:
    assert mount_of(Path("/anything"), "garbage\n\n/dev/x /only ext4 rw 0 0\n") is None


def test_this_machines_description_names_a_filesystem(tmp_path: Path) -> None:
    line = describe_mount(tmp_path)
    assert " mounted at /" in line or line == "its filesystem's mount options could not be read"
    assert "discard" in line or "could not be read" in line
