"""The delivery activities: one `deliver` per attempt (load, render, send, record) and `dead_letter`.

The happy path is a single activity per (message, destination): every extra activity or round trip
per message costs throughput on a one-shard Temporal server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
from opentelemetry.trace import SpanKind, Status, StatusCode
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities.breaker import ERR_CIRCUIT_OPEN, new_breakers
from activities.files import FileWriter
from activities.files import attempt_timeout_s as file_attempt_timeout_s
from activities.http import HttpSendError, send_fhir, send_webhook
from activities.mllp import MllpSender, SendError
from activities.pipeline import transform
from infra import tracing
from infra.config import Destination, LifelineConfig
from infra.crypto import Cipher
from infra.live import ConfigSource
from infra.store import deliveries, lanes, org_tx, sending
from interop.errors import InteropError
from interop.message import Message, parse
from interop.transform import TransformError
from workflows.contract import (
    ERR_DESTINATION_UNKNOWN,
    ERR_MESSAGE_NOT_FOUND,
    ERR_PERMANENT_REJECT,
    ERR_RENDER_FAILED,
    ERR_TRANSFORM_FAILED,
    DeadLetterInput,
    DeliverActivityInput,
    DeliverActivityResult,
    DeliveryInput,
    PrepareReplayInput,
    PrepareReplayResult,
    ReplayItem,
    replay_delivery_workflow_id,
)

log = logging.getLogger("lifeline.delivery")

def delivery_input(dest: Destination, message_id: str, org_id: str, channel: str, message_type: str,
                   replay: int = 0) -> DeliveryInput:
    r = dest.retry
    if dest.mllp:
        timeout = dest.mllp.connect_timeout + dest.mllp.ack_timeout
    elif dest.fhir:
        timeout = dest.fhir.timeout
    elif dest.file or dest.sftp:
        timeout = timedelta(seconds=file_attempt_timeout_s(dest))
    else:
        assert dest.webhook is not None
        timeout = dest.webhook.timeout
    return DeliveryInput(
        message_id=message_id, destination=dest.name, org_id=org_id, channel=channel, message_type=message_type,
        replay=replay, initial_interval_s=r.initial_interval.total_seconds(), backoff=r.backoff,
        maximum_interval_s=r.maximum_interval.total_seconds(), maximum_attempts=r.maximum_attempts,
        attempt_timeout_s=timeout.total_seconds() + 10,
    )


def render_er7(message: Message, dest: Destination) -> str:
    """ER7 passthrough, with MSH-5 / MSH-6 rewritten when the destination asks."""
    assert dest.mllp is not None
    rewrites = {5: dest.mllp.rewrite_receiving_application, 6: dest.mllp.rewrite_receiving_facility}
    if not any(v is not None for v in rewrites.values()):
        return message.to_er7()
    fields = list(message.msh.fields)
    while len(fields) <= 6:
        fields.append("")
    for n, value in rewrites.items():
        if value is not None:
            fields[n] = value
    sep = message.separators.field
    header = "MSH" + sep + sep.join(fields[2:])
    return "\r".join([header, *(s.raw for s in message.segments[1:])])


# Starts what may start now that a delivery of (org, destination, lane) finished: the next of its ordered lane, or
# (lane None) the next in its destination's unordered window; True when that was dealt with.
Handoff = Callable[[str, str, str | None], Awaitable[bool]]


class DeliveryActivities:
    """Built once per worker with its clients.

    `handoff`, when given, starts the next delivery as soon as one is recorded delivered — the next message of its
    ordered lane, or the next one its unordered destination's window now has room for — from this process (no
    NOTIFY → dispatcher pass → start hop; the start may be eager); without it, or when it fails, the dispatcher is
    woken.
    """

    def __init__(self, pool: asyncpg.Pool, store_cipher: Cipher, config: LifelineConfig,
                 mllp: MllpSender | None = None, http: httpx.AsyncClient | None = None,
                 source: ConfigSource | None = None, handoff: Handoff | None = None) -> None:
        self.pool = pool
        self.cipher = store_cipher
        self._config = config
        self.source = source  # live configuration; without it the one config given, unversioned
        self.mllp = mllp or MllpSender()
        self.http = http or httpx.AsyncClient()
        self.breakers = new_breakers(pool)
        self.files = FileWriter(pool, store_cipher)
        self.handoff = handoff
        self._handoffs: set[asyncio.Task[None]] = set()
        self._attempts: set[asyncio.Task[DeliverActivityResult]] = set()

    @property
    def config(self) -> LifelineConfig:
        """The current configuration: where destinations are (a fixed address applies to pinned deliveries too)."""
        return self.source.current if self.source is not None else self._config

    async def _pinned(self, org: str, version: int | None) -> LifelineConfig:
        """The configuration the delivery was routed with: its steps, tables and render options."""
        return await self.source.pinned(org, version) if self.source is not None else self._config

    @activity.defn(name="deliver")
    async def deliver(self, inp: DeliverActivityInput) -> DeliverActivityResult:
        """Load, render and send one message to one destination; record the attempt either way."""
        info = activity.info()
        attempt = info.attempt + inp.attempt_offset
        dest = self.config.destination(inp.destination)
        if dest is None:
            raise ApplicationError(f"destination {inp.destination!r} is not configured",
                                   type=ERR_DESTINATION_UNKNOWN, non_retryable=True)
        row = await deliveries.load_for_delivery(self.pool, inp.org_id, inp.message_id, inp.destination)
        if row is None:
            raise ApplicationError(f"message {inp.message_id} has no delivery to {inp.destination}",
                                   type=ERR_MESSAGE_NOT_FOUND, non_retryable=True)
        done = _finished(row, inp, attempt)
        if done is not None:
            return done
        # One send at a time per delivery: a workflow task retried on a starved worker runs the local attempt
        # again while the first may still be sending; this one then waits for that outcome instead of sending.
        lease_s = delivery_input(dest, inp.message_id, inp.org_id, "", "").attempt_timeout_s
        deadline = time.monotonic() + lease_s
        while not await sending.acquire_send_lease(self.pool, inp.org_id, inp.message_id, inp.destination, lease_s):
            if time.monotonic() > deadline:
                raise ApplicationError("another attempt of this delivery is still sending", "in_flight",
                                       type="in_flight")
            await asyncio.sleep(0.2)
            if not info.is_local:
                activity.heartbeat()  # waiting for the other attempt is not a hung send
            row = await deliveries.load_for_delivery(self.pool, inp.org_id, inp.message_id, inp.destination)
            done = _finished(row, inp, attempt)
            if done is not None:
                return done
        # Shielded: a cancelled attempt (its workflow task timed out, the worker shuts down) still finishes the
        # send it started and records the outcome, which a retry then finds, instead of sending the message again.
        task = asyncio.ensure_future(self._attempt(inp, dest, row, attempt, info.is_local))
        self._attempts.add(task)
        task.add_done_callback(self._attempts.discard)
        return await asyncio.shield(task)

    async def _attempt(self, inp: DeliverActivityInput, dest: Destination, row: Any, attempt: int,
                       local: bool) -> DeliverActivityResult:
        body = self.cipher.decrypt(row["body_enc"], row["key_id"], aad=inp.message_id.encode()).decode()
        started = time.monotonic()
        try:
            message = await asyncio.to_thread(parse, body)  # CPU work off the worker's event loop
            pinned = await self._pinned(inp.org_id, row["config_version"])
            channel = pinned.channel(row["channel"])
            if channel is not None and any(r.steps for r in channel.routes if r.to == inp.destination):
                steps = await asyncio.to_thread(transform, pinned, row["channel"], inp.destination, inp.org_id,
                                                message)
                if steps.filtered is not None:
                    reason = f"{steps.filtered_by}: {steps.filtered}"[:1000]
                    await deliveries.record_filtered(self.pool, inp.org_id, inp.message_id, inp.destination, reason)
                    log.info("delivery %s -> %s filtered by %s", inp.message_id, inp.destination, steps.filtered_by)
                    return DeliverActivityResult(attempts=attempt, peer_answer=f"filtered: {reason}"[:200],
                                                 filtered=True)
                message = await asyncio.to_thread(parse, steps.text)
            # Render options (MSH-5/6 rewrite) are part of the pinned version; the address is the current one's.
            pinned_dest = pinned.destination(inp.destination)
            if pinned_dest is not None and pinned_dest.mllp is not None and dest.mllp is not None:
                dest = dest.model_copy(update={"mllp": dest.mllp.model_copy(update={
                    "rewrite_receiving_application": pinned_dest.mllp.rewrite_receiving_application,
                    "rewrite_receiving_facility": pinned_dest.mllp.rewrite_receiving_facility})})
            send = self.breakers.call(dest, lambda: self._traced_send(dest, message, inp, attempt))
            answer = await (send if local else _heartbeating(send))
        except SendError as exc:
            duration = int((time.monotonic() - started) * 1000)
            outcome = "permanent" if exc.permanent else "retryable"
            await deliveries.record_failure(self.pool, inp.org_id, inp.message_id, inp.destination, attempt,
                                            outcome, exc.error_class, exc.text[:1000],
                                            exc.peer_answer[:1000] or None, duration)
            log.info("delivery %s -> %s attempt %d failed: %s", inp.message_id, inp.destination, attempt,
                     exc.error_class)
            if exc.permanent:
                raise ApplicationError(exc.text, exc.error_class, type=ERR_PERMANENT_REJECT,
                                       non_retryable=True) from None
            delay = getattr(exc, "retry_after", None) if isinstance(exc, HttpSendError) else None
            raise ApplicationError(exc.text, exc.error_class, type=exc.error_class,
                                   next_retry_delay=_delay(delay)) from None
        except ApplicationError as exc:
            if exc.type == ERR_CIRCUIT_OPEN:
                # Refused before connecting, so nothing was sent: free the send lease, or the next attempt would wait
                # out this one's whole budget for an outcome that never comes.
                await sending.release_send_lease(self.pool, inp.org_id, inp.message_id, inp.destination)
            raise
        except TransformError as exc:
            await deliveries.record_failure(self.pool, inp.org_id, inp.message_id, inp.destination, attempt,
                                            "permanent", "transform", str(exc)[:1000], None, 0)
            log.info("delivery %s -> %s: %s failed", inp.message_id, inp.destination, exc.where)
            raise ApplicationError(str(exc), exc.where, type=ERR_TRANSFORM_FAILED, non_retryable=True) from None
        except InteropError as exc:
            await deliveries.record_failure(self.pool, inp.org_id, inp.message_id, inp.destination, attempt,
                                            "permanent", "render", str(exc)[:1000], None, 0)
            raise ApplicationError(f"cannot render for {dest.kind}: {exc}", "render", type=ERR_RENDER_FAILED,
                                   non_retryable=True) from None
        duration = int((time.monotonic() - started) * 1000)
        recorded = await deliveries.record_success(self.pool, inp.org_id, inp.message_id, inp.destination, attempt,
                                                   answer[:1000], duration, row["received_at"],
                                                   notify=self.handoff is None)
        if recorded is not None and recorded.waiting and self.handoff is not None:
            # In the background: the successor's start must not lengthen this delivery's own workflow task.
            task = asyncio.create_task(self._hand_off(inp.org_id, inp.destination, recorded.lane))
            self._handoffs.add(task)
            task.add_done_callback(self._handoffs.discard)
        return DeliverActivityResult(attempts=attempt, peer_answer=answer[:200], latency_ms=duration)

    async def _traced_send(self, dest: Destination, message: Message, inp: DeliverActivityInput,
                           attempt: int) -> str:
        """One send as a CLIENT span (ids and types only) ending with the peer's answer."""
        with tracing.tracer().start_as_current_span(f"{dest.kind}.send", kind=SpanKind.CLIENT, attributes={
                "lifeline.message_id": inp.message_id, "lifeline.destination": dest.name,
                "lifeline.destination_kind": dest.kind, "hl7.message_type": message.message_type,
                "lifeline.attempt": attempt}) as span:
            try:
                answer = await self._send(dest, message, inp)
            except SendError as exc:
                span.set_status(Status(StatusCode.ERROR, exc.error_class))
                span.set_attribute("lifeline.error_class", exc.error_class)
                if dest.mllp is not None and _ack_code(exc.peer_answer):
                    span.set_attribute("hl7.ack_code", _ack_code(exc.peer_answer))
                raise
            if dest.mllp is not None:
                span.set_attribute("hl7.ack_code", _ack_code(answer))
            return answer

    async def _hand_off(self, org_id: str, destination: str, lane: str | None) -> None:
        assert self.handoff is not None
        try:
            if await self.handoff(org_id, destination, lane):
                return
        except (OSError, RuntimeError, asyncpg.PostgresError, RPCError) as exc:
            log.warning("hand-off for %s failed (%s); waking the dispatcher", destination, type(exc).__name__)
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            await lanes.wake_dispatcher(self.pool)

    async def _send(self, dest: Destination, message: Message, inp: DeliverActivityInput) -> str:
        if dest.mllp is not None:
            er7 = await asyncio.to_thread(render_er7, message, dest)
            return await self.mllp.send(dest.mllp, er7, message.control_id)
        if dest.fhir is not None:
            from interop.fhir import to_fhir_bundle

            bundle = (await asyncio.to_thread(to_fhir_bundle, message)).bundle
            return await send_fhir(self.http, dest.fhir, bundle)
        if dest.file is not None or dest.sftp is not None:
            return await self.files.send(dest, message.to_er7(), inp.message_id, inp.org_id)
        assert dest.webhook is not None
        payload: dict[str, Any] = {
            "message_id": inp.message_id, "destination": dest.name, "message_type": message.message_type,
            "control_id": message.control_id, "version": message.version, "hl7": message.to_er7(),
        }
        return await send_webhook(self.http, dest.webhook, payload)

    @activity.defn(name="dead_letter")
    async def dead_letter(self, inp: DeadLetterInput) -> None:
        """Park a delivery that cannot succeed, with its full attempt history; wakes its lane."""
        await deliveries.dead_letter(self.pool, inp.org_id, inp.message_id, inp.destination, inp.error_type,
                                     inp.reason)
        log.warning("delivery %s -> %s dead-lettered: %s", inp.message_id, inp.destination, inp.error_type)


    @activity.defn(name="prepare_replay")
    async def prepare_replay(self, inp: PrepareReplayInput) -> PrepareReplayResult:
        """Mark the chosen open dead letters replayed by this workflow and hand back what to re-deliver."""
        async with org_tx(self.pool, inp.org_id) as conn:
            rows = await deliveries.lock_for_replay(conn, inp.org_id, inp.dead_letter_ids, inp.replay_workflow_id)
            items: list[ReplayItem] = []
            for r in rows:
                dest = self.config.destination(r["destination"])
                if dest is None:
                    continue
                fresh = r["status"] == "dead_lettered"
                replay = r["replay_count"] + 1 if fresh else r["replay_count"]
                if fresh:
                    await deliveries.mark_replayed(
                        conn, inp.org_id, r["id"], r["message_id"], r["destination"], inp.replay_workflow_id,
                        inp.requested_by, replay, replay_delivery_workflow_id(r["message_id"], r["destination"],
                                                                              replay),
                        inp.with_current_config, self.source.version(inp.org_id) if self.source else None)
                items.append(ReplayItem(
                    replay_delivery_workflow_id(r["message_id"], r["destination"], replay),
                    delivery_input(dest, r["message_id"], inp.org_id, r["channel"], r["message_type"], replay),
                    r["lane"]))
        return PrepareReplayResult(items)


