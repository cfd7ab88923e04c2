"""Every snippet of README.md and docs/ marked `run` runs as written, against a real worker.

Shell snippets of one page run in order as one script (a tutorial's later blocks use what
its first ones made); each Python snippet runs in a process of its own. They get the test
run's database, queue prefix and locker key (`worker_env`), from the repository's root,
and the shared worker runs their jobs. The one change made to them: the feed port 8000
becomes a free port, so that runs side by side do not collide.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doc_snippets import REPO, Snippet, checked_snippets
from tests.support import WorkerProcess, free_port, worker_env

pytestmark = pytest.mark.integration

SHELLS = frozenset({"sh", "bash", "shell"})


def cases() -> list[tuple[str, list[Snippet]]]:
    """(id, snippets): one case per page's shell script, one per Python snippet."""
    runnable = [s for s in checked_snippets() if s.mode == "run"]
    found: list[tuple[str, list[Snippet]]] = []
    pages = dict.fromkeys(s.path for s in runnable)
    for page in pages:
        shell = [s for s in runnable if s.path == page and s.lang in SHELLS]
        if shell:
            found.append((f"{shell[0].where}:sh", shell))
        found += [(s.where, [s]) for s in runnable if s.path == page and s.lang == "python"]
    return found


CASES = cases()


@pytest.mark.parametrize("snippets", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_the_snippet_runs_as_written(snippets: list[Snippet], worker: WorkerProcess) -> None:
    port = str(free_port())
    env = worker_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    code = "\n".join(s.code for s in snippets).replace("8000", port)
    if snippets[0].lang == "python":
        command = [sys.executable, "-c", code]
    else:
        command = ["bash", "-c", "set -euo pipefail\n" + code]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, (
        f"{snippets[0].where} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )


def test_every_page_with_runnable_shell_snippets_is_a_case() -> None:
    assert any(i.startswith("README.md") and i.endswith(":sh") for i, _ in CASES)
    assert any(i.startswith("docs/tutorial.md") for i, _ in CASES)
