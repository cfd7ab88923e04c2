"""Taskyard's database layer: typed models, the engine and session factory, migrations."""
