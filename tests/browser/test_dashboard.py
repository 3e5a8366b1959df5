"""The operator dashboard in Debian's Chromium: log in with a token, live counts over SSE, approve a case.

The API runs in uvicorn on a free port (a thread with its own loop), beside an in-process engine (dispatcher,
delivery worker, python-hl7 peer) and a case worker running the real RemediationCaseWorkflow with stand-in
diagnosis/remediation activities, so the approval clicked in the page must reach a real workflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from temporalio import activity
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.approvals import ApprovalActivities
from activities.diagnostics import upsert_case
from api.app import create_app
from api.auth import mint_token
from infra.config import LifelineConfig, Sla
from infra.crypto import Cipher
from infra.devstack import free_port
from tests.conftest import TEST_JWT_SECRET, make_settings
from tests.delivery.harness import Engine, Peer, adt, config_for, running, wait_for
from workflows.contract import (
    QUERY_STATE,
    ActionInput,
    ActionResult,
    AuditInput,
    CaseState,
    DiagnoseInput,
    Diagnosis,
    MeasureInput,
    Measurement,
    NotifyInput,
    ProposedAction,
    RecordCaseInput,
    RecordResolutionInput,
)
from workflows.remediation import RemediationCaseWorkflow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUTPUT = Path(__file__).resolve().parents[1] / "output"


def _install_chromium() -> str | None:
    """Install Debian's chromium when it is missing; the reason it cannot be had, or None."""
    if CHROMIUM.exists():
        return None
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and apt-get cannot run here as root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "chromium"]):
        try:
            subprocess.run(cmd, env=env, check=False, capture_output=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"installing chromium failed: {exc}"
        if CHROMIUM.exists():
            return None
    return "apt-get could not install chromium"


@pytest.fixture(scope="session")
def chromium() -> str:
    reason = _install_chromium()
    if reason:
        pytest.skip(reason)
    return str(CHROMIUM)


class ApiServer:
    """create_app under uvicorn in a background thread, on 127.0.0.1 and a free port."""

    def __init__(self, db_url: str, temporal_address: str, task_queue: str, config: LifelineConfig) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        settings = make_settings(database_url=db_url, temporal_address=temporal_address, task_queue=task_queue,
                                 public_url=self.base, temporal_ui_url="http://127.0.0.1:8233")
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings, config), host="127.0.0.1", port=self.port,
                                                    log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, name="dashboard-api", daemon=True)

    async def __aenter__(self) -> ApiServer:
        self.thread.start()
        await wait_for(lambda: self.server.started or not self.thread.is_alive(), timeout=20)
        assert self.server.started, "uvicorn did not start"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await asyncio.to_thread(self.thread.join, 15)


def token(*roles: str, subject: str = "dashboard-admin") -> str:
    return mint_token(TEST_JWT_SECRET, subject=subject, org="default", roles=roles)


