"""One tenant-argument style: `--tenant ID` everywhere but the `tenant` commands' own ID.

The older form, with the tenant as the first argument, still runs with a warning.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from cli import main
from cli.root import COMMANDS
from db.migrate import upgrade_to_head
from db.models import Tenant
from db.session import make_engine, make_session_factory
from settings import Settings


def _commands() -> Iterator[tuple[str, click.Command]]:
    ctx = click.Context(main, info_name="taskyard")

    def walk(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
        yield path, command
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                yield from walk(sub, f"{path} {name}")

    for name in sorted(COMMANDS):
        command = main.get_command(ctx, name)
        assert command is not None
        yield from walk(command, name)


def test_the_tenant_is_an_argument_only_of_the_tenant_commands() -> None:
    for path, command in _commands():
        for param in command.params:
            if param.name in ("tenant_id", "tenant"):
                if isinstance(param, click.Argument):
                    assert path.startswith("tenant "), f"taskyard {path}: tenant as an argument"
                else:
                    assert "--tenant" in param.opts, f"taskyard {path}: {param.opts}"


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'tenants.db'}"
    upgrade_to_head(url)
    engine = make_engine(Settings(database_url=url))
    with make_session_factory(engine).begin() as session:
        session.add(Tenant(id=7, name="acme"))
    engine.dispose()
    return url


def _taskyard(database: str, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"DATABASE_URL": database})


@pytest.mark.parametrize(
    "old", [("locker", "list", "7"), ("integration", "list", "7", "--json")], ids=" ".join
)
def test_the_tenant_first_still_runs_with_a_warning(database: str, old: tuple[str, ...]) -> None:
    group, command, tenant, *rest = old
    new = _taskyard(database, group, command, "--tenant", tenant, *rest)
    legacy = _taskyard(database, *old)
    assert new.exit_code == 0 and new.stderr == "", new.output
    assert legacy.exit_code == 0, legacy.output
    assert legacy.stdout == new.stdout
    [warning] = legacy.stderr.splitlines()
    assert "deprecated" in warning
    assert f"taskyard {group} {command} --tenant {tenant}" in warning


@pytest.mark.parametrize(
    "args",
    [
        ("locker", "list"),  # no tenant at all
        ("locker", "list", "acme"),  # not an id: not read as the old form
        ("locker", "get", "7"),  # as many arguments as the command takes
        ("locker", "list", "--tenant", "7", "8"),  # both forms at once
    ],
    ids=" ".join,
)
def test_anything_else_is_a_usage_error_without_a_warning(
    database: str, args: tuple[str, ...]
) -> None:
    result = _taskyard(database, *args)
    assert result.exit_code == 2, result.output
    assert "deprecated" not in result.stderr


def test_an_option_value_is_not_taken_for_the_tenant(database: str) -> None:
    # `schedule add` takes one argument (ACTOR); "UTC" and the cron are option values.
    result = _taskyard(
        database, "schedule", "add", "7", "ingest_resources", "--cron", "0 3 * * *", "--tz", "UTC"
    )
    assert "taskyard schedule add --tenant 7 ..." in result.stderr
    assert result.exit_code != 2, result.output  # parsed: ACTOR, --cron and --tz as meant
