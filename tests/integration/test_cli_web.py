"""`taskyard web user ...` and `taskyard web` itself, run as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from tests.integration.cli_harness import COMMAND, REPO, as_json, assert_one_line_error, unique
from tests.support import free_port, wait_for

pytestmark = pytest.mark.integration


def taskyard_with_input(stdin: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `taskyard ARGS` with `stdin` on its standard input."""
    return subprocess.run(
        [*COMMAND, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **env},
    )


def test_web_users_are_added_listed_and_removed_and_a_taken_name_refused(
    make_tenant: Callable[[str], int],
) -> None:
    name, tenant_id = unique("ops"), make_tenant("cli-web")
    added = taskyard_with_input(
        "a long enough password\n", "web", "user", "add", name, "--role", "viewer",
        "--tenant", str(tenant_id), "--password-stdin", "--json",
    )  # fmt: skip
    user = as_json(added)
    assert user["name"] == name and user["role"] == "viewer"
    assert user["tenant_ids"] == [tenant_id]
    listed = as_json(taskyard_with_input("", "web", "user", "list", "--json"))
    shown = next(u for u in listed if u["name"] == name)
    assert "password_hash" not in shown and "a long enough password" not in str(listed)
    again = taskyard_with_input(
        "another password\n", "web", "user", "add", name, "--role", "admin", "--password-stdin"
    )
    assert "exists already" in assert_one_line_error(again, 1)
    removed = taskyard_with_input("", "web", "user", "remove", name)
    assert removed.returncode == 0 and f"removed web user {name}" in removed.stdout


def test_taskyard_web_serves_the_sign_in_page_with_its_security_headers() -> None:
    port = free_port()
    server = subprocess.Popen(
        [*COMMAND, "web"],
        cwd=REPO,
        env={**os.environ, "TASKYARD_WEB_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def answer() -> tuple[int, dict[str, str]] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/sign-in", timeout=2) as r:
                    return r.status, dict(r.headers)
            except (urllib.error.URLError, ConnectionError):
                return None

        status, headers = wait_for(answer, timeout=30, what="the console to answer")
        assert status == 200
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(
                urllib.request.Request(f"http://127.0.0.1:{port}/jobs/x/cancel", method="POST"),
                timeout=5,
            )
        assert refused.value.code == 401
        refused.value.close()
    finally:
        server.terminate()
        _out, err = server.communicate(timeout=10)
    assert f"Taskyard console on http://127.0.0.1:{port}/" in err
