"""The code snippets of README.md and docs/: each marked to be run by the tests, or why not.

A fenced block of shell or Python is preceded, on the line just above it, by
`<!-- snippet: run -->` (tests/integration/test_doc_snippets.py runs it against
the test run's database, RabbitMQ and a real worker) or by
`<!-- snippet: skip: REASON -->` (a transcript, a cluster command, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKED_LANGUAGES = frozenset({"python", "sh", "bash", "shell", "console"})
MARKER = re.compile(r"^<!-- snippet: (run|skip: (?P<reason>.+\S)) -->$")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")


@dataclass(frozen=True)
class Snippet:
    """One fenced block: where it is, its language, its marker and its code."""

    path: Path
    line: int
    lang: str
    mode: str  # "run", "skip" or "" (no marker)
    reason: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def pages() -> list[Path]:
    """README.md and every hand-written page of docs/ (not the generated reference)."""
    docs = sorted(
        p
        for p in (REPO / "docs").rglob("*.md")
        if "_build" not in p.parts and p.parent.name != "reference"
    )
    return [REPO / "README.md", *docs]


def snippets(path: Path) -> list[Snippet]:
    """The fenced blocks of one page."""
    found: list[Snippet] = []
    lines = path.read_text().split("\n")
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None or not opening["lang"]:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        marker = MARKER.match(lines[index - 1].strip()) if index else None
        mode = "" if marker is None else ("run" if marker[1] == "run" else "skip")
        found.append(
            Snippet(
                path=path,
                line=index + 1,
                lang=opening["lang"],
                mode=mode,
                reason=(marker["reason"] or "") if marker else "",
                code="\n".join(lines[index + 1 : end]) + "\n",
            )
        )
        index = end + 1
    return found


def checked_snippets() -> list[Snippet]:
    """Every shell and Python snippet of every page."""
    return [s for page in pages() for s in snippets(page) if s.lang in CHECKED_LANGUAGES]
