"""On-call notifications: an escalated case reaches a real SMTP server (aiosmtpd), a Slack-compatible webhook and a
PagerDuty Events v2 receiver; the case pages once, its resolution resolves the page with the same dedup key, a
failed send is retried and recorded, and an escalated SLA violation pages and resolves the same way.

The real RemediationCaseWorkflow runs on the time-skipping server with stand-ins for diagnosis and actions; the
`notify` activity is the real one, over the test's PostgreSQL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from email import message_from_bytes
from email.message import Message
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.oncall import Links, Notifier
from activities.remediation import RemediationActivities
from activities.sla import SlaEvaluator
from infra.config import LifelineConfig, validate_config
from infra.crypto import Cipher
from infra.devstack import free_port
from infra.store.notifications import for_subject
from tests.delivery.harness import HttpHit, HttpPeer
from tests.healing.fakes import Fakes, proposed
from tests.monitoring.conftest import Seeder
from workflows.contract import SIGNAL_EVIDENCE, CaseInput, CaseState, Diagnosis, Evidence, case_workflow_id
from workflows.remediation import RemediationCaseWorkflow

LINKS = Links("https://lifeline.example.org", "https://temporal.example.org", "default")
PD_KEY = "R0UTINGKEY0123456789abcdefabcdef"


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd hook
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


class Receivers:
    """PagerDuty (202 like the Events API, or 500 while `pd_failures` lasts) and a chat webhook on one server."""

    def __init__(self) -> None:
        self.pd_failures = 0
        self.peer = HttpPeer(self.respond)

    def respond(self, hit: HttpHit, n: int) -> tuple[int, dict[str, str], bytes]:
        if hit.path == "/v2/enqueue":
            if n < self.pd_failures:
                return 500, {}, b"{}"
            body = json.loads(hit.body)
            return 202, {"Content-Type": "application/json"}, json.dumps(
                {"status": "success", "message": "Event processed", "dedup_key": body["dedup_key"]}).encode()
        return 200, {}, b"ok"

    def pages(self) -> list[dict[str, Any]]:
        return [json.loads(h.body) for h in self.peer.on("/v2/enqueue")]

    def chats(self) -> list[dict[str, Any]]:
        return [json.loads(h.body) for h in self.peer.on("/chat")]


@pytest.fixture
def receivers() -> Iterator[tuple[Receivers, int]]:
    r = Receivers()
    port = r.peer.start()
    yield r, port
    r.peer.stop()


def oncall_config(smtp_port: int, http_port: int, **extra: Any) -> LifelineConfig:
    return validate_config({**extra, "oncall": {"channels": [
        {"name": "ops-mail", "email": {"smtp_host": "127.0.0.1", "smtp_port": smtp_port, "starttls": False,
                                       "sender": "lifeline@hospital.example", "to": ["oncall@hospital.example"]}},
        {"name": "ops-chat", "chat": {"webhook_url_env": "TEST_CHAT_URL"}},
        {"name": "pager", "pagerduty": {"routing_key_env": "TEST_PD_KEY",
                                        "events_url": f"http://127.0.0.1:{http_port}/v2/enqueue"}},
    ]}}, "test.yaml")


def environ(http_port: int) -> dict[str, str]:
    return {"TEST_CHAT_URL": f"http://127.0.0.1:{http_port}/chat", "TEST_PD_KEY": PD_KEY}


@pytest.fixture
async def rig(skip_env: WorkflowEnvironment, pool: asyncpg.Pool, mailbox: tuple[Mailbox, int],
              receivers: tuple[Receivers, int]) -> AsyncIterator[tuple[Client, Fakes, str, Notifier]]:
    config = oncall_config(mailbox[1], receivers[1])
    notifier = Notifier(pool, config.oncall, links=LINKS, environ=environ(receivers[1]))

    async def provider() -> Client:
        return skip_env.client

    rem = RemediationActivities(pool, provider, config, notifier=notifier)
    fakes = Fakes(skip_env.client)
    acts = [a for a in fakes.activities() if a != fakes.notify] + [rem.notify]
    tq = f"oncall-{uuid.uuid4().hex[:8]}"
    async with Worker(skip_env.client, task_queue=tq, workflows=[RemediationCaseWorkflow], activities=acts):
        yield skip_env.client, fakes, tq, notifier


async def run_case(client: Client, tq: str, subject: str, **kw: Any) -> CaseState:
    inp = CaseInput("lane_blocked", subject, **{"settle_s": 1.0, "mode": "full-auto", **kw})
    ev = Evidence("lane_blocked", subject, "2024-01-01T00:00:00+00:00", "head dead-lettered", {"blocked": 1.0},
                  "blocked:render")
    handle = await client.start_workflow(
        RemediationCaseWorkflow.run, inp, id=case_workflow_id("default", "lane_blocked", subject), task_queue=tq,
        start_signal=SIGNAL_EVIDENCE, start_signal_args=[ev], id_conflict_policy=WorkflowIDConflictPolicy.FAIL)
    return await handle.result()


async def test_escalation_mails_chats_and_pages_once_then_resolves_with_the_same_key(
        rig: tuple[Client, Fakes, str, Notifier], mailbox: tuple[Mailbox, int], receivers: tuple[Receivers, int],
        pool: asyncpg.Pool) -> None:
    client, fakes, tq, _ = rig
    box, rx = mailbox[0], receivers[0]
    rx.pd_failures = 1  # the first page fails: the activity stays pending and Temporal retries it
    subject = f"destination:lab{uuid.uuid4().hex[:6]}"
    case_id = case_workflow_id("default", "lane_blocked", subject)

    # 1. A destructive action waits for approval; nobody answers within the hour: the case escalates.
    fakes.diagnosis = Diagnosis("blocked:render", "blocked", 0.9, actions=proposed("skip_blocked_head"))
    state = await run_case(client, tq, subject, approval_timeout_s=3600.0)
    assert state.stage == "escalated"

    assert len(box.messages) == 1
    mail = box.messages[0]
    assert mail["To"] == "oncall@hospital.example" and case_id in mail["Subject"] and "escalated" in mail["Subject"]
    payload = mail.get_payload(decode=True)
    assert isinstance(payload, bytes)
    text = payload.decode()
    assert f"https://lifeline.example.org/api/remediations/{case_id.replace(':', '%3A')}" in text
    assert "https://temporal.example.org/namespaces/default/workflows/" in text

    pages = rx.pages()
    assert len(pages) == 2 and pages[0] == pages[1]  # one failure (500), then the same event again
    page = pages[1]
    assert page["routing_key"] == PD_KEY and page["event_action"] == "trigger" and page["dedup_key"] == case_id
    assert page["payload"]["severity"] == "critical" and page["payload"]["source"] == "lifeline"
    assert page["payload"]["custom_details"]["case"] == case_id
    assert {link["text"] for link in page["links"]} == {"case", "dashboard", "workflow"}
    assert len(rx.chats()) == 1 and case_id in rx.chats()[0]["text"]

    rows = await for_subject(pool, "default", case_id)
    assert [(r["channel"], r["action"], r["status"], r["attempts"]) for r in rows] == [
        ("ops-mail", "trigger", "sent", 1), ("ops-chat", "trigger", "sent", 1), ("pager", "trigger", "sent", 2)]

    # 2. The problem comes back and the next run escalates again while the page is open: nobody is paged twice.
    state = await run_case(client, tq, subject, approval_timeout_s=3600.0)
    assert state.stage == "escalated"
    assert len(rx.pages()) == 2 and len(box.messages) == 1 and len(rx.chats()) == 1

    # 3. A later run fixes it: the page resolves with the same dedup key, and mail and chat say so.
    fakes.diagnosis = Diagnosis("blocked:render", "blocked", 0.9, actions=proposed("reconnect"))
    fakes.fixes = {"reconnect"}
    state = await run_case(client, tq, subject)
    assert state.stage == "resolved"
    resolve = rx.pages()[-1]
    assert resolve == {"routing_key": PD_KEY, "event_action": "resolve", "dedup_key": case_id}
    assert len(box.messages) == 2 and "resolved" in box.messages[1]["Subject"]
    assert "resolved" in rx.chats()[-1]["text"]

    # Ids and links only: nothing from the evidence or the diagnosis text travels.
    everything = json.dumps(rx.pages()) + json.dumps(rx.chats()) + "".join(str(m) for m in box.messages)
    assert "head dead-lettered" not in everything and "blocked:render" not in everything.split("signature")[0]


async def test_resolving_a_case_that_never_paged_sends_nothing(
        rig: tuple[Client, Fakes, str, Notifier], mailbox: tuple[Mailbox, int],
        receivers: tuple[Receivers, int]) -> None:
    client, fakes, tq, _ = rig
    fakes.diagnosis = Diagnosis("refused", "down", 0.9, actions=proposed("reconnect"))
    fakes.fixes = {"reconnect"}
    state = await run_case(client, tq, f"destination:d{uuid.uuid4().hex[:6]}")
    assert state.stage == "resolved"
    assert receivers[0].pages() == [] and mailbox[0].messages == [] and receivers[0].chats() == []


async def test_sla_escalation_pages_and_the_closed_violation_resolves(
        pool: asyncpg.Pool, store_cipher: Cipher, mailbox: tuple[Mailbox, int],
        receivers: tuple[Receivers, int]) -> None:
    rx = receivers[0]
    config = oncall_config(mailbox[1], receivers[1], sla=[
        {"name": "lab-sla", "destination": "lab", "max_backlog_age": "5m", "p95_latency": None,
         "min_success_rate": None, "uptime_target": None, "escalate_after": "10m"}],
        destinations=[{"name": "lab", "mllp": {"host": "127.0.0.1", "port": 2600}}],
        channels=[{"name": "adt-in", "routes": [{"to": "lab"}]}])
    notifier = Notifier(pool, config.oncall, links=LINKS, environ=environ(receivers[1]))
    evaluator = SlaEvaluator(pool, config, notifier=notifier)
    now = await pool.fetchval("select now()")
    seed = Seeder(pool, store_cipher)
    mid = await seed.message("adt-in", received_at=now - timedelta(minutes=8))
    await seed.delivery(mid, "lab", created_at=now - timedelta(minutes=7))  # over max_backlog_age (5m)
    first = await evaluator.evaluate(now=now)
    assert first.opened == ["lab-sla/max_backlog_age"] and not first.escalated
    assert rx.pages() == []
    second = await evaluator.evaluate(now=now + timedelta(minutes=11))  # open past escalate_after (10m)
    assert second.escalated == ["lab-sla/max_backlog_age"]
    pages = rx.pages()
    assert len(pages) == 1 and pages[0]["event_action"] == "trigger"
    key = pages[0]["dedup_key"]
    assert key.startswith("sla:default:lab-sla:max_backlog_age:")
    assert pages[0]["payload"]["custom_details"]["sla"] == "lab-sla"
    assert len(mailbox[0].messages) == 1 and "lab-sla" in mailbox[0].messages[0]["Subject"]
    await evaluator.evaluate(now=now + timedelta(minutes=11, seconds=30))  # still violated: no second page
    assert len(rx.pages()) == 1

    await pool.execute("update deliveries set status = 'delivered', finished_at = now() where message_id = $1", mid)
    third = await evaluator.evaluate(now=await pool.fetchval("select now()") + timedelta(minutes=12))
    assert third.closed == ["lab-sla/max_backlog_age"]
    assert rx.pages()[-1] == {"routing_key": PD_KEY, "event_action": "resolve", "dedup_key": key}
    assert len(mailbox[0].messages) == 2

