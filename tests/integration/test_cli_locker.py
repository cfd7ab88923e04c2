"""`taskyard locker ...` as run: values from stdin only, hidden unless revealed, key errors."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import pytest
from cryptography.fernet import Fernet

from tests.integration.cli_harness import COMMAND, REPO, as_json, assert_one_line_error

pytestmark = pytest.mark.integration

KEYS = Fernet.generate_key().decode()


@pytest.fixture(autouse=True)
def _database(migrated_database: str) -> None:
    """Every test here runs the CLI on this run's migrated database."""


def locker(*args: str, stdin: str = "", keys: str = KEYS) -> subprocess.CompletedProcess[str]:
    """Run `taskyard locker ARGS` with `stdin` piped in and the given secret keys."""
    return subprocess.run(
        [*COMMAND, "locker", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "TASKYARD_SECRET_KEYS": keys},
    )


def test_a_secret_set_from_stdin_is_hidden_revealed_listed_and_deleted(
    make_tenant: Callable[[str], int],
) -> None:
    tenant = str(make_tenant("cli-locker"))

    stored = locker("set", "--tenant", tenant, "github_token", stdin="ghp_s3cret\n")
    hidden = as_json(locker("get", "--tenant", tenant, "github_token", "--json"))
    revealed = locker("get", "--tenant", tenant, "github_token", "--reveal")
    names = as_json(locker("list", "--tenant", tenant, "--json"))
    deleted = locker("delete", "--tenant", tenant, "github_token")
    gone = locker("get", "--tenant", tenant, "github_token")

    assert stored.returncode == 0, stored.stderr
    assert "ghp_s3cret" not in stored.stdout + stored.stderr
    assert hidden["value"] == "********"
    assert revealed.stdout == "ghp_s3cret\n"
    assert names == ["github_token"]
    assert deleted.returncode == 0
    assert "github_token" in assert_one_line_error(gone, 1)


def test_without_a_secret_key_the_locker_says_how_to_make_one(
    make_tenant: Callable[[str], int],
) -> None:
    tenant = str(make_tenant("cli-locker-nokey"))

    line = assert_one_line_error(locker("set", "--tenant", tenant, "token", stdin="x", keys=""), 1)

    assert "TASKYARD_SECRET_KEYS" in line


def test_a_wrong_secret_key_cannot_read_and_says_so(make_tenant: Callable[[str], int]) -> None:
    tenant = str(make_tenant("cli-locker-wrong"))
    assert locker("set", "--tenant", tenant, "token", stdin="x").returncode == 0

    other = Fernet.generate_key().decode()
    line = assert_one_line_error(locker("get", "--tenant", tenant, "token", keys=other), 1)

    assert "token" in line


def test_set_refuses_an_unknown_tenant_and_an_empty_value(
    make_tenant: Callable[[str], int],
) -> None:
    unknown = locker("set", "--tenant", "987654321", "token", stdin="x")
    empty = locker("set", "--tenant", str(make_tenant("cli-locker-empty")), "token", stdin="")

    assert "987654321" in assert_one_line_error(unknown, 1)
    assert "no value on stdin" in assert_one_line_error(empty, 1)
