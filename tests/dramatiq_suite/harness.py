"""Runs Dramatiq's own tests on Dramatiq's plain RabbitMQ broker and on Taskyard's.

The tests come from the sdist of the installed Dramatiq version, downloaded
once into a cache outside the repository; they are never copied into it.
`stage` puts them in a directory of the run's own beside Taskyard's fixtures
(`dramatiq_conftest.py`, `dramatiq_common.py`), `run_suite` runs them in one
pytest process, and `compare` checks the outcomes against `differences.toml`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DIFFERENCES_FILE = HERE / "differences.toml"
README = REPO / "README.md"


def doc_pages() -> list[Path]:
    """README.md and the documentation's pages: where an intended difference is explained."""
    return [README, *sorted((REPO / "docs").rglob("*.md"))]


STATUSES = ("not yet fixed", "intended", "flaky")
BROKER_KINDS = ("plain", "taskyard")
# Each Dramatiq test gets this long (some wait on a join that never ends when a message is lost).
TEST_TIMEOUT_SECONDS = 60


class SuiteUnavailable(Exception):
    """Dramatiq's tests could not be fetched; the message says what to do."""


def cache_dir() -> Path:
    """Where the sdist and its tests are kept between runs (outside the repository)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "taskyard" / "dramatiq-suite"


def dramatiq_version() -> str:
    """The installed (pinned) Dramatiq version."""
    return version("dramatiq")


def fetch_tests(cache: Path | None = None, pinned: str | None = None) -> Path:
    """The directory holding Dramatiq's `tests/test_*.py` for the pinned version.

    Downloads the sdist from PyPI the first time (`pip download`), then uses the
    cache.  Raises `SuiteUnavailable` when the sdist can be neither found nor fetched.
    """
    cache = cache or cache_dir()
    pinned = pinned or dramatiq_version()
    tests = cache / f"dramatiq-{pinned}-tests"
    if (tests / ".complete").exists():
        return tests
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"dramatiq-{pinned}.tar.gz"
    if not sdist.exists():
        _download(sdist, pinned)
    _extract(sdist, tests, pinned)
    return tests


def _download(sdist: Path, pinned: str) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    command += ["--disable-pip-version-check", "--dest", str(sdist.parent), f"dramatiq=={pinned}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or not sdist.exists():
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SuiteUnavailable(
            f"could not download Dramatiq {pinned}'s source distribution from PyPI ({last}). "
            f"Its tests run in `make test`: connect to PyPI, or put dramatiq-{pinned}.tar.gz "
            f"into {sdist.parent}; to skip them locally (never in CI) set SKIP_DRAMATIQ_SUITE=1"
        )


def _extract(sdist: Path, tests: Path, pinned: str) -> None:
    """Extract only `dramatiq-<v>/tests/test_*.py`, then rename into place in one step."""
    pattern = re.compile(rf"dramatiq-{re.escape(pinned)}/tests/(test_\w+\.py)")
    partial = Path(tempfile.mkdtemp(prefix="partial-", dir=tests.parent))
    try:
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                match = pattern.fullmatch(member.name)
                source = archive.extractfile(member) if match and member.isfile() else None
                if match and source is not None:
                    (partial / match[1]).write_bytes(source.read())
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(partial)
        raise SuiteUnavailable(f"{sdist} cannot be read ({exc}): delete it and run again") from exc
    if not any(partial.glob("test_*.py")):
        shutil.rmtree(partial)
        raise SuiteUnavailable(f"{sdist} holds no tests/test_*.py: delete it and run again")
    (partial / ".complete").touch()
    try:
        partial.rename(tests)
    except OSError:  # another run extracted it meanwhile
        shutil.rmtree(partial)


def stage(tests: Path, workdir: Path) -> Path:
    """A package `tests` in `workdir`: Dramatiq's test files and Taskyard's fixtures."""
    package = workdir / "tests"
    package.mkdir(parents=True)
    for path in tests.glob("test_*.py"):
        shutil.copyfile(path, package / path.name)
    (package / "__init__.py").touch()
    shutil.copyfile(HERE / "dramatiq_conftest.py", package / "conftest.py")
    shutil.copyfile(HERE / "dramatiq_common.py", package / "common.py")
    (workdir / "pytest.ini").write_text(
        f"[pytest]\ntestpaths = tests\ntimeout = {TEST_TIMEOUT_SECONDS}\n"
        "addopts = -p no:cacheprovider -q -rfE\n"
    )
    return workdir


def rabbitmqctl_command() -> list[str]:
    """How to reach `rabbitmqctl` (DRAMATIQ_SUITE_RABBITMQCTL overrides, e.g. docker exec)."""
    return (os.environ.get("DRAMATIQ_SUITE_RABBITMQCTL") or "rabbitmqctl").split()


def _rabbitmqctl(*args: str) -> None:
    command = [*rabbitmqctl_command(), *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SuiteUnavailable(
            f"`{' '.join(command)}` failed ({exc}): Dramatiq's tests declare fixed queue "
            "names, so each run gets vhosts of its own; set DRAMATIQ_SUITE_RABBITMQCTL to a "
            "command reaching the node's rabbitmqctl"
        ) from exc
    if done.returncode != 0:
        raise SuiteUnavailable(f"`{' '.join(command)}` failed: {done.stderr.strip()[-500:]}")


@contextmanager
def vhosts(names: list[str], user: str) -> Iterator[None]:
    """RabbitMQ vhosts of this run, `user` allowed everything; deleted with their queues."""
    created: list[str] = []
    try:
        for name in names:
            _rabbitmqctl("add_vhost", name)
            created.append(name)
            _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        yield
    finally:
        for name in created:
            _rabbitmqctl("delete_vhost", name)


def run_suite(
    workdir: Path,
    env: Mapping[str, str],
    timeout: float,
    node_ids: Sequence[str] = (),
    name: str = "run",
) -> dict[str, dict[str, str]]:
    """Run the staged suite (or `node_ids`) in a pytest process; each test's outcome by node id."""
    outcomes = workdir / f"{name}-outcomes.json"
    log = workdir / f"{name}.log"
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("TASKYARD_")}
    run_env.update(env)
    run_env["DRAMATIQ_SUITE_OUTCOMES"] = str(outcomes)
    run_env["PYTHONPATH"] = os.pathsep.join([str(workdir), str(REPO)])
    with log.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-c", str(workdir / "pytest.ini"), *node_ids],
            cwd=workdir,
            env=run_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    # 0: all passed, 1: some failed; anything else (a collection error, an interrupted
    # run) means the outcomes are not the whole suite's.
    if done.returncode not in (0, 1) or not outcomes.exists():
        tail = log.read_text(errors="replace")[-3000:]
        raise AssertionError(
            f"Dramatiq's suite did not run to its end (pytest exit code {done.returncode}); "
            f"its log ({log}) ends:\n{tail}"
        )
    loaded: dict[str, dict[str, str]] = json.loads(outcomes.read_text())
    return loaded


