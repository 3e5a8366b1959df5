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
import ssl
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from activities.subscriptions import (
    H_EVENT,
    H_EVENT_ID,
    H_SEQUENCE,
    H_SUBSCRIPTION,
    EventLinks,
    KeepAlive,
    SendOutcome,
    event_body,
    open_secret,
    post_signed,
)
from infra.crypto import Cipher
from infra.settings import Settings
from infra.ssrf import AddressRefused, Guard, Target
from infra.store import events as event_store
from infra.store import webhooks as store
from workflows.contract import ERR_ADDRESS_REFUSED, ERR_EVENT_EXPIRED, WEBHOOK_RETRY_MAXIMUM_S, webhook_backoff_s

log = logging.getLogger("lifeline.webhooks")
ADMIT_BATCH = 500  # events moved into a subscription's queue per transaction


class WebhookDrainer:
    def __init__(self, pool: asyncpg.Pool, cipher: Cipher, guard: Guard, links: EventLinks, *,
                 poll_s: float = 0.5, retention: timedelta = timedelta(days=30), prune_every_s: float = 3600.0,
                 batch: int = 100) -> None:
        self.pool = pool
        self.cipher = cipher
        self.guard = guard
        self.links = links
        self.poll_s = poll_s
        self.retention = retention
        self.prune_every_s = prune_every_s
        self.batch = batch  # pending sends read per round trip
        self._ssl: ssl.SSLContext | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.sent = 0  # successful sends by this drainer (bench and tests read it)
        self.admissions = 0  # looks at the log for new events

    async def run(self, db_url: str, stop: asyncio.Event) -> None:
        """Drain until `stop`; survives PostgreSQL restarts (locks are taken again after a reconnect)."""
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
                await store.release_drainer(conn, sid)
        for sid, org in wanted.items():
            if sid in self._tasks:
                continue
            if await store.try_lock_drainer(conn, sid):
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
        if self._ssl is None:
            self._ssl = ssl.create_default_context()  # once per drainer: building one costs ~0.1 s of CPU
        conn = KeepAlive(self._ssl)
        try:
            await self._drain_with(org, sid, stop, conn)
        finally:
            await conn.close()

    async def _drain_with(self, org: str, sid: str, stop: asyncio.Event, conn: KeepAlive) -> None:
        loop = asyncio.get_running_loop()
        next_admit = 0.0
        while not stop.is_set():
            try:
                batch = await store.pending(self.pool, org, sid, self.batch)
                if not batch:
                    wait = next_admit - loop.time()
                    if wait > 0:
                        await _sleep(stop, wait)
                        continue
                    self.admissions += 1
                    admitted = await store.admit(self.pool, org, sid, ADMIT_BATCH)
                    # Under a steady stream, admitting whatever trickled in since the last send would cost a
                    # transaction per event or two: after a partial admission, events gather for a poll interval
                    # (the latency a subscriber sees, at most poll_s); a full one means more is waiting now.
                    next_admit = loop.time() + (0.0 if admitted >= ADMIT_BATCH else self.poll_s)
                    continue
                if not batch[0]["enabled"]:
                    return
                delay = (batch[0]["next_at"] - datetime.now(UTC)).total_seconds()
                if delay > 0:  # the head waits for its retry; everything behind it waits too (order)
                    await _sleep(stop, min(delay, self.poll_s * 4))
                    continue
                await self._send_batch(org, sid, batch, stop, conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("webhook %s: store unavailable (%s); retrying", sid, type(exc).__name__)
                await _sleep(stop, 1.0)

    async def _send_batch(self, org: str, sid: str, batch: list[dict[str, Any]], stop: asyncio.Event,
                          conn: KeepAlive) -> None:
        """Send in order until one fails; successes are recorded together (a crash before that re-sends them:
        at least once, receivers de-duplicate by event id), a failure at once."""
        first = batch[0]
        secret = open_secret(self.cipher, sid, bytes(first["secret_enc"]), str(first["key_id"]))
        done_ids: list[int] = []
        done_status: list[int] = []
        # One address check (resolution included) per batch: every send of the batch goes to the checked address.
        try:
            target: Target | None = await self.guard.check(str(first["url"]))
        except AddressRefused as exc:
            await self._failed(org, sid, first, int(first["attempts"]) + 1,
                               SendOutcome(False, error_type=ERR_ADDRESS_REFUSED, error=str(exc)))
            return
        try:
            for row in batch:
                if stop.is_set():
                    return
                attempt = int(row["attempts"]) + 1
                if row["logged_id"] is None:
                    await store.record_failure(self.pool, org, int(row["delivery_id"]), f"{ERR_EVENT_EXPIRED}:"
                                               " the event left the log (retention) before it was sent", None, None)
                    continue
                data = row["data"] if isinstance(row["data"], dict) else {}
                body = event_body(event_id=int(row["event_id"]), event_type=str(row["type"]),
                                  occurred_at=row["occurred_at"], org_id=org, subject=str(row["subject"]), data=data,
                                  subscription=sid, sequence=int(row["seq"]), attempt=attempt,
                                  redelivery=row["replay_of"] is not None, links=self.links)
                outcome = await post_signed(conn, self.guard, str(row["url"]), secret, body, headers={
                    H_EVENT: str(row["type"]), H_EVENT_ID: str(row["event_id"]), H_SUBSCRIPTION: sid,
                    H_SEQUENCE: str(row["seq"])}, target=target)
                if outcome.ok:
                    done_ids.append(int(row["delivery_id"]))
                    done_status.append(outcome.status or 200)
                    self.sent += 1
                    continue
                await self._failed(org, sid, row, attempt, outcome)
                return
        finally:
            if done_ids:
                await store.record_delivered_many(self.pool, org, done_ids, done_status)

    async def _failed(self, org: str, sid: str, row: dict[str, Any], attempt: int, outcome: SendOutcome) -> None:
        retry_at = None
        if outcome.retryable and attempt < int(row["max_attempts"]):
            pause = webhook_backoff_s(attempt, float(row["initial_interval_s"]), float(row["maximum_interval_s"]))
            if outcome.retry_after_s is not None:
                pause = min(max(pause, outcome.retry_after_s), WEBHOOK_RETRY_MAXIMUM_S)
            retry_at = datetime.now(UTC) + timedelta(seconds=pause)
        else:
            log.warning("webhook %s: event %s dead-lettered after %d attempt(s): %s %s", sid, row["event_id"],
                        attempt, outcome.error_type, outcome.status or "")
        await store.record_failure(self.pool, org, int(row["delivery_id"]), f"{outcome.error_type}: {outcome.error}",
                                   outcome.status, retry_at)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)



def drainer_for(settings: Settings, pool: asyncpg.Pool) -> WebhookDrainer:
    """The drainer a worker process runs, from its settings."""
    return WebhookDrainer(pool, settings.cipher("store"), Guard(settings.webhook_allow_networks),
                          EventLinks(settings.public_url, settings.temporal_ui_url, settings.temporal_namespace),
                          poll_s=settings.webhook_poll_seconds,
                          retention=timedelta(days=settings.event_retention_days),
                          prune_every_s=settings.event_prune_seconds)
