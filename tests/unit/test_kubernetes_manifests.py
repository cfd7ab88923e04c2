"""deploy/kubernetes: valid against Kubernetes' schemas, and in agreement with the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from middleware.probes import LIVE_PATH, READY_PATH, main
from settings import load_settings
from tests.unit.test_deploy_files import names_settings_reads

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# The Kubernetes version the manifests are checked against (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.30"


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((path.name, document))
    return found


def by_kind(kind: str, name: str) -> dict[str, Any]:
    for _, document in documents():
        if document["kind"] == kind and document["metadata"]["name"] == name:
            return document
    raise AssertionError(f"no {kind} {name} in {MANIFESTS}")


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize(("file", "document"), documents(), ids=lambda v: str(v)[:40])
def test_every_manifest_is_valid_kubernetes(file: str, document: dict[str, Any]) -> None:
    # Strict: a field Kubernetes does not know (a typo) fails too.
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_there_are_manifests_for_every_part() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for _, d in documents())
    assert kinds == [
        ("Deployment", "taskyard-scheduler"),
        ("Deployment", "taskyard-worker"),
        ("HorizontalPodAutoscaler", "taskyard-worker"),
        ("Job", "taskyard-migrate"),
        ("PodDisruptionBudget", "taskyard-worker"),
    ]


def test_the_workers_probes_are_served_on_their_metrics_port() -> None:
    worker = container(by_kind("Deployment", "taskyard-worker"))
    env = {item["name"]: item["value"] for item in worker["env"]}
    settings = load_settings(env)
    ports = {port["name"]: port["containerPort"] for port in worker["ports"]}

    assert ports["metrics"] == settings.metrics_port and settings.metrics_host == "0.0.0.0"
    assert worker["livenessProbe"]["httpGet"] == {"path": LIVE_PATH, "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": "metrics"}


def test_the_schedulers_probes_are_served_on_its_probe_port() -> None:
    scheduler = container(by_kind("Deployment", "taskyard-scheduler"))
    env = {item["name"]: item["value"] for item in scheduler["env"]}
    settings = load_settings(env)
    ports = {port["name"]: port["containerPort"] for port in scheduler["ports"]}

    assert ports["probes"] == settings.scheduler_probe_port and settings.metrics_host == "0.0.0.0"
    assert scheduler["livenessProbe"]["httpGet"] == {"path": LIVE_PATH, "port": "probes"}
    assert scheduler["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": "probes"}


def test_the_grace_period_outlasts_the_workers_shutdown_timeout() -> None:
    deployment = by_kind("Deployment", "taskyard-worker")
    command = container(deployment)["command"]
    timeout_ms = int(command[command.index("--worker-shutdown-timeout") + 1])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace * 1000 > timeout_ms


def test_the_env_names_are_read_by_settings() -> None:
    read = names_settings_reads()
    for _, document in documents():
        spec = document["spec"].get("template", {}).get("spec", {})
        for item in spec.get("containers", []):
            names = {env["name"] for env in item.get("env", [])}
            assert names <= read, names - read


def test_the_scheduler_runs_twice_and_the_migration_once() -> None:
    scheduler = by_kind("Deployment", "taskyard-scheduler")
    assert scheduler["spec"]["replicas"] == 2
    assert container(scheduler)["command"] == ["periodiq", "schedules"]
    job = by_kind("Job", "taskyard-migrate")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["taskyard", "migrate"]


def test_the_budget_and_the_autoscaler_select_the_workers() -> None:
    labels = by_kind("Deployment", "taskyard-worker")["spec"]["template"]["metadata"]["labels"]
    budget = by_kind("PodDisruptionBudget", "taskyard-worker")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = by_kind("HorizontalPodAutoscaler", "taskyard-worker")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "taskyard-worker")


def test_the_probe_command_takes_live_or_ready_only() -> None:
    assert main(["sideways"]) == 2
