"""The differences file is well formed, and the comparison is strict both ways (no servers)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.dramatiq_suite import harness
from tests.dramatiq_suite.harness import Difference, compare, split_node_id


def test_the_differences_file_loads_and_names_readme_sections_that_exist() -> None:
    listed = harness.load_differences()

    assert listed
    assert all(d.readme for d in listed.values() if d.status == "intended")


@pytest.mark.parametrize(
    ("node_id", "expected"),
    [
        ("tests/test_a.py::test_b[plain]", ("test_a.py::test_b", "plain")),
        ("tests/test_a.py::test_b[taskyard-stub]", ("test_a.py::test_b[stub]", "taskyard")),
        ("tests/test_a.py::test_b[stub-plain]", ("test_a.py::test_b[stub]", "plain")),
        ("tests/test_a.py::test_b", ("test_a.py::test_b", None)),
        ("tests/test_a.py::test_b[stub]", ("test_a.py::test_b[stub]", None)),
    ],
)
def test_a_node_id_splits_into_the_test_and_its_broker(
    node_id: str, expected: tuple[str, str | None]
) -> None:
    assert split_node_id(node_id) == expected


def _outcomes(**by_test: tuple[str, str]) -> dict[str, dict[str, str]]:
    """{name: (plain outcome, taskyard outcome)} as the suite's conftest writes them."""
    return {
        f"tests/test_x.py::{name}[{kind}]": {"outcome": outcome, "detail": "E boom"}
        for name, pair in by_test.items()
        for kind, outcome in zip(("plain", "taskyard"), pair, strict=True)
    }


def _listed(*names: str, status: str = "not yet fixed") -> dict[str, Difference]:
    return {f"test_x.py::{n}": Difference(f"test_x.py::{n}", status, "a cause", "") for n in names}


@pytest.mark.parametrize(
    ("plain", "taskyard", "listed", "problem", "note"),
    [
        ("passed", "passed", False, None, None),
        ("passed", "failed", False, "not listed", None),
        ("passed", "failed", True, None, None),
        ("passed", "passed", True, "passes on Taskyard's broker now", None),
        ("failed", "failed", False, None, "fails on the plain broker too"),
        ("failed", "passed", False, None, "fails on the plain broker too"),
        ("skipped", "skipped", False, None, None),
        ("skipped", "failed", True, None, "listed, but skipped on the plain broker"),
    ],
)
def test_only_an_unlisted_taskyard_failure_or_a_listed_pass_fails_the_run(
    plain: str, taskyard: str, listed: bool, problem: str | None, note: str | None
) -> None:
    result = compare(_outcomes(test_t=(plain, taskyard)), _listed("test_t") if listed else {})

    assert [problem in p for p in result.problems.values()] == ([True] if problem else [])
    assert [note in n for n in result.notes] == ([True] if note else [])


def test_a_listed_test_missing_from_the_run_fails_it() -> None:
    result = compare(_outcomes(test_t=("passed", "passed")), _listed("test_renamed"))

    assert result.problems == {
        "test_x.py::test_renamed": (
            "listed in differences.toml but not in the run (renamed?): test_x.py::test_renamed"
        )
    }
    assert result.suspects == []


@pytest.mark.parametrize(("plain", "taskyard"), [("passed", "failed"), ("passed", "passed")])
def test_a_flaky_listed_test_is_only_reported(plain: str, taskyard: str) -> None:
    result = compare(_outcomes(test_t=(plain, taskyard)), _listed("test_t", status="flaky"))

    assert result.problems == {}
    assert result.notes == [
        f"flaky (listed): plain {plain}, taskyard {taskyard}: test_x.py::test_t"
    ]


