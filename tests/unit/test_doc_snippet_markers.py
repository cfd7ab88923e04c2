"""Every shell and Python snippet of the docs is run by a test or says why not; none rots."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.doc_snippets import REPO, Snippet, checked_snippets, pages, snippets


def test_every_snippet_is_marked_to_run_or_says_why_not() -> None:
    unmarked = [s.where for s in checked_snippets() if not s.mode]
    assert unmarked == [], "add <!-- snippet: run --> or <!-- snippet: skip: REASON -->"


def test_a_block_without_a_marker_is_found(tmp_path: Path) -> None:
    page = REPO / "README.md"
    text = page.read_text()
    assert "<!-- snippet: run -->\n```sh" in text
    unmarked = tmp_path / "page.md"
    unmarked.write_text("Text\n\n```python\nprint(1)\n```\n")
    assert [s.mode for s in snippets(unmarked)] == [""]


@pytest.mark.parametrize(
    "snippet", [s for s in checked_snippets() if s.lang == "python"], ids=lambda s: s.where
)
def test_a_python_snippet_defines_what_it_uses(snippet: Snippet) -> None:
    code = snippet.code
    for name in ("settings", "session"):
        if re.search(rf"\b{name}\.", code) or re.search(rf"\(\s*{name}\b", code):
            defined = re.search(rf"\b{name}\s*=|as {name}\b|def \w+\(.*\b{name}\b", code)
            assert defined, f"{snippet.where} uses `{name}` without defining it"


def test_the_readme_is_at_most_200_lines() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_page_repeats_what_a_newcomer_tripped_over(page: Path) -> None:
    text = page.read_text()
    assert "will expose" not in text
    assert "`cli.py`" not in text
    for served in re.findall(r"http\.server[^\n]*", text):
        assert "--bind 127.0.0.1" in served and "--directory" in served, served


def test_the_layout_table_names_paths_that_exist() -> None:
    page = (REPO / "docs" / "contributing.md").read_text()
    layout = page[page.index("## Layout") : page.index("## Documentation")]
    named = re.findall(r"^\| ([^|]+) \|", layout, flags=re.MULTILINE)
    paths = [p for cell in named for p in re.findall(r"`([^`]+)`", cell)]
    assert "cli/" in paths
    assert [p for p in paths if not (REPO / p).exists()] == []
