"""The actors page: every actor Taskyard declares, its queue, options and argument schema."""

from __future__ import annotations

import inspect
from typing import Any

import marshmallow
from marshmallow import validate

INTRO = """\
# Actors

Every actor the `actors` package declares (what `dramatiq actors actors` runs).
Arguments are keyword-only JSON values; `send()` checks them against the
schema below (unknown arguments are refused) before anything is recorded, and
the worker checks them again. A tenant-scoped actor runs on its tenant's queue
(`tenant.<id>`) and needs `tenant_id`; a system actor runs on `taskyard.system`.

"""
# The actor options worth showing an operator (Dramatiq's own and Taskyard's).
SHOWN_OPTIONS = ("max_attempts", "max_retries", "time_limit", "max_age", "priority", "periodic")


def _validator(v: Any) -> str:
    if isinstance(v, validate.Range):
        parts = []
        if v.min is not None:
            parts.append(f">= {v.min}" if v.min_inclusive else f"> {v.min}")
        if v.max is not None:
            parts.append(f"<= {v.max}" if v.max_inclusive else f"< {v.max}")
        return " and ".join(parts)
    if isinstance(v, validate.Length):
        if v.equal is not None:
            return f"length {v.equal}"
        return (
            f"length {v.min if v.min is not None else 0} to {v.max if v.max is not None else 'any'}"
        )
    if isinstance(v, validate.OneOf):
        return "one of " + ", ".join(f"`{c}`" for c in v.choices)
    if isinstance(v, validate.Regexp):
        return f"matches `{v.regex.pattern!s}`"
    return type(v).__name__


def _field_row(name: str, field: marshmallow.fields.Field[Any]) -> str:
    kind = type(field).__name__
    if isinstance(field, marshmallow.fields.List):
        kind += f" of {type(field.inner).__name__}"
    checks = [_validator(v) for v in field.validators]
    if getattr(field, "strict", False):
        checks.append("strict (no strings)")
    if field.allow_none:
        checks.append("may be null")
    required = "yes" if field.required else f"no (default `{field.load_default!r}`)"
    if not field.required and field.load_default is marshmallow.missing:
        required = "no"
    return f"| `{name}` | {kind} | {required} | {'; '.join(checks)} |"


def _signature_rows(fn: Any) -> list[str]:
    rows = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        required = "yes" if param.default is param.empty else f"no (default `{param.default!r}`)"
        annotation = param.annotation if isinstance(param.annotation, str) else ""
        rows.append(f"| `{param.name}` | {annotation or 'any JSON'} | {required} | |")
    return rows


def render() -> str:
    """The page's Markdown."""
    import actors  # noqa: F401  (declares every actor on the installed broker)
    import brokers

    sections = []
    broker = brokers.broker
    for name in sorted(broker.get_declared_actors()):
        actor = broker.get_actor(name)
        options = actor.options
        scope = "tenant-scoped" if options.get("tenant_scoped") else "system"
        doc = inspect.getdoc(actor.fn) or ""
        lines = [f"## `{name}`", "", f"*{scope}*, `{actor.fn.__module__}`. {doc}", ""]
        shown = []
        for option in SHOWN_OPTIONS:
            if option in options:
                value = options[option]
                if option == "periodic":
                    value = getattr(value, "text", None) or str(value)
                shown.append(f"`{option}={value}`")
        if shown:
            lines += ["Options: " + ", ".join(shown) + ".", ""]
        lines += ["| argument | type | required | checks |", "| --- | --- | --- | --- |"]
        schema_class = options.get("schema")
        if schema_class is not None:
            schema = schema_class()
            lines += [_field_row(n, f) for n, f in schema.fields.items()]
        else:
            rows = _signature_rows(actor.fn)
            lines += rows or ["| (none) | | | |"]
        sections.append("\n".join(lines) + "\n")
    return INTRO + "\n".join(sections)
