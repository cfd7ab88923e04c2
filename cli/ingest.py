"""`taskyard ingest show`: the record of one resource-feed ingest."""

from __future__ import annotations

import click
from sqlalchemy.orm import Session

from cli.common import ID, main, tenant_option, transaction_command
from cli.render import fields_table, records_table, show
from services.ingest import IngestSummary, get_ingest


@main.group()
def ingest() -> None:
    """Read the record of resource-feed ingests."""


def _print_ingest(summary: IngestSummary) -> None:
    counts = {k: v for k, v in summary.items() if not k.startswith("items_")}
    tables = [fields_table(f"ingest {summary['id']}", counts)]
    for kind, total, problems in (
        ("rejected", summary["rejected"], summary["items_rejected"]),
        ("failed", summary["failed"], summary["items_failed"]),
    ):
        if problems:
            title = f"{kind} items ({len(problems)} of {total})"
            tables.append(records_table(title, ("position", "resource_id", "error"), problems))
    show(*tables)


@transaction_command(ingest, "show", _print_ingest)
@click.argument("ingest_id", metavar="INGEST_ID", type=ID)
@tenant_option("Only if the ingest is this tenant's.")
def ingest_show(session: Session, ingest_id: int, tenant_id: int | None) -> IngestSummary:
    """Show one ingest: its counts and its rejected and failed items."""
    return get_ingest(session, ingest_id, tenant_id=tenant_id)
