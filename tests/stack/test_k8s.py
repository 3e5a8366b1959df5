"""infra/k8s/: Kubernetes manifests checked offline against the Kubernetes JSON schemas (kubernetes-validate, strict),
plus the wiring a schema cannot see: real `lifeline` subcommands, probes on /healthz and /readyz, requests on
every container, Services and PodDisruptionBudgets that select existing pods, settings that are real `Settings`
fields, placeholder secrets that production refuses, and the readiness probe command against a running API.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import uvicorn
import yaml
from pydantic import ValidationError
from temporalio.testing import WorkflowEnvironment

from infra.config import load_config
from infra.devstack import free_port
from infra.production import config_problems
from infra.settings import Settings
from tests.conftest import TEST_JWT_SECRET, make_settings
from workers.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
KUBERNETES_VERSION = "1.33.0"  # the oldest minor still supported upstream when this was written
PROCESSES = {"worker", "dispatcher", "listener", "api", "poller"}


def _load() -> list[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    found: list[tuple[str, dict[str, Any]]] = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                found.append((name, doc))
    return found


@pytest.fixture(scope="module")
def resources() -> list[tuple[str, dict[str, Any]]]:
    return _load()


def _of(resources: list[tuple[str, dict[str, Any]]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in resources if doc["kind"] == kind}


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = doc["spec"]["template"]["spec"]["containers"]
    return containers


def test_every_file_is_listed_and_validates_strictly(resources: list[tuple[str, dict[str, Any]]]) -> None:
    listed = {name for name, _ in resources}
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, "every manifest must be in kustomization.yaml"
    for name, doc in resources:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
    kinds = sorted({doc["kind"] for _, doc in resources})
    assert kinds == ["ConfigMap", "Deployment", "Job", "Namespace", "PodDisruptionBudget", "Secret", "Service"]


def test_a_wrong_manifest_is_caught() -> None:
    """The validator really checks: a typo'd field and a string replica count are both refused."""
    doc = next(d for _, d in _load() if d["kind"] == "Deployment")
    typo = {**doc, "spec": {**doc["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)
    wrong = {**doc, "spec": {**doc["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSION, strict=True)


def test_deployments_run_lifeline_processes_with_requests(resources: list[tuple[str, dict[str, Any]]]) -> None:
    deployments = _of(resources, "Deployment")
    parser = build_parser()
    commands = set()
    for name, doc in deployments.items():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        for c in _containers(doc):
            parser.parse_args(c["args"])  # a real `lifeline` subcommand with real options (exits on a bad one)
            commands.add(c["args"][0])
            requests = c["resources"]["requests"]
            assert requests["cpu"] and requests["memory"], name
            assert c["resources"]["limits"]["memory"], name
            refs = {next(iter(r.values()))["name"] for r in c["envFrom"]}
            assert refs == {"lifeline-env", "lifeline-secrets"}, name
    assert commands == PROCESSES
    job = _of(resources, "Job")["lifeline-migrate"]
    assert [c["args"] for c in _containers(job)] == [["migrate"]]


def test_the_poller_runs_once_with_the_file_share(resources: list[tuple[str, dict[str, Any]]]) -> None:
    """One poller pod (its advisory lock allows one active poller per channel anyway), hardened like the others,
    with the directory-source share where compose mounts it and the SFTP spool under the data directory."""
    deployments = _of(resources, "Deployment")
    poller = deployments["lifeline-poller"]
    assert poller["spec"]["replicas"] == 1
    (container,) = _containers(poller)
    assert container["args"] == ["poller"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/lifeline", "/srv/lifeline/data", "/var/lifeline"} <= mounts
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["poller"]
    assert any(v.endswith(":/var/lifeline") for v in compose["volumes"])
    for name, doc in deployments.items():  # the same hardening as every other process
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"] == poller["spec"]["template"]["spec"]["securityContext"], name
        for c in _containers(doc):
            assert c["securityContext"] == container["securityContext"], name


def test_api_probes_healthz_and_readyz(resources: list[tuple[str, dict[str, Any]]]) -> None:
    api = _containers(_of(resources, "Deployment")["lifeline-api"])[0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["exec"]["command"] == ["python", "-m", "workers.probe"]
    port = {p["name"]: p["containerPort"] for p in api["ports"]}["http"]
    assert api["args"][api["args"].index("--port") + 1] == str(port)
    listener = _containers(_of(resources, "Deployment")["lifeline-listener"])[0]
    assert listener["readinessProbe"]["tcpSocket"] and listener["livenessProbe"]["tcpSocket"]


def test_services_and_budgets_select_real_pods(resources: list[tuple[str, dict[str, Any]]]) -> None:
    deployments = _of(resources, "Deployment").values()
    pods = [(d["spec"]["template"]["metadata"]["labels"], _containers(d)) for d in deployments]

    def matching(selector: dict[str, str]) -> list[list[dict[str, Any]]]:
        return [cs for labels, cs in pods if selector.items() <= labels.items()]

    services = _of(resources, "Service")
    assert set(services) == {"lifeline-api", "lifeline-mllp"}
    for name, svc in services.items():
        targets = matching(svc["spec"]["selector"])
        assert len(targets) == 1, name
        named = {p["name"] for c in targets[0] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in named, (name, port)
    budgets = _of(resources, "PodDisruptionBudget")
    replicated = {name for name, d in _of(resources, "Deployment").items() if d["spec"]["replicas"] > 1}
    assert set(budgets) == replicated, "a budget per process running several pods (one pod: it would block drains)"
    for name, pdb in budgets.items():
        assert len(matching(pdb["spec"]["selector"]["matchLabels"])) == 1, name
        deployment = _of(resources, "Deployment")[name]
        assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"], "a drain must be able to evict one pod"


def test_configuration_is_real_and_secrets_are_placeholders(resources: list[tuple[str, dict[str, Any]]],
                                                            tmp_path: Path) -> None:
    env = _of(resources, "ConfigMap")["lifeline-env"]["data"]
    secret = _of(resources, "Secret")["lifeline-secrets"]["stringData"]
    fields = {f"LIFELINE_{name.upper()}" for name in Settings.model_fields}
    unknown = [k for k in {**env, **secret} if k.startswith("LIFELINE_") and k not in fields]
    assert not unknown, f"not Lifeline settings: {unknown}"
    assert env["LIFELINE_TEMPORAL_ADDRESS"].startswith("temporal-frontend."), "the Temporal Helm chart's frontend"
    assert env["LIFELINE_ENVIRONMENT"] == "production"
    with pytest.raises(ValidationError):  # the shipped placeholders cannot reach production
        Settings(**{k.removeprefix("LIFELINE_").lower(): v for k, v in {**env, **secret}.items()
                    if k.startswith("LIFELINE_")})

    config_file = tmp_path / "lifeline.yaml"
    config_file.write_text(_of(resources, "ConfigMap")["lifeline-config"]["data"]["lifeline.yaml"])
    config = load_config(config_file)
    assert config_problems(config) == []  # production refuses a plaintext listener that does not say so
    listener_mounts = {m["mountPath"] for c in _containers(_of(resources, "Deployment")["lifeline-listener"])
                       for m in c["volumeMounts"]}
    for channel in config.channels:
        if channel.mllp is not None and channel.mllp.tls:
            assert str(Path(channel.mllp.tls.cert).parent) in listener_mounts
    listener = _containers(_of(resources, "Deployment")["lifeline-listener"])[0]
    ports = {p["containerPort"] for p in listener["ports"]}
    assert {c.mllp.port for c in config.channels if c.mllp is not None} == ports
    mounts = {m["mountPath"]: m for c in _containers(_of(resources, "Deployment")["lifeline-api"])
              for m in c["volumeMounts"]}
    assert Path(env["LIFELINE_CONFIG"]).parent == Path("/etc/lifeline") and mounts["/etc/lifeline"]["readOnly"]


@pytest.fixture
def api_port(db_url: str, temporal_env: WorkflowEnvironment) -> Iterator[int]:
    from api.app import create_app
    from infra.config import EXAMPLE_CONFIG

    address = temporal_env.client.service_client.config.target_host
    app = create_app(make_settings(database_url=db_url, temporal_address=address), load_config(EXAMPLE_CONFIG))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started = threading.Event()
    for _ in range(400):
        if server.started:
            started.set()
            break
        started.wait(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def _probe(port: int, secret: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update({"LIFELINE_API_PORT": str(port), "LIFELINE_JWT_SECRET": secret, "PYTHONPATH": str(ROOT)})
    return subprocess.run([sys.executable, "-m", "workers.probe"], env=env, capture_output=True, text=True,
                          timeout=30)


def test_readiness_probe_command_against_a_running_api(api_port: int) -> None:
    ok = _probe(api_port, TEST_JWT_SECRET)
    assert ok.returncode == 0, ok.stderr
    wrong = _probe(api_port, "another-secret-" + "y" * 40)  # a token the API does not accept is not "ready"
    assert wrong.returncode == 1 and "401" in wrong.stderr
    down = _probe(free_port(), TEST_JWT_SECRET)
    assert down.returncode == 1
