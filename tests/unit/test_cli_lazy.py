"""`taskyard --help` lists every command without importing them; the table matches them."""

from __future__ import annotations

import subprocess
import sys

import click

from cli.root import COMMANDS, main


def test_the_table_names_each_command_with_its_own_help() -> None:
    ctx = click.Context(main, info_name="taskyard")
    for name, (module, help) in COMMANDS.items():
        command = main.get_command(ctx, name)
        assert command is not None, f"{module} does not declare {name}"
        assert command.get_short_help_str(limit=300) == help, name


def test_help_imports_no_command_module_nor_the_database_layer() -> None:
    code = (
        "import sys\n"
        "from cli import main\n"
        "try:\n"
        "    main(['--help'], prog_name='taskyard')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('sqlalchemy', 'dramatiq', 'cli.common', 'cli.jobs', 'db.models')\n"
        "         if m in sys.modules]\n"
        "print('heavy:', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert "Commands:" in result.stdout and "dead-letters" in result.stdout
    assert "heavy: []" in result.stdout, result.stdout


def test_jobs_list_imports_neither_the_broker_nor_the_middleware_nor_http() -> None:
    """`jobs list` reads PostgreSQL only: Dramatiq, pika, requests and the middleware
    (the worker's logging set-up among them) are left for the commands that use them;
    SQLAlchemy and the models too, unless it cannot read quickly (cli/quick.py)."""
    code = (
        "import sys\n"
        "from cli import main\n"
        "try:\n"
        "    main(['jobs', 'list', '--help'], prog_name='taskyard')\n"
        "except SystemExit:\n"
        "    pass\n"
        "unneeded = [m for m in ('dramatiq', 'pika', 'requests', 'middleware', 'transport',\n"
        "                        'sqlalchemy', 'db.models', 'psycopg2') if m in sys.modules]\n"
        "print('unneeded:', unneeded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert "--status" in result.stdout
    assert "unneeded: []" in result.stdout, result.stdout
