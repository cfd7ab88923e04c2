"""Taskyard's Alembic environment and revisions; run them through `db.migrate`."""