HEARTBEAT_EVERY_S = 2.0


def _finished(row: Any, inp: DeliverActivityInput, attempt: int) -> DeliverActivityResult | None:
    """The result of a delivery this workflow already finished (recorded, never reported back), else None."""
    if row is None or row["workflow_id"] != inp.workflow_id:
        return None
    if row["status"] == "filtered":
        return DeliverActivityResult(attempts=attempt, peer_answer=f"filtered: {row['filter_reason'] or ''}"[:200],
                                     filtered=True)
    if row["status"] == "delivered":
        # A retry of an attempt that was recorded delivered but never reported back (the worker died in between,
        # or its workflow task timed out): sending again would repeat the message after its lane has moved on.
        log.info("delivery %s -> %s already recorded delivered; not sending again", inp.message_id, inp.destination)
        return DeliverActivityResult(attempts=attempt, peer_answer=(row["peer_answer"] or "")[:200])
    return None


async def _heartbeating(coro: Coroutine[Any, Any, str]) -> str:
    """Await a send, heartbeating while it takes long, so a dead worker is noticed by the heartbeat timeout
    instead of the whole attempt timeout; a fast send (the usual case) sends no heartbeat at all."""
    task = asyncio.ensure_future(coro)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY_S)
            if done:
                return task.result()
            activity.heartbeat()
    finally:
        if not task.done():
            task.cancel()


def _delay(seconds: float | None) -> Any:
    return timedelta(seconds=seconds) if seconds else None


def _ack_code(answer: str) -> str:
    """The ACK code leading an MLLP answer summary ('AA', 'AE ERR 207 ...'): a type, safe as a span attribute."""
    code = answer.split(" ", 1)[0][:2]
    return code if code in ("AA", "AE", "AR", "CA", "CE", "CR") else ""
