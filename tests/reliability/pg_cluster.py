"""A private PostgreSQL cluster for one test: its own data directory, port and socket.

Scenarios that stop PostgreSQL use such a cluster and never the machine's
shared server.  `initdb` refuses to run as root, so as root the cluster
belongs to the `postgres` user (its directory is created straight under the
system temp dir and handed over).  `stop()` and `start()` act on this data
directory only (`pg_ctl -D`), and keep its data.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support import free_port

POSTGRES_USER = "postgres"


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin holding `initdb` and `pg_ctl`, if any."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda path: (
            int(Path(path).parent.parent.name) if Path(path).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    return Path(which).parent if which is not None else None


class PgCluster:
    """One private cluster: `init()` once, then `start()` / `stop()` as often as needed."""

    def __init__(self) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL's initdb and pg_ctl are not installed")
        self.bin = bin_dir
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="taskyard-pg-"))
        self.data = self.base / "data"
        self.log_path = self.base / "server.log"
        self.run_as = POSTGRES_USER if os.geteuid() == 0 else None

    def url(self, database: str = "taskyard_rel") -> str:
        """A SQLAlchemy URL of a database on this cluster (trust authentication)."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        """Create the cluster's data directory (trust authentication, user `postgres`)."""
        if self.run_as is not None:
            user = pwd.getpwnam(self.run_as)
            os.chown(self.base, user.pw_uid, user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            timeout=120,
        )

    def init_standby_of(self, primary: PgCluster) -> None:
        """Make this cluster a streaming standby of `primary` (a base backup; start it next)."""
        if self.run_as is not None:
            user = pwd.getpwnam(self.run_as)
            os.chown(self.base, user.pw_uid, user.pw_gid)
        self._run(
            "pg_basebackup",
            "-D",
            str(self.data),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-R",  # standby.signal and primary_conninfo: it streams from the primary
            "-X",
            "stream",
            "--no-sync",
            "--checkpoint=fast",  # not a spread checkpoint: minutes on an idle primary
            timeout=120,
        )

    def promote(self) -> None:
        """Promote this standby to a primary and wait until it accepts writes."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "promote", timeout=90)

    def start(self) -> None:
        """Start the cluster on its port (socket in its own directory) and wait until it accepts."""
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
            timeout=90,
        )

    def stop(self) -> None:
        """Stop this cluster only (fast: open sessions are ended); its data stays."""
        if (self.data / "postmaster.pid").exists():
            self._run(
                "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", timeout=90
            )

    def destroy(self) -> None:
        """Stop the cluster if it runs and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        """The server's log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _run(self, program: str, *args: str, timeout: float) -> None:
        result = subprocess.run(
            [str(self.bin / program), *args],
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=self.run_as,
            group=self.run_as,
            extra_groups=[] if self.run_as else None,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} failed for the cluster in {self.data} (exit {result.returncode}):\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}\n{self.log()[-2000:]}"
            )
