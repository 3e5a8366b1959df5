"""A real Prometheus (Debian's `prometheus`, installed when missing) scrapes Lifeline with a bearer-token file; the
alert rules pass `promtool check rules` and their unit tests; the Grafana dashboard and the rules only use metric
names /metrics exports, and every dashboard query is accepted by Prometheus.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.auth import MAX_TOKEN_TTL_SECONDS, mint_token
from api.routes.metrics import _Fixed, families
from infra.config import LifelineConfig
from infra.crypto import Cipher
from infra.devstack import free_port
from tests.conftest import TEST_JWT_SECRET, make_settings
from tests.delivery.harness import Engine, Peer, adt, config_for, running, send_mllp, wait_for

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "infra" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "infra" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "infra" / "grafana-dashboard.json"
PROMETHEUS, PROMTOOL = Path("/usr/bin/prometheus"), Path("/usr/bin/promtool")
METRIC = re.compile(r"\blifeline_[a-z_]+\b")


def _install_prometheus() -> str | None:
    """Install Debian's prometheus (server and promtool) when missing; the reason it cannot be had, or None."""
    if PROMETHEUS.exists() and PROMTOOL.exists():
        return None
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{PROMETHEUS} is missing and apt-get cannot run here as root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"],
                ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"]):
        try:
            subprocess.run(cmd, env=env, check=False, capture_output=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"installing prometheus failed: {exc}"
        if PROMETHEUS.exists() and PROMTOOL.exists():
            return None
    return "apt-get could not install prometheus"


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    problem = _install_prometheus()
    assert problem is None, problem  # CI must install it: a skip would hide a missing check
    return PROMETHEUS


def test_alert_rules_pass_promtool_check_and_unit_tests(prometheus_bin: Path) -> None:
    check = subprocess.run([str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout, check.stdout
    test = subprocess.run([str(PROMTOOL), "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                          capture_output=True, text=True, timeout=120)
    assert test.returncode == 0, test.stdout + test.stderr
    names = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert {"LifelineDestinationDown", "LifelineBacklogOld", "LifelineDeadLettersRising", "LifelineSlaViolationOpen",
            "LifelineMonitorNotRunning"} <= names
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in case["alert_rule_test"]}
    assert tested == names, "every alert has a promtool unit test"


def exported_names() -> set[str]:
    """Every sample name /metrics can produce, from a store read with at least one row of each kind."""
    samples: dict[str, Any] = {
        "messages": [{"channel": "c", "message_type": "ADT^A01", "accepted": 1, "rejected": 1}],
        "attempts": [{"destination": "d", "error_class": "", "ok": True, "n": 1},
                     {"destination": "d", "error_class": "refused", "ok": False, "n": 1}],
        "dead_letters": [{"destination": "d", "n": 1}],
        "latency": [{"destination": "d", "n": 1, "sum_s": 0.1, **{f"le_{i}": 1 for i in range(40)}}],
        "backlog": [{"destination": "d", "depth": 1, "oldest": 1.0}],
        "cases": [{"kind": "backlog", "n": 1}],
        "sla": [{"sla": "s", "objective": "p95_latency", "n": 1}],
        "monitor_last_run": datetime.now(UTC),
    }
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families(samples, ["d"])))
    return {s.name for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}


def dashboard_queries() -> list[str]:
    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                yield node["expr"]
            for v in node.values():
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)

    return list(walk(json.loads(DASHBOARD.read_text())))


def test_dashboard_and_rules_only_use_exported_metric_names() -> None:
    exported = exported_names()
    queries = dashboard_queries()
    assert len(queries) >= 10
    used = {m for q in queries for m in METRIC.findall(q)}
    assert not used - exported, f"dashboard queries metrics /metrics does not export: {sorted(used - exported)}"
    rules = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    used_by_rules = {m for q in rules for m in METRIC.findall(q)}
    assert not used_by_rules - exported, sorted(used_by_rules - exported)
    # and every family the API exports is on the dashboard or in a rule (nothing exported goes unwatched)
    base = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in exported}
    watched = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used | used_by_rules}
    assert base <= watched, sorted(base - watched)


