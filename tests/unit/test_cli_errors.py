"""How the command line turns an error into an exit code and one line (nothing running)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.exc import OperationalError, ProgrammingError

from cli import EXIT_FAILED, EXIT_UNREACHABLE, describe_error, main
from db.migrate import SchemaBehind
from services.errors import NotFound, UnknownTenant, ValidationFailed
from settings import SettingsError

URL = "postgresql+psycopg2://taskyard:s3cret@db.internal:5432/taskyard"
REPO = Path(__file__).resolve().parents[2]


class DriverError(Exception):
    """What psycopg2 raises: a message, and a SQLSTATE when the server sent one."""

    def __init__(self, message: str, pgcode: str | None = None) -> None:
        super().__init__(message)
        self.pgcode = pgcode


def operational(message: str, pgcode: str | None = None) -> OperationalError:
    return OperationalError("SELECT 1", None, DriverError(message, pgcode))


def programming(message: str, pgcode: str) -> ProgrammingError:
    return ProgrammingError("SELECT 1", None, DriverError(message, pgcode))


def behind_because_of(cause: Exception) -> SchemaBehind:
    try:
        raise SchemaBehind("the database does not exist: run `taskyard migrate`") from cause
    except SchemaBehind as exc:
        return exc


REFUSED = 'connection to server at "db.internal", port 5432 failed: Connection refused\n\tIs it up?'


@pytest.mark.parametrize(
    ("exc", "exit_code", "expected"),
    [
        (SettingsError("DATABASE_URL='x' is invalid"), EXIT_FAILED, "DATABASE_URL='x' is invalid"),
        (UnknownTenant(7), EXIT_FAILED, "tenant 7 does not exist: `taskyard tenant list`"),
        (NotFound("ingest 3 does not exist"), EXIT_FAILED, "ingest 3 does not exist"),
        (ValidationFailed("tenant name must be 1"), EXIT_FAILED, "tenant name must be 1"),
        (SchemaBehind("behind: run `taskyard migrate`"), EXIT_FAILED, "run `taskyard migrate`"),
        (PermissionError("may not create"), EXIT_FAILED, "may not create"),
        (operational(REFUSED), EXIT_UNREACHABLE, "cannot reach the database at postgresql"),
        (operational("terminating connection", "57P01"), EXIT_UNREACHABLE, "cannot reach"),
        (
            operational('FATAL: password authentication failed for user "taskyard"'),
            EXIT_UNREACHABLE,
            "refused the login",
        ),
        (
            behind_because_of(operational('FATAL: role "bob" does not exist')),
            EXIT_UNREACHABLE,
            "refused the login",
        ),
        (
            behind_because_of(operational('FATAL: database "x" does not exist')),
            EXIT_FAILED,
            "taskyard migrate",
        ),
        (
            programming('relation "tenants" does not exist\nLINE 1: ...', "42P01"),
            EXIT_FAILED,
            '(relation "tenants" does not exist): run `taskyard migrate`',
        ),
        (
            ProgrammingError("", None, DriverError('invalid dsn: invalid connection option "foo"')),
            EXIT_FAILED,
            '(invalid dsn: invalid connection option "foo"): fix DATABASE_URL',
        ),
        (operational("could not serialize access", "40001"), EXIT_FAILED, "unexpected"),
        (programming("syntax error at or near", "42601"), EXIT_FAILED, "unexpected"),
        (RuntimeError("boom"), EXIT_FAILED, "unexpected RuntimeError: boom (rerun as"),
    ],
)
def test_describe_error_maps_each_kind_to_an_exit_code_and_advice(
    exc: Exception, exit_code: int, expected: str
) -> None:
    code, message = describe_error(exc, URL)

    assert code == exit_code
    assert expected in message
    assert "s3cret" not in message


def test_an_unreachable_database_is_named_without_its_password() -> None:
    _, message = describe_error(operational(REFUSED), URL)

    assert "postgresql+psycopg2://taskyard:***@db.internal:5432/taskyard" in message
    assert "Is it up?" not in message  # only the driver's first line


def test_a_settings_error_is_one_line_on_stderr_and_exit_1() -> None:
    result = CliRunner().invoke(main, ["tenant", "list"], env={"DATABASE_URL": "mysql://db/x"})

    assert result.exit_code == EXIT_FAILED
    assert result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: DATABASE_URL='mysql://db/x' is invalid")


def test_debug_prints_the_traceback_before_the_error_line() -> None:
    result = CliRunner().invoke(
        main, ["--debug", "tenant", "list"], env={"DATABASE_URL": "mysql://db/x"}
    )

    assert result.exit_code == EXIT_FAILED
    assert result.stderr.startswith("Traceback (most recent call last)")
    assert result.stderr.splitlines()[-1].startswith("error: DATABASE_URL=")


def test_an_invalid_id_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["tenant", "show", "abc"])

    assert result.exit_code == 2
    assert "'abc' is not a valid id" in result.stderr


def test_importing_the_cli_builds_no_broker() -> None:
    # brokers.py installs a global broker when imported: only commands that send may import it.
    probe = "import sys, cli; print(sorted({'brokers', 'actors'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