def temporal_address(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


class CaseStandIns:
    """The case workflow's activities: a fixed diagnosis with one action, the real case row in the store."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.actions: list[ActionInput] = []

    @activity.defn(name="record_case")
    async def record_case(self, inp: RecordCaseInput) -> None:
        await upsert_case(self.pool, inp.state, activity.info().workflow_run_id or "")

    @activity.defn(name="diagnose")
    async def diagnose(self, inp: DiagnoseInput) -> Diagnosis:
        return Diagnosis("refused", "lab refuses connections", 0.9, ["3 connection refusals in a row"],
                         actions=[ProposedAction("reconnect", "safe")])

    @activity.defn(name="run_action")
    async def run_action(self, inp: ActionInput) -> ActionResult:
        self.actions.append(inp)
        return ActionResult(inp.action, True, "backoff reset on 0 deliveries")

    @activity.defn(name="measure")
    async def measure(self, inp: MeasureInput) -> Measurement:
        return Measurement(at="2026-01-01T00:00:00+00:00", values={"backlog": 0.0})

    @activity.defn(name="record_resolution")
    async def record_resolution(self, inp: RecordResolutionInput) -> None:
        return None

    @activity.defn(name="audit_event")
    async def audit_event(self, inp: AuditInput) -> None:
        return None

    @activity.defn(name="notify")
    async def notify(self, inp: NotifyInput) -> bool:
        return True

    def all(self) -> list[Any]:
        return [self.record_case, self.diagnose, self.run_action, self.measure, self.record_resolution,
                self.audit_event, self.notify, ApprovalActivities(self.pool, TEST_JWT_SECRET).verify_approval]


@contextlib.asynccontextmanager
async def case_worker(client: Client, task_queue: str, acts: CaseStandIns) -> AsyncIterator[Worker]:
    worker = Worker(client, task_queue=task_queue, workflows=[RemediationCaseWorkflow], activities=acts.all())
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.shutdown()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def output_dir() -> Iterator[Path]:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    yield OUTPUT


async def test_login_page_cookie_session_and_event_format(db_url: str, temporal_env: WorkflowEnvironment,
                                                          task_queue: str) -> None:
    """Without a session: login form for browsers, problem JSON otherwise; the cookie opens /api/events."""
    async with ApiServer(db_url, temporal_address(temporal_env), task_queue, config_for(1)) as api, \
            httpx.AsyncClient(base_url=api.base, timeout=10) as http:
        page = await http.get("/dashboard", headers={"Accept": "text/html"})
        assert page.status_code == 401 and "<form" in page.text and 'action="/dashboard/session"' in page.text
        problem = await http.get("/dashboard")
        assert problem.status_code == 401 and problem.json()["status"] == 401

        bad = await http.post("/dashboard/session", data={"token": "not-a-jwt"})
        assert bad.status_code == 401 and bad.json()["field"] == "token"
        sender = await http.post("/dashboard/session", data={"token": token("sender")})
        assert sender.status_code == 403
        ok = await http.post("/dashboard/session", data={"token": token("viewer")})
        assert ok.status_code == 303 and ok.headers["location"] == "/dashboard"
        cookie = ok.headers["set-cookie"].lower()
        assert "lifeline_token=" in cookie and "httponly" in cookie and "samesite=strict" in cookie

        assert (await http.get("/dashboard", headers={"Accept": "text/html"})).status_code == 200  # the cookie
        assert (await http.get("/dashboard/static/dashboard.js")).status_code == 200
        # The cookie is not accepted on an unsafe request from another origin (a same-site page on another port).
        cross = await http.post("/api/remediations/case:manual:x/approve", json={},
                                headers={"Origin": "http://127.0.0.1:8233"})
        assert cross.status_code == 403

        async with http.stream("GET", "/api/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            event: dict[str, str] = {}
            async for line in stream.aiter_lines():
                if line.startswith(("event:", "data:", "id:")):
                    key, _, value = line.partition(":")
                    event[key] = value.strip()
                if line == "" and "data" in event:
                    break
        assert event["event"] == "snapshot"
        snap = json.loads(event["data"])
        assert {"totals", "channels", "flows", "blocked_lanes", "dead_letters", "cases"} <= snap.keys()
        assert [c["channel"] for c in snap["channels"]] == ["adt-in"]
        assert [(f["channel"], f["destination"]) for f in snap["flows"]] == [("adt-in", "lab")]
        logout = await http.delete("/dashboard/session")
        assert logout.status_code == 204
        assert (await http.get("/api/events")).status_code == 401


async def test_dashboard_live_counts_and_approval(chromium: str, db_url: str, pool: asyncpg.Pool,
                                                  temporal_env: WorkflowEnvironment, temporal_client: Client,
                                                  store_cipher: Cipher, task_queue: str, output_dir: Path) -> None:
    from playwright.async_api import async_playwright, expect

    peer = Peer()
    config = config_for(await peer.start())
    config = config.model_copy(update={"sla": [Sla(name="lab-sla", destination="lab")]})
    case_queue = f"{task_queue}-cases"
    stand_ins = CaseStandIns(pool)
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    admin = token("admin")
    case_id = ""
    try:
        async with running(engine), case_worker(temporal_client, case_queue, stand_ins), \
                ApiServer(db_url, temporal_address(temporal_env), case_queue, config) as api, \
                httpx.AsyncClient(base_url=api.base, timeout=15) as http, async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            try:
                page = await browser.new_page(viewport={"width": 1440, "height": 1100})
                expect.set_options(timeout=20_000)

                # Log in: the 401 page is the form; the token becomes the session cookie.
                await page.goto(f"{api.base}/dashboard")
                await page.screenshot(path=str(output_dir / "dashboard-login.png"))
                await page.fill("#token", admin)
                await page.click("button[type=submit]")
                await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
                await expect(page.locator("#t-received")).to_have_text("0")
                await expect(page.locator("tr[data-flow='adt-in>lab']")).to_be_visible()
                await expect(page.locator("#sla tr[data-sla='lab-sla']").first).to_be_visible()

                # Messages through the REST ingest route: the counts move without a reload (SSE).
                run = uuid.uuid4().hex[:6]
                peer.answers[f"R{run}-3"] = "AR"  # the lab rejects one: a dead letter
                sender = {"Authorization": f"Bearer {token('sender', subject='ehr')}", "Content-Type": "text/plain"}
                for i in (1, 2, 3):
                    r = await http.post("/api/channels/adt-in/messages", content=adt(f"R{run}-{i}", f"MRN{i}"),
                                        headers=sender)
                    assert r.status_code == 202, r.text
                await expect(page.locator("#t-received")).to_have_text("3")
                await expect(page.locator("#t-delivered")).to_have_text("2")
                await expect(page.locator("#t-dead")).to_have_text("1")
                flow_row = page.locator("tr[data-flow='adt-in>lab'] td")
                await expect(flow_row.nth(2)).to_have_text("2")  # succeeded attempts
                await page.evaluate("window.dispatchEvent(new Event('lifeline:sla'))")  # refresh without waiting 15 s
                await expect(page.locator("#sla")).to_contain_text("violated")  # 2 of 3 attempts < 99 %

                # A case awaiting approval (opened by hand), approved from the page with a note.
                r = await http.post("/api/remediations", json={"kind": "destination_down", "subject": "destination:lab",
                                                               "mode": "manual", "reason": "browser test"},
                                    headers={"Authorization": f"Bearer {admin}"})
                assert r.status_code == 201, r.text
                case_id = r.json()["case_id"]
                row = page.locator(f"tr[data-case-id='{case_id}']")
                await expect(row).to_have_attribute("data-stage", "awaiting_approval")
                await expect(row.locator("a")).to_have_attribute(
                    "href", f"http://127.0.0.1:8233/namespaces/default/workflows/{case_id}")
                await expect(page.locator("#t-awaiting")).to_have_text("1 awaiting approval")
                await row.locator("input.note").fill("lab is back, go")
                approve = row.locator("button.approve")
                await expect(approve).to_be_enabled()
                await approve.click()
                await expect(row.locator(".decision-msg")).to_have_text("approved by you")

                handle = temporal_client.get_workflow_handle(case_id)

                async def approved() -> bool:
                    state: CaseState | None = await handle.query(QUERY_STATE, result_type=CaseState)
                    return state is not None and state.approver == "dashboard-admin" and state.stage in (
                        "remediating", "verifying", "resolved")

                await wait_for(approved, timeout=20)
                await wait_for(lambda: stand_ins.actions, timeout=20)  # "remediating" is set before the action runs
                assert [(a.action, a.approver) for a in stand_ins.actions] == [("reconnect", "dashboard-admin")]
                await expect(row).to_have_attribute("data-stage", "verifying")
                await page.screenshot(path=str(output_dir / "dashboard.png"), full_page=True)
            finally:
                await browser.close()
    finally:
        if case_id:
            with contextlib.suppress(Exception):
                await temporal_client.get_workflow_handle(case_id).terminate("browser test done")
        await peer.stop()
