"""The settings page: every field of `Settings`, its variable, default and meaning.

The variable and what it expects are read from `load_settings` (the one place that
reads the environment), the meaning from the comment above the field: a field
without a comment, or without a variable, fails the generator.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect

import settings as settings_module
from settings import Settings

PREFIX_NAME = "p"  # load_settings' local name of "TASKYARD_"
INTRO = """\
# Settings

Taskyard reads its settings once, from the environment, into one frozen
`Settings` (`settings.py`); nothing else reads the environment. A value it
cannot use stops the program at start with the variable's name and what it
expected. The defaults work on a laptop with RabbitMQ and PostgreSQL on
127.0.0.1.

"""


class UndocumentedSetting(Exception):
    """A field of `Settings` without a comment or without a variable."""


def _name(node: ast.expr, prefix: str) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if (
        isinstance(node, ast.BinOp)
        and isinstance(node.left, ast.Name)
        and node.left.id == PREFIX_NAME
        and isinstance(node.right, ast.Constant)
    ):
        return prefix + str(node.right.value)
    raise UndocumentedSetting(f"cannot read a variable name from {ast.unparse(node)}")


def variables() -> dict[str, tuple[str, str]]:
    """Each field's variable and what it expects, from `load_settings`' source."""
    tree = ast.parse(inspect.getsource(settings_module.load_settings))
    prefix = ""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == PREFIX_NAME for t in node.targets
        ):
            prefix = ast.literal_eval(node.value)
    found: dict[str, tuple[str, str]] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Settings"):
            continue
        for keyword in node.keywords:
            for call in ast.walk(keyword.value):
                if isinstance(call, ast.Call) and getattr(call.func, "id", "") in (
                    "_read",
                    "_read_secret_keys",
                ):
                    expected = ""
                    if len(call.args) >= 5 and isinstance(call.args[4], ast.Constant):
                        expected = str(call.args[4].value)
                    assert keyword.arg is not None
                    found[keyword.arg] = (_name(call.args[1], prefix), expected)
                    break
    return found


def comments() -> dict[str, str]:
    """The comment lines above each field of `Settings`, joined."""
    lines, _ = inspect.getsourcelines(Settings)
    tree = ast.parse(inspect.getsource(Settings))
    found: dict[str, str] = {}
    body = tree.body[0]
    assert isinstance(body, ast.ClassDef)
    for node in body.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above: list[str] = []
            index = node.lineno - 2
            while index >= 0 and lines[index].strip().startswith("#"):
                above.insert(0, lines[index].strip().lstrip("#").strip())
                index -= 1
            found[node.target.id] = " ".join(above)
    return found


def _default(value: object) -> str:
    if value in ("", ()):
        return "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def render() -> str:
    """The page's Markdown."""
    found_vars, found_comments = variables(), comments()
    defaults = Settings()
    rows = ["| variable | default | expects | meaning |", "| --- | --- | --- | --- |"]
    for field in dataclasses.fields(Settings):
        if field.name not in found_vars:
            raise UndocumentedSetting(f"Settings.{field.name} is not read by load_settings")
        meaning = found_comments.get(field.name, "")
        if not meaning:
            raise UndocumentedSetting(f"Settings.{field.name} has no comment saying what it is")
        variable, expected = found_vars[field.name]
        default = _default(getattr(defaults, field.name))
        meaning = meaning.replace("|", "\\|")
        rows.append(
            f"| `{variable}` | `{default}` | {expected or '(see meaning)'} | {meaning} "
            f"(`Settings.{field.name}`) |"
        )
    return INTRO + "\n".join(rows) + "\n"
