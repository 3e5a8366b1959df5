"""On-call notifications: escalated cases and SLA violations reach people by e-mail (SMTP), a Slack-compatible chat
webhook and PagerDuty Events API v2.

Every notification is a row in `notifications` before it is sent (infra/store/notifications.py), so it is recorded,
retried with backoff until sent or out of attempts, and sent once per event even when the caller retries. A case (or
an SLA violation) pages once: its dedup key is the case id, a second escalation while the page is open sends
nothing, and the resolution sends PagerDuty's `resolve` with the same key. Bodies carry ids, kinds, destination /
SLA names and links, never message content or patient data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import smtplib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx

from infra.config import Oncall, OncallChannel
from infra.store import notifications as store
from infra.store import org_tx, system_tx

log = logging.getLogger(__name__)

TRIGGERS = {"case.escalated", "sla.escalated"}
RESOLVES = {"case.resolved": "case.escalated", "sla.resolved": "sla.escalated"}


@dataclass(frozen=True)
class Links:
    """Where people follow a notification: the Lifeline API / dashboard and the Temporal Web UI."""

    public_url: str = "http://localhost:8000"
    temporal_ui_url: str = "http://localhost:8233"
    namespace: str = "default"

    def case(self, case_id: str) -> dict[str, str]:
        return {"case": f"{self.public_url}/api/remediations/{quote(case_id, safe='')}",
                "dashboard": f"{self.public_url}/dashboard",
                "workflow": f"{self.temporal_ui_url}/namespaces/{self.namespace}/workflows/{quote(case_id, safe='')}"}

    def sla(self) -> dict[str, str]:
        return {"sla": f"{self.public_url}/api/sla", "dashboard": f"{self.public_url}/dashboard"}


@dataclass
class OncallEvent:
    """What happened, in ids: `fields` and `links` are shown to people and must never hold message content."""

    org_id: str
    event: str  # case.escalated | case.resolved | sla.escalated | sla.resolved
    event_id: str  # unique per occurrence: a retry of the same occurrence sends nothing new
    dedup_key: str  # the case id / the violation: trigger and resolve share it
    subject: str
    title: str
    fields: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    @property
    def action(self) -> str:
        return "trigger" if self.event in TRIGGERS else "resolve"


class NotificationPending(Exception):
    """Some channel has not taken the notification yet; it stays pending and is retried."""


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(300.0, 2.0 ** max(0, attempts)))


class Notifier:
    def __init__(self, pool: asyncpg.Pool, oncall: Oncall, http: httpx.AsyncClient | None = None,
                 links: Links | None = None, environ: dict[str, str] | None = None) -> None:
        self.pool = pool
        self.oncall = oncall
        self.http = http
        self.links = links or Links()
        self.environ = environ if environ is not None else os.environ

    def channels_for(self, ev: OncallEvent) -> list[OncallChannel]:
        trigger = ev.event if ev.event in TRIGGERS else RESOLVES.get(ev.event, "")
        return [c for c in self.oncall.channels if trigger in c.events and (c.org is None or c.org == ev.org_id)]

    def body(self, ev: OncallEvent, channel: OncallChannel) -> dict[str, Any]:
        if channel.pagerduty is not None:
            body: dict[str, Any] = {"event_action": ev.action, "dedup_key": ev.dedup_key}
            if ev.action == "trigger":
                body["payload"] = {"summary": ev.title[:1024], "source": "lifeline", "severity":
                                   channel.pagerduty.severity, "component": ev.subject, "group": ev.org_id,
                                   "class": ev.event, "custom_details": dict(ev.fields)}
                body["links"] = [{"href": href, "text": text} for text, href in ev.links.items()]
            return body  # the routing key is added at send time: a secret is never stored
        lines = [ev.title, *(f"{k}: {v}" for k, v in ev.fields.items()), *(f"{k}: {v}" for k, v in ev.links.items())]
        if channel.chat is not None:
            return {"text": "\n".join(lines)}
        return {"subject": f"[Lifeline] {ev.title}"[:200], "text": "\n".join(lines) + "\n"}

    async def notify(self, ev: OncallEvent) -> list[int]:
        """Record the event for each matching channel and try each once; the ids of its rows."""
        ids: list[int] = []
        async with org_tx(self.pool, ev.org_id) as conn:
            for channel in self.channels_for(ev):
                new = await store.enqueue(conn, org_id=ev.org_id, key=f"{ev.event_id}:{channel.name}",
                                          channel=channel.name, kind=channel.kind, event=ev.event,
                                          subject=ev.subject, dedup_key=ev.dedup_key, action=ev.action,
                                          body=self.body(ev, channel))
                if new is not None:
                    ids.append(new)
        if ids:
            await self.deliver(ids)
        return ids

    async def deliver(self, ids: list[int] | None = None) -> tuple[int, int]:
        """Send pending notifications (the given ones, else every due one); (sent, still pending or failed)."""
        by_name = {c.name: c for c in self.oncall.channels}
        sent = failed = 0
        async with system_tx(self.pool, "notification_delivery") as conn:  # pending pages of every org
            rows = await store.claim_due(conn, ids)
            for row in rows:
                channel = by_name.get(row["channel"])
                try:
                    if channel is None:
                        raise RuntimeError(f"channel {row['channel']} is no longer configured")
                    body = row["body"] if isinstance(row["body"], dict) else json.loads(row["body"])
                    await self._send(channel, body)
                except Exception as exc:  # noqa: BLE001 - every failure is recorded and retried
                    failed += 1
                    attempts = row["attempts"] + 1
                    retry_at = None if attempts >= self.oncall.max_attempts or channel is None else \
                        datetime.now(UTC) + _backoff(attempts)
                    reason = f"{type(exc).__name__}: {exc}"
                    log.warning("oncall: %s %s via %s failed (attempt %d): %s", row["event"], row["subject"],
                                row["channel"], attempts, type(exc).__name__)
                    await store.mark_failed(conn, row["id"], reason, retry_at)
                else:
                    sent += 1
                    await store.mark_sent(conn, row["id"])
        return sent, failed

    async def pending(self, ids: Iterable[int]) -> bool:
        async with system_tx(self.pool, "notification_delivery") as conn:
            return "pending" in await store.statuses(conn, list(ids))

    def _secret(self, name: str) -> str:
        value = self.environ.get(name, "")
        if not value:
            raise RuntimeError(f"environment variable {name} is not set")
        return value

    async def _send(self, channel: OncallChannel, body: dict[str, Any]) -> None:
        if channel.email is not None:
            await asyncio.to_thread(self._send_email, channel, body)
            return
        if channel.chat is not None:
            url, payload = self._secret(channel.chat.webhook_url_env), body
        else:
            assert channel.pagerduty is not None
            url = channel.pagerduty.events_url
            payload = {"routing_key": self._secret(channel.pagerduty.routing_key_env), **body}
        http = self.http or httpx.AsyncClient()
        try:
            resp = await http.post(url, json=payload, timeout=10.0)
            resp.raise_for_status()
        finally:
            if self.http is None:
                await http.aclose()

    def _send_email(self, channel: OncallChannel, body: dict[str, Any]) -> None:
        email = channel.email
        assert email is not None
        msg = EmailMessage()
        msg["From"] = email.sender
        msg["To"] = ", ".join(email.to)
        msg["Subject"] = body["subject"]
        msg.set_content(body["text"])
        with smtplib.SMTP(email.smtp_host, email.smtp_port, timeout=10) as smtp:
            if email.starttls:
                smtp.starttls()
            if email.username:
                smtp.login(email.username, self._secret(email.password_env or ""))
            smtp.send_message(msg)


def case_event(links: Links, *, org_id: str, case_id: str, run_id: str, stage: str, kind: str = "",
               subject: str = "", reason: str = "") -> OncallEvent:
    """An escalated or resolved case: the id, kind, subject (a destination / engine channel name) and links."""
    event = "case.escalated" if stage == "escalated" else "case.resolved"
    fields = {"case": case_id, "org": org_id, "stage": stage}
    if kind:
        fields["kind"] = kind
    if subject:
        fields["subject"] = subject
    if reason:
        fields["reason"] = reason
    title = f"Lifeline case {stage}: {case_id}"
    return OncallEvent(org_id=org_id, event=event, event_id=f"{case_id}:{run_id}:{stage}", dedup_key=case_id,
                       subject=case_id, title=title, fields=fields, links=links.case(case_id))


def sla_event(links: Links, *, org_id: str, sla: str, objective: str, violation_id: int, resolved: bool,
              value: float | None = None, target: float | None = None, case_id: str | None = None) -> OncallEvent:
    event = "sla.resolved" if resolved else "sla.escalated"
    fields = {"sla": sla, "objective": objective, "violation": str(violation_id), "org": org_id}
    if value is not None:
        fields["value"] = f"{value:g}"
    if target is not None:
        fields["target"] = f"{target:g}"
    if case_id:
        fields["case"] = case_id
    verb = "met again" if resolved else "violated"
    return OncallEvent(org_id=org_id, event=event, event_id=f"sla:{violation_id}:{event}",
                       dedup_key=f"sla:{org_id}:{sla}:{objective}:{violation_id}", subject=f"{sla}/{objective}",
                       title=f"Lifeline SLA {sla}: {objective} {verb}", fields=fields, links=links.sla())
