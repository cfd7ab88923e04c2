"""The deployment files agree with the code: compose, Dockerfile, Makefile and the CI script."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from middleware.probes import main
from settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
MAKEFILE = REPO / "Makefile"
CI_SCRIPT = REPO / ".ci" / "run"

# The services that run Taskyard's own image.
APP_SERVICES = ("migrate", "worker", "scheduler", "web")


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values = dict(values or {})
        self.looked_up: set[str] = set()

    def __getitem__(self, name: str) -> str:
        # Mapping.get and `in` both come through here.
        self.looked_up.add(name)
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def names_settings_reads() -> set[str]:
    """Every variable name `load_settings` looks up."""
    env = RecordingEnv()
    load_settings(env)
    return env.looked_up


def load_compose() -> dict[str, Any]:
    """docker-compose.yml, parsed (anchors and merge keys resolved)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    """One service of the compose file."""
    services = load_compose()["services"]
    assert name in services, f"docker-compose.yml has no {name!r} service"
    svc = services[name]
    assert isinstance(svc, dict)
    return svc


def service_env(name: str) -> dict[str, str]:
    """The environment a compose service sets, as a dict of strings."""
    env = service(name).get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(key): str(value) for key, value in env.items()}


def command_of(name: str) -> list[str]:
    """A compose service's command as a list of words."""
    command = service(name)["command"]
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def makefile_targets() -> dict[str, str]:
    """The Makefile's targets, each with the recipe lines that follow it."""
    targets: dict[str, str] = {}
    current: str | None = None
    for line in MAKEFILE.read_text().splitlines():
        if line.startswith("\t") and current is not None:
            targets[current] += line.strip() + "\n"
            continue
        match = re.match(r"^([A-Za-z0-9_-]+):(?!=)", line)
        current = match.group(1) if match else None
        if current is not None:
            targets.setdefault(current, "")
    return targets


def test_recording_env_sees_the_conventional_and_taskyard_names() -> None:
    # Guards the checks below against an empty set passing vacuously.
    names = names_settings_reads()

    assert {"BROKER_URL", "DATABASE_URL", "TASKYARD_METRICS_HOST"} <= names
    assert all(name.startswith("TASKYARD_") for name in names - {"BROKER_URL", "DATABASE_URL"})


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_sets_only_variables_settings_reads(name: str) -> None:
    unknown = set(service_env(name)) - names_settings_reads()

    assert not unknown, f"{name} sets variables that Taskyard never reads: {sorted(unknown)}"


def test_compose_shared_environment_is_read_by_settings() -> None:
    shared = load_compose()["x-taskyard-env"]

    assert set(shared) <= names_settings_reads()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_environment_loads_into_settings(name: str) -> None:
    settings = load_settings(service_env(name))

    assert urlsplit(settings.broker_url).hostname == "rabbitmq"
    assert urlsplit(settings.database_url).hostname == "postgres"
    assert not settings.uses_stub_broker


def test_compose_worker_serves_metrics_on_every_interface() -> None:
    settings = load_settings(service_env("worker"))

    assert settings.metrics_host == "0.0.0.0"
    assert str(settings.metrics_port) in [str(port) for port in service("worker")["expose"]]


