"""The documentation site builds in strict mode: a broken link or an orphan page fails it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-n",
            "-q",
            "-b",
            "html",
            str(source),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_docs_build_without_a_warning(tmp_path: Path) -> None:
    result = build(ROOT / "docs", tmp_path / "site")
    assert result.returncode == 0, result.stderr + result.stdout
    assert (tmp_path / "site" / "reference" / "settings.html").exists()


def test_a_broken_link_or_a_page_out_of_the_navigation_fails_the_build(tmp_path: Path) -> None:
    import shutil

    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs, ignore=shutil.ignore_patterns("_build"))
    with (docs / "tutorial.md").open("a") as page:
        page.write("\nSee [nowhere](guides/schedules.md#no-such-section).\n")
    (docs / "guides" / "orphan.md").write_text("# Orphan\n\nIn no toctree.\n")
    result = build(docs, tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-section" in result.stderr
    assert "orphan" in result.stderr and "toctree" in result.stderr
