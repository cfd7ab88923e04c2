"""Taskyard's benchmark harness: `python -m bench` measures Taskyard beside its peers."""