def test_prometheus_scrapes_the_worker_on_its_metrics_port() -> None:
    prometheus = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    settings = load_settings(service_env("worker"))
    targets = [
        (name, sd["port"])
        for job in prometheus["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    ]

    assert targets == [("worker", settings.metrics_port)]
    mounts = service("prometheus")["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert any(
        arg.endswith("/etc/prometheus/prometheus.yml") for arg in service("prometheus")["command"]
    )


def test_grafana_is_provisioned_with_the_prometheus_service_and_the_dashboard() -> None:
    mounts = {
        m.split(":")[1]: m.split(":")[0]
        for m in service("grafana")["volumes"]
        if m.startswith("./")
    }
    provisioning = REPO / mounts["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    dashboards = yaml.safe_load((provisioning / "dashboards" / "taskyard.yml").read_text())

    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    dashboard_dir = dashboards["providers"][0]["options"]["path"]
    assert (REPO / mounts[dashboard_dir] / "taskyard.json").is_file()
    uid = datasource["datasources"][0]["uid"]
    dashboard = json.loads((REPO / mounts[dashboard_dir] / "taskyard.json").read_text())
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {uid}


def test_compose_database_url_matches_the_postgres_service() -> None:
    url = urlsplit(load_settings(service_env("worker")).database_url)
    postgres = service("postgres")
    postgres_env = postgres.get("environment", {})

    assert url.port == 5432
    assert url.username == postgres_env.get("POSTGRES_USER", "postgres")
    if url.password is None:
        assert postgres_env.get("POSTGRES_HOST_AUTH_METHOD") == "trust"
    else:
        assert url.password == postgres_env.get("POSTGRES_PASSWORD")


def test_compose_broker_url_matches_the_rabbitmq_service() -> None:
    url = urlsplit(load_settings(service_env("worker")).broker_url)
    rabbitmq_env = service("rabbitmq").get("environment", {})

    assert url.port == 5672
    assert url.username == rabbitmq_env.get("RABBITMQ_DEFAULT_USER", "guest")
    assert url.password == rabbitmq_env.get("RABBITMQ_DEFAULT_PASS", "guest")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("worker", ["dramatiq", "actors"]),
        ("scheduler", ["periodiq", "schedules"]),
        ("migrate", ["taskyard", "migrate"]),
        ("web", ["taskyard", "web"]),
    ],
)
def test_compose_service_runs_its_program(name: str, expected: list[str]) -> None:
    assert command_of(name)[: len(expected)] == expected


def test_compose_scheduler_and_migrate_take_no_extra_arguments() -> None:
    assert command_of("scheduler") == ["periodiq", "schedules"]
    assert command_of("migrate") == ["taskyard", "migrate"]


@pytest.mark.parametrize("name", ["worker", "scheduler"])
def test_compose_worker_and_scheduler_start_after_a_successful_migration(name: str) -> None:
    depends_on = service(name)["depends_on"]

    assert depends_on["migrate"]["condition"] == "service_completed_successfully"
    assert depends_on["rabbitmq"]["condition"] == "service_healthy"


def test_compose_migration_waits_for_postgres_and_runs_once() -> None:
    migrate = service("migrate")

    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_app_services_build_this_repository(name: str) -> None:
    assert service(name)["build"] == "."


@pytest.mark.parametrize(
    ("name", "program"),
    [("rabbitmq", "rabbitmq-diagnostics"), ("postgres", "pg_isready")],
)
def test_compose_servers_have_healthchecks(name: str, program: str) -> None:
    test = service(name)["healthcheck"]["test"]

    assert test[0] in ("CMD", "CMD-SHELL")
    assert program in " ".join(test[1:])


def test_compose_postgres_keeps_its_data_in_a_named_volume() -> None:
    compose = load_compose()
    volume_names = {mount.split(":", 1)[0] for mount in service("postgres")["volumes"]}

    assert volume_names & set(compose["volumes"])


def test_dockerfile_starts_from_a_slim_python_image() -> None:
    froms = [args for keyword, args in dockerfile_instructions() if keyword == "FROM"]

    assert froms
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", froms[-1].split()[0])


def test_dockerfile_runs_as_a_user_that_is_not_root() -> None:
    users = [args for keyword, args in dockerfile_instructions() if keyword == "USER"]

    assert users, "the Dockerfile has no USER"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_installs_dependencies_before_copying_the_source() -> None:
    instructions = dockerfile_instructions()
    copy_all = next(
        i
        for i, (keyword, args) in enumerate(instructions)
        if keyword == "COPY" and args.split()[0] == "."
    )
    installs_before = [
        args
        for keyword, args in instructions[:copy_all]
        if keyword == "RUN" and "pip install" in args
    ]

    assert installs_before, "no `pip install` before `COPY . .`: every edit reinstalls"


def test_dockerfile_default_command_runs_the_worker() -> None:
    cmds = [args for keyword, args in dockerfile_instructions() if keyword == "CMD"]

    assert cmds
    command = json.loads(cmds[-1]) if cmds[-1].startswith("[") else shlex.split(cmds[-1])
    assert command[:2] == ["dramatiq", "actors"]


def test_dockerfile_exposes_the_metrics_port() -> None:
    exposed = [args for keyword, args in dockerfile_instructions() if keyword == "EXPOSE"]

    assert str(Settings().metrics_port) in " ".join(exposed).split()


@pytest.mark.parametrize(
    "target",
    [
        "help",
        "install",
        "lint",
        "format",
        "typecheck",
        "test-unit",
        "test-integration",
        "test",
        "check",
        "migrate",
        "worker",
        "scheduler",
        "run",
        "demo",
    ],
)
def test_makefile_has_target(target: str) -> None:
    assert target in makefile_targets()


def test_makefile_test_target_runs_the_whole_suite_in_one_pytest() -> None:
    recipe = makefile_targets()["test"]
    pytest_lines = [line for line in recipe.splitlines() if "pytest" in line]

    assert len(pytest_lines) == 1
    words = pytest_lines[0].split()
    # pytest's own arguments: the whole tree, nothing narrowing it (such as -k or -m);
    # spread over xdist's processes a file at a time (a file's fixtures stay together)
    arguments = words[words.index("pytest") + 1 :]
    assert arguments[0] == "tests" and not {"-k", "-m"} & set(arguments)
    assert arguments[arguments.index("--dist") + 1] == "loadfile"


def test_makefile_help_is_the_default_goal() -> None:
    text = MAKEFILE.read_text()

    assert re.search(r"^\.DEFAULT_GOAL\s*:=\s*help\s*$", text, re.MULTILINE)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_help_lists_every_target_with_a_description() -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    listed = dict(line.split(None, 1) for line in result.stdout.splitlines()[1:] if line.strip())

    assert set(makefile_targets()) <= set(listed)
    assert all(description.strip() for description in listed.values())


def test_ci_script_is_executable_bash_with_strict_mode() -> None:
    lines = CI_SCRIPT.read_text().splitlines()

    assert os.access(CI_SCRIPT, os.X_OK)
    assert lines[0] in ("#!/usr/bin/env bash", "#!/bin/bash")
    assert "set -euo pipefail" in lines


def test_ci_script_runs_make_check_which_includes_the_test_suite() -> None:
    commands = [
        line.strip()
        for line in CI_SCRIPT.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]

    assert any(re.fullmatch(r"(exec\s+)?make\s+check", command) for command in commands)
    check = next(line for line in MAKEFILE.read_text().splitlines() if line.startswith("check:"))
    assert check.split("##")[0].split(":")[1].split() == ["lint", "typecheck", "test"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_ci_script_parses_as_bash() -> None:
    subprocess.run(["bash", "-n", str(CI_SCRIPT)], check=True, timeout=30)


def worker_shutdown_timeout_ms(command: list[str]) -> int:
    """The `--worker-shutdown-timeout` a worker command gives Dramatiq (ms)."""
    assert "--worker-shutdown-timeout" in command, command
    return int(command[command.index("--worker-shutdown-timeout") + 1])


def test_dockerfile_healthcheck_asks_the_workers_liveness_probe() -> None:
    checks = [args for keyword, args in dockerfile_instructions() if keyword == "HEALTHCHECK"]

    assert len(checks) == 1
    command = json.loads(checks[0][checks[0].index("CMD") + 3 :].strip())
    assert command == ["python", "-m", "middleware.probes", "live"]


def test_dockerfile_default_command_has_a_shutdown_timeout() -> None:
    cmds = [args for keyword, args in dockerfile_instructions() if keyword == "CMD"]

    assert worker_shutdown_timeout_ms(json.loads(cmds[-1])) > 0


def test_compose_grace_period_outlasts_the_workers_shutdown_timeout() -> None:
    grace = service("worker")["stop_grace_period"]
    match = re.fullmatch(r"(\d+)s", grace)
    assert match, grace
    assert int(match.group(1)) * 1000 > worker_shutdown_timeout_ms(command_of("worker"))


@pytest.mark.parametrize("name", ["migrate", "web"])
def test_compose_services_without_a_probe_turn_the_images_healthcheck_off(name: str) -> None:
    assert service(name)["healthcheck"] == {"disable": True}


def test_compose_scheduler_asks_its_own_probe() -> None:
    check = service("scheduler")["healthcheck"]
    assert check["test"] == ["CMD", "python", "-m", "middleware.probes", "--scheduler", "live"]
    assert main(["--scheduler", "sideways"]) == 2
