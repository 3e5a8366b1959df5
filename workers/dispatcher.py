"""The dispatcher: a transactional outbox over `messages` that routes and starts one DeliveryWorkflow per
(message, destination), respecting ordered lanes. Wakes on LISTEN/NOTIFY, sweeps on a timer; several
dispatchers at once are safe (row locks with SKIP LOCKED, workflow ids that reject duplicates).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import signal
from dataclasses import dataclass
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from activities.delivery import delivery_input
from activities.pipeline import when_holds
from infra import tracing
from infra.config import Channel, Destination, LifelineConfig
from infra.crypto import Cipher
from infra.db import create_pool
from infra.live import ConfigSource, start_source
from infra.settings import Settings
from infra.store import deliveries, lanes, org_tx, system_tx
from infra.store.messages import OUTBOX_CHANNEL
from interop.errors import InteropError
from interop.message import Message, parse
from workers.reconnect import TRANSIENT, until_up
from workflows.contract import (
    SA_CHANNEL,
    SA_DESTINATION,
    SA_MESSAGE_TYPE,
    SA_ORG,
    SA_STATUS,
    DeliveryInput,
    delivery_workflow_id,
)

log = logging.getLogger("lifeline.dispatcher")

# Starts in flight at once: a batch of 500 started all together times out RPCs on a busy server (eager starts
# each carry a workflow task back), while a few dozen keep the server as busy as it can usefully be.
START_CONCURRENCY = 50
# Starts one hand-off may make: one per finished delivery keeps a window full; a few more refill it after a live
# change that widened it without waiting for the dispatcher.
HANDOFF_STARTS = 4

K_CHANNEL = SearchAttributeKey.for_keyword(SA_CHANNEL)
K_DESTINATION = SearchAttributeKey.for_keyword(SA_DESTINATION)
K_TYPE = SearchAttributeKey.for_keyword(SA_MESSAGE_TYPE)
K_STATUS = SearchAttributeKey.for_keyword(SA_STATUS)
K_ORG = SearchAttributeKey.for_keyword(SA_ORG)
# A pass that fails on these is retried a second later (PostgreSQL or Temporal down or restarting).
PASS_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *TRANSIENT)


def route(channel: Channel, message_type: str, sending_app: str, sending_facility: str,
          message: Message | None) -> list[str]:
    """Destinations a message goes to under the channel's rules (each destination once, in rule order)."""
    out: list[str] = []
    for r in channel.routes:
        if r.to not in out and when_holds(r.when, message_type, sending_app, sending_facility, message):
            out.append(r.to)
    return out


LANE_KEY_LABEL = b"lifeline/lane/v1"


def lane_of(dest: Destination, message: Message | None, key: bytes = b"") -> str | None:
    """None: unordered; '' the whole destination is one lane; else a keyed hash of the key value (PID-3.1 ...).

    Lanes are only compared for equality, so the stored value is HMAC-SHA256(key, value) (128 bits, hex): an MRN
    never lands in `deliveries.lane` where viewers and reports read it.
    """
    if dest.ordering == "none":
        return None
    path = dest.lane_key_path
    if path is None:
        return ""
    value = message.get(path) if message is not None else ""
    if not value:
        return ""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


async def start_delivery(client: Client, task_queue: str, inp: DeliveryInput, workflow_id: str, *,
                         eager: bool = False) -> bool:
    """Start one DeliveryWorkflow; True also when it was already started (a double dispatch).

    eager: ask the server to hand the first workflow task straight back to a worker of this process (one that
    polls `task_queue` with the same client), saving the task queue round trip; the server falls back to the
    queue when that worker has no free slot.
    """
    try:
        await client.start_workflow(
            "DeliveryWorkflow", inp, id=workflow_id, task_queue=task_queue, request_eager_start=eager,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=TypedSearchAttributes([
                SearchAttributePair(K_CHANNEL, inp.channel), SearchAttributePair(K_DESTINATION, inp.destination),
                SearchAttributePair(K_TYPE, inp.message_type), SearchAttributePair(K_STATUS, "delivering"),
                SearchAttributePair(K_ORG, inp.org_id)]),
            static_summary=f"{inp.message_type or 'message'} {inp.channel} → {inp.destination}",
        )
    except WorkflowAlreadyStartedError:
        return True
    return True


