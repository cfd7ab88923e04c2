"""Docstrings, comments, README.md and docs/ state contracts, never measurements.

A measured figure (a timing, a rate, a ratio, a memory size) goes stale with the
next change and the next machine: it lives in BENCHMARKS.md alone, written by
`python -m bench`. This test fails on one quoted anywhere else. Numbers that are
contracts (a bound the code enforces, a setting's default, a histogram's buckets,
a test scenario's parameters, an example log line) are listed in ALLOWED with
their reason.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("actors", "cli", "db", "demo", "docgen", "middleware", "services", "transport")
MODULES = ("brokers.py", "schedules.py", "settings.py")
# What a measurement looks like: sub-second times, rates, ratios, percentages, sizes,
# times with decimals, minutes-and-seconds.
FIGURE = re.compile(
    r"\d[\d,.]*\s?(µs|us|ns|ms)\b"
    r"|\b\d[\d.]*\s?x\b(?!\s?\d)"
    r"|\d[\d.]*\s?(\u00d7|x) (faster|slower|more|less)"
    r"|\d[\d.]*\s?%"
    r"|\b(jobs|messages|sends|ticks)/s\b"
    r"|\d[\d,.]*\s?(MB|KB|GB|MiB|KiB)\b(?!\s(body|limit|encoded))"
    r"|\d+ min \d+ s"
    r"|\d+[.]\d+\s?s\b"
    r"|\b(faster|slower) than\b"
)
# Contracts that look like figures: (phrase, why it is not a measurement).
ALLOWED = {
    "at most 200 ms": "the lock wait purge_job_records sets",
    "10 ms, doubling up to 250 ms": "get_result's polling schedule",
    "1 ms to 366 days": "max_age's accepted range",
    "buckets 5 ms": "histogram buckets",
    "buckets 10 ms": "histogram buckets",
    "0.1 s growing to 5 s": "the group commit's retry schedule",
    "retrying in 0.8 s": "an example of a record's error text",
    "dead in 0.115s": "an example log line",
    '"duration_seconds": 0.114599': "an example log line",
    "1% transient, 0.1% permanent": "the load scenario's failure rates",
    "under 100 KB": "the outage test's bound on the producer's log",
    "a 10 MB body": "the poison-message test's input",
    "at 200 jobs/s": "the latency scenario's send rate",
    "at most 8 KiB": "the result size kept",
    "over 8 KiB": "the result size kept",
    "up to 64 KiB": "the raw body kept",
    "3.05": "the connect timeout's default",
    "4.2s, 3m07s": "the duration format's example",
    "<0.1s": "the duration format's floor (what a shorter one shows)",
    "3.2 MiB, 41.0 GiB": "the size format's example",
    "1%eth0": "an IPv6 zone",
    "1 MiB": "the message size limit",
    "arrive faster than": "prose, no figure",
    "(20 % of the rows)": "PostgreSQL's default autovacuum scale factor",
    "at 2 %": "the autovacuum scale factor each partition is given",
    "Argon2id, 64 MiB": "the password hash's memory cost (RFC 9106's profile)",
}


def texts_of_python(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring of a module."""
    source = path.read_text()
    found = [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc and node.body:
                found.append((node.body[0].lineno, doc))
    return found


def texts_of_markdown(path: Path) -> list[tuple[int, str]]:
    return list(enumerate(path.read_text().split("\n"), start=1))


def sources() -> list[Path]:
    python = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    python = [p for p in python if "versions" not in p.parts]
    docs = [p for p in sorted((REPO / "docs").rglob("*.md")) if "_build" not in p.parts]
    return [*python, *(REPO / m for m in MODULES), REPO / "README.md", *docs]


def quoted_figures(path: Path) -> list[str]:
    """Every figure quoted in `path`'s prose, as `path:line: figure in its line`."""
    reader = texts_of_python if path.suffix == ".py" else texts_of_markdown
    found = []
    for line, text in reader(path):
        for phrase in ALLOWED:
            text = text.replace(phrase, "")
        for match in FIGURE.finditer(text):
            found.append(f"{path.relative_to(REPO)}:{line}: {match.group(0)!r}")
    return found


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_measurement_is_quoted_outside_benchmarks(path: Path) -> None:
    assert quoted_figures(path) == [], "move it to BENCHMARKS.md (python -m bench)"


def test_a_quoted_timing_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("A job record costs about 700 µs; prepared, 6 to 15 % more jobs/s.\n")
    module = tmp_path / "module.py"
    module.write_text('"""Fast: 2.5x the ORM."""\n\nX = 1  # took 40-70 ms here\n')
    assert len(quoted_figures_any(page)) == 3
    assert len(quoted_figures_any(module)) == 2


def quoted_figures_any(path: Path) -> list[str]:
    reader = texts_of_python if path.suffix == ".py" else texts_of_markdown
    return [m.group(0) for _, text in reader(path) for m in FIGURE.finditer(text)]
