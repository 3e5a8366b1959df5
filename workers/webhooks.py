"""The webhook drainer: sends each subscription's events in order, with retries, backoff and dead letters, and
prunes the event log past its retention.

One drainer runs in every worker process. A subscription is drained by one process at a time: the drainer holds a
session advisory lock per subscription on a connection of its own, so when that process dies the lock goes with
its connection and another worker's drainer takes the subscription over where the store says it stood (the
pending row, its attempts and its next time). Sends of one subscription go one at a time in sequence order;
different subscriptions drain concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from activities.subscriptions import (
    H_EVENT,
    H_EVENT_ID,
    H_SEQUENCE,
    H_SUBSCRIPTION,
    EventLinks,
    event_body,
    open_secret,
    post_signed,
)
from infra.crypto import Cipher
from infra.settings import Settings
from infra.ssrf import Guard
from infra.store import events as event_store
from infra.store import webhooks as store
from workflows.contract import ERR_EVENT_EXPIRED, WEBHOOK_RETRY_MAXIMUM_S, webhook_backoff_s

log = logging.getLogger("lifeline.webhooks")
_LOCK_CLASS = 0x57EB  # advisory lock namespace of webhook subscriptions: (class, hashtext(subscription id))


class WebhookDrainer:
    def __init__(self, pool: asyncpg.Pool, cipher: Cipher, guard: Guard, links: EventLinks, *,
                 poll_s: float = 0.5, retention: timedelta = timedelta(days=30), prune_every_s: float = 3600.0,
                 http: httpx.AsyncClient | None = None) -> None:
        self.pool = pool
        self.cipher = cipher
        self.guard = guard
        self.links = links
        self.poll_s = poll_s
        self.retention = retention
        self.prune_every_s = prune_every_s
        self._http = http
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.sent = 0  # successful sends by this drainer (bench and tests read it)
        self.admissions = 0  # looks at the log for new events

    async def run(self, db_url: str, stop: asyncio.Event) -> None:
        """Drain until `stop`; survives PostgreSQL restarts (locks are taken again after a reconnect)."""
        own_http = self._http is None
        http = self._http or httpx.AsyncClient(limits=httpx.Limits(max_connections=100))
        self._http = http
        last_prune = 0.0
        try:
            while not stop.is_set():
                try:
                    conn = await asyncpg.connect(db_url)
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("webhook drainer: PostgreSQL unavailable (%s); retrying", type(exc).__name__)
                    await _sleep(stop, 2.0)
                    continue
                try:
                    while not stop.is_set():
                        await self._claim(conn, stop)
                        loop_now = asyncio.get_running_loop().time()
                        if loop_now - last_prune >= self.prune_every_s:
                            last_prune = loop_now
                            await self.prune()
                        await _sleep(stop, self.poll_s)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("webhook drainer: lost PostgreSQL (%s); releasing subscriptions",
                                type(exc).__name__)
                finally:
                    await self._cancel_all()
                    with contextlib.suppress(Exception):
                        await conn.close()
                await _sleep(stop, 1.0)
        finally:
            await self._cancel_all()
            if own_http:
                await http.aclose()
                self._http = None

    async def prune(self, now: datetime | None = None) -> tuple[int, int]:
        """Delete events and finished delivery records older than the retention (every org)."""
        cutoff = (now or datetime.now(UTC)) - self.retention
        try:
            removed = await event_store.prune(self.pool, cutoff)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("event retention: prune failed (%s)", type(exc).__name__)
            return 0, 0
        if any(removed):
            log.info("event retention: pruned %d events and %d webhook deliveries before %s", *removed,
                     cutoff.isoformat())
        return removed

    async def _claim(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        wanted = {sid: org for org, sid in await store.enabled_subscriptions(self.pool)}
        for sid in list(self._tasks):
            task = self._tasks[sid]
            if sid not in wanted or task.done():
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                del self._tasks[sid]
                await conn.execute("select pg_advisory_unlock($1, hashtext($2))", _LOCK_CLASS, sid)
        for sid, org in wanted.items():
            if sid in self._tasks:
                continue
            if await conn.fetchval("select pg_try_advisory_lock($1, hashtext($2))", _LOCK_CLASS, sid):
                self._tasks[sid] = asyncio.create_task(self._drain(org, sid, stop), name=f"webhook:{sid}")

    async def _cancel_all(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def _drain(self, org: str, sid: str, stop: asyncio.Event) -> None:
        """Send the subscription's pending events in sequence order until it is deleted or disabled."""
        while not stop.is_set():
            try:
                head = await store.head(self.pool, org, sid)
                if head is None:
                    self.admissions += 1
                    if await store.admit(self.pool, org, sid) == 0:
                        await _sleep(stop, self.poll_s)
                    continue
                if not head["enabled"]:
                    return
                delay = (head["next_at"] - datetime.now(UTC)).total_seconds()
                if delay > 0:
                    await _sleep(stop, min(delay, self.poll_s * 4))
                    continue
                await self._send(org, sid, head)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("webhook %s: store unavailable (%s); retrying", sid, type(exc).__name__)
                await _sleep(stop, 1.0)

    async def _send(self, org: str, sid: str, head: dict[str, Any]) -> None:
        delivery_id = int(head["delivery_id"])
        attempt = int(head["attempts"]) + 1
        if head["logged_id"] is None:
            await store.record_failure(self.pool, org, delivery_id, f"{ERR_EVENT_EXPIRED}: the event left the log"
                                       " (retention) before it was sent", None, None)
            return
        secret = open_secret(self.cipher, sid, bytes(head["secret_enc"]), str(head["key_id"]))
        data = head["data"] if isinstance(head["data"], dict) else {}
        body = event_body(event_id=int(head["event_id"]), event_type=str(head["type"]),
                          occurred_at=head["occurred_at"], org_id=org, subject=str(head["subject"]), data=data,
                          subscription=sid, sequence=int(head["seq"]), attempt=attempt,
                          redelivery=head["replay_of"] is not None, links=self.links)
        assert self._http is not None
        outcome = await post_signed(self._http, self.guard, str(head["url"]), secret, body, headers={
            H_EVENT: str(head["type"]), H_EVENT_ID: str(head["event_id"]), H_SUBSCRIPTION: sid,
            H_SEQUENCE: str(head["seq"])})
        if outcome.ok:
            await store.record_delivered(self.pool, org, delivery_id, outcome.status or 200)
            self.sent += 1
            return
        retry_at = None
        if outcome.retryable and attempt < int(head["max_attempts"]):
            pause = webhook_backoff_s(attempt, float(head["initial_interval_s"]),
                                      float(head["maximum_interval_s"]))
            if outcome.retry_after_s is not None:
                pause = min(max(pause, outcome.retry_after_s), WEBHOOK_RETRY_MAXIMUM_S)
            retry_at = datetime.now(UTC) + timedelta(seconds=pause)
        else:
            log.warning("webhook %s: event %s dead-lettered after %d attempt(s): %s %s", sid, head["event_id"],
                        attempt, outcome.error_type, outcome.status or "")
        await store.record_failure(self.pool, org, delivery_id, f"{outcome.error_type}: {outcome.error}",
                                   outcome.status, retry_at)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)



def drainer_for(settings: Settings, pool: asyncpg.Pool, http: httpx.AsyncClient | None = None) -> WebhookDrainer:
    """The drainer a worker process runs, from its settings."""
    return WebhookDrainer(pool, settings.cipher("store"), Guard(settings.webhook_allow_networks),
                          EventLinks(settings.public_url, settings.temporal_ui_url, settings.temporal_namespace),
                          poll_s=settings.webhook_poll_seconds,
                          retention=timedelta(days=settings.event_retention_days),
                          prune_every_s=settings.event_prune_seconds, http=http)