def split_node_id(node_id: str) -> tuple[str, str | None]:
    """(the test's id without its broker, the broker) for one parametrized node id.

    `tests/test_a.py::test_b[taskyard-stub]` → (`test_a.py::test_b[stub]`, `taskyard`).
    """
    node_id = node_id.removeprefix("tests/")
    name, bracket, params = node_id.partition("[")
    if not bracket:
        return node_id, None
    parts = params.removesuffix("]").split("-")
    kind = next((part for part in parts if part in BROKER_KINDS), None)
    if kind is None:
        return node_id, None
    parts.remove(kind)
    return (f"{name}[{'-'.join(parts)}]" if parts else name), kind


@dataclass(frozen=True)
class Difference:
    """One listed test that fails on Taskyard's broker and passes on the plain one."""

    test: str
    status: str
    cause: str
    readme: str


def load_differences(
    path: Path = DIFFERENCES_FILE, readme: Path | None = None
) -> dict[str, Difference]:
    """The listed tests; raises ValueError on a malformed entry or a docs section not found.

    A section is a heading of README.md or of a docs page (`readme`: one page instead).
    """
    data = tomllib.loads(path.read_text())
    pages = doc_pages() if readme is None else [readme]
    headings = {
        line.lstrip("#").strip()
        for page in pages
        for line in page.read_text().splitlines()
        if line.startswith("#")
    }
    listed: dict[str, Difference] = {}
    for group in data.get("difference", []):
        status, cause = group.get("status"), group.get("cause")
        section = group.get("readme", "")
        if status not in STATUSES or not cause or not group.get("tests"):
            raise ValueError(
                f"{path.name}: each [[difference]] needs status {STATUSES}, a cause "
                f"and tests: {group!r}"
            )
        if status == "intended" and section not in headings:
            raise ValueError(
                f"{path.name}: an intended difference names the README section (or docs page) "
                f"documenting it; {section!r} is not one ({cause})"
            )
        for test in group["tests"]:
            if test in listed:
                raise ValueError(f"{path.name}: {test} is listed twice")
            listed[test] = Difference(test, status, cause, section)
    return listed