@dataclass
class Dispatcher:
    pool: asyncpg.Pool
    client: Client
    config: LifelineConfig
    cipher: Cipher
    task_queue: str
    batch: int = 500
    lane_key: bytes = b""  # empty: derived from the store key (Settings.lane_hmac_key gives the configured one)
    source: ConfigSource | None = None  # live configuration: route with its newest version, record the number

    def __post_init__(self) -> None:
        if not self.lane_key:
            self.lane_key = self.cipher.derive_key(LANE_KEY_LABEL)
    eager: bool = False  # request_eager_start: only when a worker on `client` polls `task_queue` in this process
    local_first: bool = True  # DeliveryInput.local_first (False measures the regular-activity shape)
    # Deliveries to ordered destinations start here when set (a worker must poll it); "": on task_queue.
    ordered_task_queue: str = ""

    async def tick(self) -> tuple[int, int]:
        """Route what is new, then start what may start; returns (routed, started)."""
        routed = 0
        while True:
            n = await self.route_batch()
            routed += n
            if n < self.batch:
                break
        started = 0
        while True:
            n = await self.start_ready()
            started += n
            if n < self.batch:
                break
        return routed, started

    async def route_batch(self) -> int:
        if self.source is not None:
            self.config = self.source.current
        versions = self.source.versions if self.source is not None else {}
        async with system_tx(self.pool, "dispatch") as conn:
            if not await deliveries.lock_routing(conn):
                return 0  # another dispatcher routes now (and routes these too)
            rows = await deliveries.claim_undispatched(conn, self.batch)
            if not rows:
                return 0
            d_msg: list[str] = []
            d_dest: list[str] = []
            d_org: list[str] = []
            d_seq: list[int] = []
            d_lane: list[str | None] = []
            d_wf: list[str] = []
            d_ver: list[int | None] = []
            routed_ids: list[str] = []
            routed_versions: list[int | None] = []
            unrouted_ids: list[str] = []
            for row in rows:
                channel = self.config.channel(row["channel"])
                message = self._parse(row) if channel is not None and self._needs_body(channel) else None
                dests = route(channel, row["message_type"], row["sending_app"], row["sending_facility"],
                              message) if channel is not None else []
                if not dests:
                    unrouted_ids.append(row["id"])
                    continue
                routed_ids.append(row["id"])
                routed_versions.append(versions.get(row["org_id"]))
                for name in dests:
                    dest = self.config.destination(name)
                    if dest is None:
                        continue
                    d_msg.append(row["id"])
                    d_dest.append(name)
                    d_org.append(row["org_id"])
                    d_seq.append(row["seq"])
                    d_lane.append(lane_of(dest, message, self.lane_key))
                    d_wf.append(delivery_workflow_id(row["id"], name))
                    d_ver.append(versions.get(row["org_id"]))
            if d_msg:
                await deliveries.insert_deliveries(conn, d_msg, d_dest, d_org, d_seq, d_lane, d_wf, d_ver)
            if routed_ids:
                await deliveries.mark_routed(conn, routed_ids, routed_versions)
            if unrouted_ids:
                await deliveries.mark_dispatched(conn, unrouted_ids, "unrouted")
                log.info("%d message(s) matched no route", len(unrouted_ids))
        return len(rows)

    def _needs_body(self, channel: Channel) -> bool:
        if any(r.when.fields for r in channel.routes):
            return True
        for r in channel.routes:
            dest = self.config.destination(r.to)
            if dest is not None and dest.lane_key_path:
                return True
        return False

    def _parse(self, row: Any) -> Message | None:
        try:
            body = self.cipher.decrypt(row["body_enc"], row["key_id"], aad=row["id"].encode()).decode()
            return parse(body)
        except (InteropError, ValueError):
            return None

    async def start_ready(self) -> int:
        blocking = [d.name for d in self.config.destinations if d.ordered and d.on_dead_letter == "block"]
        # Every configured destination: an ordered one may still hold unordered deliveries routed before it was.
        windows = [(d.org, d.name, d.max_in_flight) for d in self.config.destinations]
        async with system_tx(self.pool, "dispatch") as conn:
            rows = await deliveries.claim_ready(conn, self.batch, blocking, windows)
            if not rows:
                return 0
            gate = asyncio.Semaphore(START_CONCURRENCY)

            async def start(r: Any) -> bool:
                async with gate:
                    return await self._start(r)

            results = await asyncio.gather(*(start(r) for r in rows), return_exceptions=True)
            done_msg = [r["message_id"] for r, ok in zip(rows, results, strict=True) if ok is True]
            done_dest = [r["destination"] for r, ok in zip(rows, results, strict=True) if ok is True]
            failures = [e for e in results if isinstance(e, BaseException)]
            if failures:
                log.warning("could not start %d delivery workflow(s): %s", len(failures), type(failures[0]).__name__)
            if done_msg:
                await deliveries.mark_started(conn, done_msg, done_dest)
        return len(done_msg) if not failures else 0

    async def _start(self, row: Any) -> bool:
        dest = self.config.destination(row["destination"])
        if dest is None:
            raise LookupError(f"destination {row['destination']} is no longer configured")
        inp = delivery_input(dest, row["message_id"], row["org_id"], row["channel"], row["message_type"])
        inp.local_first = self.local_first
        queue = self.ordered_task_queue if dest.ordered and self.ordered_task_queue else self.task_queue
        with tracing.continued(row["trace_context"]):  # the workflow start joins the accept's trace
            return await start_delivery(self.client, queue, inp, row["workflow_id"], eager=self.eager)

    async def start_next(self, org_id: str, destination: str, lane: str | None) -> bool:
        """The worker's hand-off when a delivery is recorded finished: start the next delivery of its ordered lane,
        or (lane None) of its destination's unordered window, if it may start now; True when nothing more is needed
        from the dispatcher."""
        if self.source is not None:
            self.config = self.source.current
        dest = self.config.destination(destination)
        if dest is None:
            return False
        async with org_tx(self.pool, org_id) as conn:
            if lane is None:
                claimed = await deliveries.claim_unordered(conn, org_id, destination, dest.max_in_flight,
                                                           HANDOFF_STARTS)
                # None: a dispatcher pass holds the window (it counted before this delivery finished: wake it
                # again); as many as asked: the window may have more room than one hand-off fills.
                done = claimed is not None and len(claimed) < HANDOFF_STARTS
                rows = claimed or []
            else:
                row = await lanes.claim_next_in_lane(conn, org_id, destination, lane,
                                                     dest.on_dead_letter == "block")
                # None: nothing to start, or the dispatcher holds the row right now (and starts it).
                done, rows = True, [row] if row is not None else []
            for row in rows:
                await self._start(row)
            if rows:
                await deliveries.mark_started(conn, [r["message_id"] for r in rows],
                                              [r["destination"] for r in rows])
        return done

    async def run(self, database_url: str, sweep_seconds: float, stop: asyncio.Event) -> None:
        wake = asyncio.Event()
        listen_conn: asyncpg.Connection | None = None

        def on_notify(*_: object) -> None:
            wake.set()

        while not stop.is_set():
            try:
                if listen_conn is None or listen_conn.is_closed():
                    listen_conn = await asyncpg.connect(database_url)
                    await listen_conn.add_listener(OUTBOX_CHANNEL, on_notify)
                wake.clear()
                await self.tick()
            except PASS_ERRORS as exc:
                log.warning("dispatch pass failed (%s); retrying", type(exc).__name__)
                if listen_conn is not None:
                    with contextlib.suppress(Exception):
                        await listen_conn.close()
                listen_conn = None
                await asyncio.sleep(1)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(sweep_seconds):
                    waiter = asyncio.ensure_future(wake.wait())
                    stopper = asyncio.ensure_future(stop.wait())
                    try:
                        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                        stopper.cancel()
        if listen_conn is not None:
            await listen_conn.close()


async def run_dispatcher(settings: Settings, config: LifelineConfig) -> None:
    from workers.worker import connect_temporal

    pool = await until_up("PostgreSQL", lambda: create_pool(settings.database_url, min_size=1, max_size=4,
                                                                     role=settings.database_role))
    client = await until_up("Temporal", lambda: connect_temporal(settings))
    cipher = settings.cipher("store")
    stop = asyncio.Event()
    source, following = await start_source(config, pool, settings.database_url, stop)
    dispatcher = Dispatcher(pool, client, source.current, cipher, settings.task_queue,
                            lane_key=settings.lane_hmac_key(), source=source,
                            ordered_task_queue=settings.ordered_task_queue)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("dispatcher started (sweep every %.1fs)", settings.dispatcher_sweep_seconds)
    await dispatcher.run(settings.database_url, settings.dispatcher_sweep_seconds, stop)
    await following
    await pool.close()
