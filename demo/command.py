"""The `taskyard demo` command: runs the demo and prints what its jobs did."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from demo import DemoResult, run_demo

NEXT_STEPS = """\
Next:
  make run        a worker and the scheduler on RabbitMQ and PostgreSQL (see README.md)
  taskyard --help the operator's command line
  docs/tutorial.md  your first jobs, a schedule, a dead letter, an actor of your own"""


def summary(result: DemoResult) -> dict[str, Any]:
    """The demo's outcome as one JSON-able document."""
    by_status = Counter(job["status"] for job in result.jobs)
    return {
        "finished": result.finished,
        "seconds": round(result.seconds, 2),
        "jobs": by_status,
        "retried": sum(1 for job in result.jobs if job["attempts"] > 1),
        "ingest": result.ingest,
        "webhooks": result.webhooks,
        "metrics": result.metrics,
        "records": result.jobs,
        "log_file": str(result.log_file),
    }


def _table(result: DemoResult) -> Table:
    table = Table(title="Job records")
    for column in ("actor", "status", "attempts", "error"):
        table.add_column(column)
    groups: Counter[tuple[str, str, int, str]] = Counter(
        (job["actor"], job["status"], job["attempts"], (job["error"] or "")[:90])
        for job in result.jobs
    )
    for (actor, status, attempts, error), count in sorted(groups.items()):
        label = f"{actor} (x{count})" if count > 1 else actor
        table.add_row(label, status, str(attempts), error)
    return table


@click.command("demo")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the demo's SQLite database and log here (default: a new temporary directory).",
)
@click.option(
    "--web",
    is_flag=True,
    help="Then serve the web console on the demo's records (TASKYARD_WEB_PORT) until Ctrl-C.",
)
def demo_command(as_json: bool, workdir: Path | None, web: bool) -> None:
    """Run the demo: SQLite and the in-process broker, the production actors and middleware."""
    if web and as_json:
        raise click.UsageError("--web serves the console after the demo; --json prints and exits")
    console = Console(stderr=True, quiet=as_json or not sys.stderr.isatty())
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    with console.status("Starting") as status:

        def progress(step: str) -> None:
            status.update(step)
            console.log(step)

        result = run_demo(workdir, progress=progress)
    if as_json:
        click.echo(json.dumps(summary(result), default=str))
    else:
        out = Console()
        out.print(_table(result))
        ingest = result.ingest
        out.print(
            f"Ingest {ingest.get('id')}: {ingest.get('fetched')} fetched, "
            f"{ingest.get('valid')} valid, {ingest.get('rejected')} rejected, "
            f"{ingest.get('processed')} processed, status {ingest.get('status')}"
        )
        for problem in ingest.get("items_rejected", []):
            out.print(f"  rejected item {problem['position']}: {problem['error']}")
        if result.metrics:
            counts = ", ".join(f"{k} {v:g}" for k, v in sorted(result.metrics.items()))
            out.print(f"/metrics said taskyard_jobs_total: {counts}")
        for hook in result.webhooks:
            verdict = "valid" if hook["signature_valid"] else "INVALID"
            out.print(f"Webhook {hook['event']} received, signature {verdict}")
        where = result.log_file.parent
        out.print(f"Finished in {result.seconds:.1f} s; database and log in {where}")
        out.print(NEXT_STEPS)
    if not result.finished:
        raise SystemExit(1)
    if web:
        from demo.console import serve_demo_console

        serve_demo_console(result.log_file.parent)
