"""`taskyard --help` lists every command without importing them; the table matches them."""

from __future__ import annotations

import click

from cli.root import COMMANDS, main
from tests.support import loaded_by


def test_the_table_names_each_command_with_its_own_help() -> None:
    ctx = click.Context(main, info_name="taskyard")
    for name, (module, help) in COMMANDS.items():
        command = main.get_command(ctx, name)
        assert command is not None, f"{module} does not declare {name}"
        assert command.get_short_help_str(limit=300) == help, name


def _cli(args: list[str]) -> str:
    return (
        "from cli import main\n"
        "try:\n"
        f"    main({args!r}, prog_name='taskyard')\n"
        "except SystemExit:\n"
        "    pass\n"
    )


def test_help_imports_no_command_module_nor_the_database_layer() -> None:
    heavy = ("sqlalchemy", "dramatiq", "cli.common", "cli.jobs", "db.models")
    loaded, output = loaded_by(_cli(["--help"]), heavy)
    assert "Commands:" in output and "dead-letters" in output
    assert loaded == [], output


def test_jobs_list_imports_neither_the_broker_nor_the_middleware_nor_http() -> None:
    """`jobs list` reads PostgreSQL only: Dramatiq, pika, requests and the middleware
    (the worker's logging set-up among them) are left for the commands that use them;
    SQLAlchemy and the models too, unless it cannot read quickly (cli/quick.py)."""
    unneeded = ("dramatiq", "pika", "requests", "middleware", "transport", "sqlalchemy",
                "db.models", "psycopg2")  # fmt: skip
    loaded, output = loaded_by(_cli(["jobs", "list", "--help"]), unneeded)
    assert "--status" in output
    assert loaded == [], output