def test_a_problem_counts_only_when_the_second_run_repeats_it() -> None:
    first = compare(
        _outcomes(flake=("passed", "failed"), real=("passed", "failed")), _listed("gone")
    )
    assert first.suspects == [
        "tests/test_x.py::flake[plain]",
        "tests/test_x.py::flake[taskyard]",
        "tests/test_x.py::real[plain]",
        "tests/test_x.py::real[taskyard]",
    ]
    again = compare(_outcomes(flake=("passed", "passed"), real=("passed", "failed")), {})

    problems = harness.confirmed(first, again)

    assert [p.split(": ")[1] for p in problems] == ["test_x.py::gone", "test_x.py::real"]


def test_passes_are_counted_per_broker() -> None:
    result = compare(_outcomes(a=("passed", "passed"), b=("passed", "failed")), _listed("b"))

    assert result.passed == {"plain": 2, "taskyard": 1}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_an_intended_difference_must_name_a_readme_section(tmp_path: Path) -> None:
    readme = _write(tmp_path / "README.md", "# Title\n\n## Retries\n")
    entry = '[[difference]]\nstatus = "intended"\ncause = "c"\ntests = ["t.py::a"]\n'

    with pytest.raises(ValueError, match="names the README section"):
        harness.load_differences(_write(tmp_path / "d.toml", entry), readme)
    ok = harness.load_differences(
        _write(tmp_path / "d.toml", entry + 'readme = "Retries"\n'), readme
    )
    assert ok["t.py::a"].readme == "Retries"


@pytest.mark.parametrize(
    "entry",
    [
        '[[difference]]\nstatus = "maybe"\ncause = "c"\ntests = ["t.py::a"]\n',
        '[[difference]]\nstatus = "not yet fixed"\ntests = ["t.py::a"]\n',
        '[[difference]]\nstatus = "not yet fixed"\ncause = "c"\ntests = []\n',
        '[[difference]]\nstatus = "not yet fixed"\ncause = "c"\ntests = ["t.py::a", "t.py::a"]\n',
    ],
)
def test_a_malformed_entry_is_refused(tmp_path: Path, entry: str) -> None:
    readme = _write(tmp_path / "README.md", "# Title\n")

    with pytest.raises(ValueError):
        harness.load_differences(_write(tmp_path / "d.toml", entry), readme)


def _sdist(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_only_the_test_files_are_extracted_from_a_cached_sdist(tmp_path: Path) -> None:
    _sdist(
        tmp_path / "dramatiq-9.9.tar.gz",
        {
            "dramatiq-9.9/tests/test_a.py": b"def test_a(): pass\n",
            "dramatiq-9.9/tests/conftest.py": b"raise SystemExit\n",
            "dramatiq-9.9/dramatiq/__init__.py": b"",
            "../escape/tests/test_b.py": b"",
        },
    )

    tests = harness.fetch_tests(tmp_path, "9.9")

    assert sorted(p.name for p in tests.iterdir()) == [".complete", "test_a.py"]
    assert harness.fetch_tests(tmp_path, "9.9") == tests


def test_an_sdist_without_tests_says_what_to_do(tmp_path: Path) -> None:
    _sdist(tmp_path / "dramatiq-9.9.tar.gz", {"dramatiq-9.9/README.md": b""})

    with pytest.raises(harness.SuiteUnavailable, match="delete it and run again"):
        harness.fetch_tests(tmp_path, "9.9")


def test_a_corrupt_sdist_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "dramatiq-9.9.tar.gz").write_bytes(b"not a tarball")

    with pytest.raises(harness.SuiteUnavailable, match=r"(?s)cannot be read.*delete it"):
        harness.fetch_tests(tmp_path, "9.9")


def test_a_failed_download_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(harness.subprocess, "run", no_network)

    with pytest.raises(harness.SuiteUnavailable) as raised:
        harness.fetch_tests(tmp_path, "9.9")
    message = str(raised.value)
    assert "ERROR: No matching distribution" in message
    assert f"put dramatiq-9.9.tar.gz into {tmp_path}" in message
    assert "SKIP_DRAMATIQ_SUITE=1" in message
