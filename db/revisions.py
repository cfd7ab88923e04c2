"""Which revision the migrations end at, read from their files: no Alembic, no SQLAlchemy.

Alembic (with every dialect it supports) is imported only to migrate, or to
explain a schema that is not at the head: a command or a worker at the head
revision, the usual case, starts without it (`db.migrate.check_schema`'s fast
path, and the command line's quick reads).
"""

from __future__ import annotations

import re
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATE_ADVICE = "run `taskyard migrate`"


class SchemaBehind(RuntimeError):
    """The database's schema is not at the revision this code expects."""


_REVISION = re.compile(r"^revision(?::[^=]+)? = [\"']([^\"']+)[\"']$", re.MULTILINE)
_DOWN_REVISION = re.compile(
    r"^down_revision(?::[^=]+)? = (?:None|[\"']([^\"']+)[\"'])$", re.MULTILINE
)


def head_from_files() -> str | None:
    """The head revision read from the revision files alone, or None if they are not linear.

    Each file names its `revision` and its `down_revision` as plain strings; the head
    is the one no other names.  Anything else (a merge, a branch, a file this cannot
    read) gives None, and Alembic decides.
    """
    downs: dict[str, str | None] = {}
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        source = path.read_text()
        revision, down = _REVISION.search(source), _DOWN_REVISION.search(source)
        if revision is None or down is None:
            return None
        downs[revision.group(1)] = down.group(1)
    heads = set(downs) - {down for down in downs.values() if down is not None}
    roots = [rev for rev, down in downs.items() if down is None]
    return heads.pop() if len(heads) == 1 and len(roots) == 1 else None
