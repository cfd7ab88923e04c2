"""The reference pages are what the code gives: settings, commands, metrics and actors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_reference_pages_are_what_the_code_generates() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKYARD_")}
    result = subprocess.run(
        [sys.executable, "-m", "docgen", "--check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_every_setting_and_metric_is_on_its_page() -> None:
    from dataclasses import fields

    from docgen.metrics_page import metrics
    from settings import Settings

    settings_page = (ROOT / "docs" / "reference" / "settings.md").read_text()
    metrics_page = (ROOT / "docs" / "reference" / "metrics.md").read_text()
    assert [f.name for f in fields(Settings) if f"Settings.{f.name}`" not in settings_page] == []
    names = [name for name, *_ in metrics()]
    assert "taskyard_jobs_total" in names
    assert [name for name in names if f"`{name}`" not in metrics_page] == []
