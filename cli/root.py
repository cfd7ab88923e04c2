"""The `taskyard` root group: it imports a command's module only when that command runs.

`taskyard --help` lists the commands from `COMMANDS` without importing them, so it
starts without SQLAlchemy, Dramatiq or the models; `taskyard jobs ...` imports
`cli.jobs` alone. tests/unit/test_cli_lazy.py checks the table against the commands.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click

# Each command: the module that declares it (on `main`), and its one-line help.
COMMANDS: dict[str, tuple[str, str]] = {
    "dead-letters": (
        "cli.dead_letters",
        "List, show, requeue and purge dead letters (messages that failed for good).",
    ),
    "demo": (
        "cli.demo",
        "Run the demo: SQLite and the in-process broker, the production actors and middleware.",
    ),
    "health": (
        "cli.workers",
        "Check the broker, the database, its schema, the workers and the scheduler; exit 0 if ok.",
    ),
    "ingest": ("cli.ingest", "Read the record of resource-feed ingests."),
    "integration": (
        "cli.integrations",
        "Add, list, remove and sync a tenant's integrations (github, http_feed).",
    ),
    "jobs": ("cli.jobs", "Read the record of jobs (one per message); retry or cancel one."),
    "locker": (
        "cli.locker",
        "Set, get, list and delete a tenant's secrets (TASKYARD_SECRET_KEYS encrypts them).",
    ),
    "migrate": ("cli.migrate", "Create the database if missing and bring its schema up to date."),
    "migrate-queues": (
        "cli.migrate",
        "Give every existing Taskyard queue the kind asked for, keeping its messages.",
    ),
    "schedule": (
        "cli.schedules",
        "Add, list, show, pause, resume, remove and run tenants' schedules.",
    ),
    "send": ("cli.send", "Send one job of a tenant-scoped ACTOR; prints its message id."),
    "summary": (
        "cli.summary",
        "Show jobs by status, dead letters, queue depth per tenant, workers and scheduler lag.",
    ),
    "tenant": ("cli.tenants", "Create, list, show, enable, disable and delete tenants."),
    "web": (
        "cli.web",
        "Serve the web console on TASKYARD_WEB_HOST:TASKYARD_WEB_PORT (127.0.0.1:9292).",
    ),
    "workers": (
        "cli.workers",
        "List the live worker processes: host, pid, queues, threads, and what each thread runs.",
    ),
}


class Taskyard(click.Group):
    """The root group: commands loaded on demand; any command's error is one line on stderr."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(COMMANDS[cmd_name][0])
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help) for name, (_, help) in sorted(COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            # The reader stopped reading (`| head`, `| grep -q`): what it read was what it
            # wanted, so the command succeeded, as ripgrep and fd say (click would exit 1,
            # failing `until taskyard jobs show ID | grep -q succeeded` under pipefail).
            # Python must not write to the closed pipe again when it exits.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except Exception as exc:
            from cli.common import report_error

            ctx.exit(report_error(ctx, exc))


@click.group(
    cls=Taskyard, name="taskyard", context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Taskyard's operator tool: tenants, schedules, jobs, dead letters, workers, health."""
    from cli.common import CLI_FORMAT, State

    ctx.obj = State(debug=debug)
    # The libraries' own log lines (a publisher retrying, a pool reconnecting) would
    # break the one-line error; --debug shows them, at TASKYARD_LOG_LEVEL and in
    # TASKYARD_LOG_FORMAT (the logging set-up, which loads the middleware, only then).
    if debug:
        from middleware.log_setup import configure_logging

        configure_logging(ctx.obj.load_settings(), quiet_libraries=False, text_format=CLI_FORMAT)
    else:
        logging.getLogger().addHandler(logging.NullHandler())