class ServedApi:
    """create_app under uvicorn in a background thread (its own loop) on 127.0.0.1 and a free port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServedApi:
        self.thread.start()
        started = threading.Event()
        for _ in range(400):
            if self.server.started:
                break
            started.wait(0.05)
        assert self.server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class Prometheus:
    def __init__(self, binary: Path, workdir: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [str(binary), f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)

    async def get(self, path: str, **params: str) -> Any:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as c:
            r = await c.get(path, params=params)
        body = r.json()
        assert body["status"] == "success", body
        return body["data"]

    async def value(self, query: str) -> float | None:
        result = (await self.get("/api/v1/query", query=query))["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
async def engine(pool: asyncpg.Pool, temporal_env: WorkflowEnvironment, store_cipher: Cipher, task_queue: str,
                 db_url: str) -> AsyncIterator[tuple[Engine, Peer]]:
    peer = Peer()
    port = await peer.start()
    eng = Engine(pool, temporal_env.client, config_for(port), store_cipher, task_queue, db_url)
    async with running(eng):
        yield eng, peer
    await peer.stop()


async def test_real_prometheus_scrapes_metrics_with_a_token_file(
        prometheus_bin: Path, engine: tuple[Engine, Peer], temporal_env: WorkflowEnvironment, tmp_path: Path) -> None:
    eng, peer = engine
    config: LifelineConfig = eng.config
    settings = make_settings(database_url=eng.db_url, task_queue=eng.task_queue,
                             temporal_address=temporal_env.client.service_client.config.target_host)
    # The README's way: a long-lived viewer token in a file, `authorization: {credentials_file: ...}`.
    token_file = tmp_path / "lifeline.token"
    token_file.write_text(mint_token(TEST_JWT_SECRET, subject="prometheus", org="default", roles=["viewer"],
                                     ttl_seconds=MAX_TOKEN_TTL_SECONDS) + "\n")
    wrong_file = tmp_path / "wrong.token"
    wrong_file.write_text(mint_token("another-secret-" + "z" * 40, subject="prometheus", org="default",
                                     roles=["viewer"]))
    shutil.copy(RULES, tmp_path / "alerts.yml")

    async def deliver(n: int) -> None:
        ids = [f"PROM{uuid.uuid4().hex[:8]}" for _ in range(n)]
        codes = await send_mllp(eng.mllp_port, [adt(c, f"MRN{i}") for i, c in enumerate(ids)])
        assert codes == ["AA"] * n
        await wait_for(lambda: set(ids) <= set(peer.control_ids()), timeout=60)

    await deliver(3)
    with ServedApi(create_app(settings, config)) as api:
        target = f"127.0.0.1:{api.port}"
        prom = Prometheus(prometheus_bin, tmp_path, {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "alerts.yml")],
            "scrape_configs": [
                {"job_name": "lifeline", "metrics_path": "/metrics",
                 "authorization": {"credentials_file": str(token_file)},
                 "static_configs": [{"targets": [target]}]},
                {"job_name": "lifeline-wrong-token", "metrics_path": "/metrics",
                 "authorization": {"credentials_file": str(wrong_file)},
                 "static_configs": [{"targets": [target]}]},
            ]})
        try:
            delivered = 'sum(lifeline_deliveries_delivered_total{job="lifeline", destination="lab"})'

            async def counter_is(n: float) -> bool:
                try:
                    return await prom.value(delivered) == n
                except (httpx.HTTPError, AssertionError, ValueError):
                    return False  # Prometheus still starting

            await wait_for(lambda: counter_is(3), timeout=90, interval=0.5)
            await deliver(2)  # the counter moves in Prometheus too (the API caches a store read for 5 s)
            await wait_for(lambda: counter_is(5), timeout=60, interval=0.5)
            assert await prom.value('up{job="lifeline"}') == 1

            targets = (await prom.get("/api/v1/targets"))["activeTargets"]
            wrong = next(t for t in targets if t["labels"]["job"] == "lifeline-wrong-token")
            assert wrong["health"] == "down" and "401" in wrong["lastError"], wrong

            # Every dashboard query parses and evaluates in this Prometheus; the delivered rate shows the traffic.
            for query in dashboard_queries():
                await prom.get("/api/v1/query", query=query.replace("$__rate_interval", "1m"))
            assert await prom.value('lifeline_backlog_depth{job="lifeline", destination="lab"}') == 0

            async def rules_evaluated() -> bool:
                groups = (await prom.get("/api/v1/rules"))["groups"]
                rules = [r for g in groups for r in g["rules"]]
                return len(rules) == 6 and all(r["health"] == "ok" for r in rules)

            await wait_for(rules_evaluated, timeout=30, interval=0.5)
            firing = {a["labels"]["alertname"] for a in (await prom.get("/api/v1/alerts"))["alerts"]}
            assert not firing & {"LifelineDestinationDown", "LifelineDeadLettersRising", "LifelineBacklogOld"}
        finally:
            prom.stop()


async def test_metrics_export_when_the_monitor_last_ran(api: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    headers = {"Authorization": "Bearer " + mint_token(TEST_JWT_SECRET, subject="t", org="default",
                                                       roles=["viewer"])}
    r = await api.get("/metrics", headers=headers)
    assert "lifeline_monitor_last_run_timestamp_seconds" not in r.text  # never ran: absent (the alert's absent())
    ran = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    await pool.execute("insert into monitor_baselines (channel, bucket, org_id, mean, samples, updated_at)"
                       " values ('adt-in', 'how:1', 'default', 1, 1, $1), ('x', 'how:1', 'other', 1, 1, now())", ran)
    api.app.state.metrics_collector = None  # type: ignore[attr-defined]  # skip the 5 s cache
    r = await api.get("/metrics", headers=headers)
    values = {s.name: s.value for f in text_string_to_metric_families(r.text) for s in f.samples}
    assert values["lifeline_monitor_last_run_timestamp_seconds"] == ran.timestamp()  # this org's run only