@dataclass(frozen=True)
class Comparison:
    """What a run found: `problems` (by test) fail it; `notes` are reported only."""

    problems: dict[str, str]
    notes: list[str]
    passed: dict[str, int]
    # The node ids (both brokers') of the tests with a problem, to run again.
    suspects: list[str]


def compare(
    outcomes: Mapping[str, Mapping[str, str]], listed: Mapping[str, Difference]
) -> Comparison:
    """Check the outcomes on both brokers against the listed differences.

    A problem: a test that fails on Taskyard's broker and passes on the plain
    one without being listed; a listed test that passes on Taskyard's broker
    now (remove it: the list only shrinks); a listed test the run did not have.
    Reported only: tests that fail on the plain broker, and listed flaky tests.
    """
    by_test: dict[str, dict[str, Mapping[str, str]]] = {}
    node_ids: dict[str, list[str]] = {}
    for node_id, outcome in outcomes.items():
        test, kind = split_node_id(node_id)
        if kind is not None:
            by_test.setdefault(test, {})[kind] = outcome
            node_ids.setdefault(test, []).append(node_id)
    problems: dict[str, str] = {}
    notes: list[str] = []
    passed = dict.fromkeys(BROKER_KINDS, 0)
    name = DIFFERENCES_FILE.name
    for test, kinds in sorted(by_test.items()):
        plain = kinds.get("plain", {}).get("outcome")
        taskyard = kinds.get("taskyard", {}).get("outcome")
        for kind in BROKER_KINDS:
            passed[kind] += kinds.get(kind, {}).get("outcome") == "passed"
        difference = listed.get(test)
        if difference is not None and difference.status == "flaky":
            notes.append(f"flaky (listed): plain {plain}, taskyard {taskyard}: {test}")
        elif plain == "failed":
            detail = kinds["plain"].get("detail", "")
            notes.append(f"fails on the plain broker too (taskyard: {taskyard}): {test}: {detail}")
        elif plain == "passed" and taskyard == "failed" and difference is None:
            problems[test] = (
                f"fails on Taskyard's broker only, and is not listed in {name}: "
                f"{test}: {kinds['taskyard'].get('detail')}"
            )
        elif difference is not None and taskyard == "passed":
            problems[test] = (
                f"listed in {name} ({difference.status}) but passes on Taskyard's broker "
                f"now: remove it from the list: {test}"
            )
        elif difference is not None and plain != "passed":
            notes.append(f"listed, but {plain} on the plain broker: {test}")
    for test in sorted(set(listed) - set(by_test)):
        problems[test] = f"listed in {name} but not in the run (renamed?): {test}"
    suspects = sorted(n for test in problems for n in node_ids.get(test, ()))
    return Comparison(problems, notes, passed, suspects)


def confirmed(first: Comparison, again: Comparison) -> list[str]:
    """The first run's problems that the second run of the same tests found too.

    A problem the second run does not repeat was a flake (a timing bound, a
    join racing a delay): the caller reports it, and it does not fail the run.
    """
    rerun = {split_node_id(node_id)[0] for node_id in first.suspects}
    return [m for t, m in sorted(first.problems.items()) if t not in rerun or t in again.problems]
