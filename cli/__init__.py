"""The operator's command line, `taskyard`: one module per command group, loaded on demand."""

from __future__ import annotations

from typing import Any

from cli.root import main

__all__ = ["EXIT_FAILED", "EXIT_UNREACHABLE", "describe_error", "main"]


def __getattr__(name: str) -> Any:
    """`EXIT_FAILED`, `EXIT_UNREACHABLE`, `describe_error`: from `cli.common`, when asked for."""
    if name in ("EXIT_FAILED", "EXIT_UNREACHABLE", "describe_error"):
        from cli import common

        return getattr(common, name)
    raise AttributeError(f"module 'cli' has no attribute {name!r}")
