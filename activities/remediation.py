"""Remediation actions, verification measurements, engine control and escalation for the healing workflows."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import asyncpg
import httpx
from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import ResetActivityRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.breaker import hold_all, reset_all
from activities.engines.base import EngineAdapter, EngineNotSupported
from activities.oncall import NotificationPending, Notifier, case_event
from infra.config import LifelineConfig
from infra.store import deliveries, messages
from infra.store.audit import append as audit
from infra.store.deliveries import blocked_lanes, destination_metrics, open_dead_letter_ids, set_destination_paused
from infra.store.files import request_poll, source_measure
from workflows.contract import (
    ERR_NOT_OWNED,
    ActionInput,
    ActionResult,
    AuditInput,
    EngineOpInput,
    EngineStatus,
    MeasureInput,
    Measurement,
    NotifyInput,
    ReplayInput,
    case_kind_subject,
    org_attribute,
    parse_subject,
    replay_workflow_id,
)

log = logging.getLogger("lifeline.remediation")

ERR_ACTION_UNSUPPORTED = "ActionUnsupported"
ERR_ENGINE_UNKNOWN = "EngineUnknown"
RESET_PARALLEL = 20
MAX_RESET = 2000
# Bounds of the waiting actions; both stay under the case's 5-minute action timeout.
RESUME_WAIT_S = 240.0  # hold_breaker: until a delivery goes through
DRAIN_WAIT_S = 240.0  # await_drain: until the backlog falls
DRAIN_POLL_S = 2.0
HOLD_MIN_S = 60.0  # a hold lasts the cool-down, at least this long


def _since(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


class RemediationActivities:
    """Built once per worker: the store, a Temporal client (lazily), the config and the engine adapters."""

    def __init__(self, pool: asyncpg.Pool, client_provider: Callable[[], Awaitable[Client]],
                 config: LifelineConfig, adapters: Mapping[str, EngineAdapter] | None = None,
                 http: httpx.AsyncClient | None = None, task_queue: str = "",
                 notifier: Notifier | None = None) -> None:
        self.pool = pool
        self.client_provider = client_provider
        self.config = config
        self.adapters = adapters or {}
        self.http = http
        self.task_queue = task_queue
        self.notifier = notifier or Notifier(pool, config.oncall, http)

    def _adapter(self, engine: str, org: str) -> EngineAdapter:
        _check_owner(self.config, org, f"engine:{engine}:*")
        adapter = self.adapters.get(engine)
        if adapter is None:
            raise ApplicationError(f"no adapter for engine {engine!r}", type=ERR_ENGINE_UNKNOWN, non_retryable=True)
        return adapter

    # -- actions -------------------------------------------------------------------------------------------------

    @activity.defn(name="run_action")
    async def run_action(self, inp: ActionInput) -> ActionResult:
        """Carry out one remediation action (already approved when it needed approval)."""
        _check_owner(self.config, inp.org_id, inp.subject)
        what, parts = parse_subject(inp.subject)
        dest = inp.params.get("destination") or (parts[0] if what in ("destination", "lane") and parts else "")
        if dest:
            _check_owner(self.config, inp.org_id, f"destination:{dest}")
        if inp.action in ("reconnect", "retry_now") and dest:
            result = await self._retry_now(inp, dest)
        elif inp.action == "replay_dead_letters" and dest:
            result = await self._replay(inp, dest)
        elif inp.action == "hold_breaker" and dest:
            result = await self._hold_breaker(inp, dest)
        elif inp.action == "await_drain" and dest:
            result = await self._await_drain(inp, dest)
        elif inp.action in ("pause_destination", "resume_destination") and dest:
            result = await self._pause(inp, dest, inp.action == "pause_destination")
        elif inp.action == "skip_blocked_head" and dest:
            result = await self._skip_heads(inp, dest)
        elif inp.action == "discard" and dest:
            result = await self._discard(inp, dest)
        elif inp.action in ("repoll_source", "reconnect_source") and what == "channel" and parts:
            await request_poll(self.pool, inp.org_id, parts[0], reconnect=inp.action == "reconnect_source")
            result = ActionResult(inp.action, True, f"asked the poller of channel {parts[0]} to"
                                  f" {'log in again and ' if inp.action == 'reconnect_source' else ''}poll now", 1)
        elif inp.action == "clear_queue":
            engine = inp.params.get("engine") or (parts[0] if what == "engine" and parts else "")
            channel = inp.params.get("channel") or (parts[1] if what == "engine" and len(parts) > 1 else "")
            n = await self._adapter(engine, inp.org_id).clear_queue(channel)
            result = ActionResult(inp.action, True, f"cleared {n} queued message(s) of {engine}/{channel}", n)
        else:
            raise ApplicationError(f"action {inp.action!r} does not apply to {inp.subject!r}",
                                   type=ERR_ACTION_UNSUPPORTED, non_retryable=True)
        await audit(self.pool, org_id=inp.org_id, actor=inp.approver or "lifeline", action=f"case.{inp.action}",
                    subject=inp.case_id, detail={"target": inp.subject, "ok": result.ok, "detail": result.detail,
                                                 "affected": result.affected, "approver": inp.approver})
        return result

    async def _retry_now(self, inp: ActionInput, dest: str) -> ActionResult:
        """ResetActivity on every started delivery to dest: an attempt waiting out its backoff runs now."""
        reset_all(inp.org_id, dest)  # an open breaker probes at once instead of at its probe time
        client = await self.client_provider()
        ids = await deliveries.started_workflow_ids(self.pool, inp.org_id, dest, MAX_RESET)
        sem = asyncio.Semaphore(RESET_PARALLEL)

        async def reset(wid: str) -> bool:
            async with sem:
                try:
                    await client.workflow_service.reset_activity(ResetActivityRequest(
                        namespace=client.namespace, execution=WorkflowExecution(workflow_id=wid), type="deliver",
                        identity=f"lifeline-case:{inp.case_id}"))
                    return True
                except RPCError as exc:
                    # NOT_FOUND / FAILED_PRECONDITION: finished meanwhile, or no such activity pending.
                    if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION,
                                      RPCStatusCode.INVALID_ARGUMENT):
                        return False
                    raise

        done = await asyncio.gather(*(reset(w) for w in ids))
        n = sum(done)
        return ActionResult(inp.action, True, f"reset the backoff of {n} of {len(ids)} started delivery(ies)", n)

    async def _hold_breaker(self, inp: ActionInput, dest: str) -> ActionResult:
        """Hold the breaker through the case's cool-down, then wait (bounded) until a delivery goes through."""
        hold_s = max(HOLD_MIN_S, self.config.remediation.cooldown.total_seconds())
        hold_all(inp.org_id, dest, hold_s)
        since = datetime.now().astimezone()
        waited = await self._wait_for(inp, dest, since, lambda m: m["successes"] > 0 or m["backlog"] == 0,
                                      float(inp.params.get("wait_s") or RESUME_WAIT_S))
        what = f"breaker of {dest} held for {hold_s:g}s (opens at the first connection failure, probes every "
        what += "probe interval)"
        if waited is None:
            return ActionResult(inp.action, False, f"{what}; no delivery went through within "
                                f"{float(inp.params.get('wait_s') or RESUME_WAIT_S):g}s", 0)
        m, secs = waited
        return ActionResult(inp.action, True, f"{what}; delivery resumed after {secs:.0f}s "
                            f"({m['successes']:.0f} delivered, backlog {m['backlog']:.0f})", int(m["successes"]))

    async def _await_drain(self, inp: ActionInput, dest: str) -> ActionResult:
        """Nothing to fix while deliveries succeed: watch the backlog until it falls three looks in a row (or is
        empty), bounded; the case's verification then checks it keeps draining."""
        seen: list[float] = []

        def draining(m: dict[str, float]) -> bool:
            seen.append(m["backlog"])
            return m["backlog"] == 0 or (len(seen) >= 3 and seen[-1] < seen[-2] < seen[-3])

        wait = float(inp.params.get("wait_s") or DRAIN_WAIT_S)
        waited = await self._wait_for(inp, dest, datetime.now().astimezone(), draining, wait, poll=DRAIN_POLL_S)
        if waited is None:
            return ActionResult(inp.action, False, f"backlog of {dest} not draining after {wait:g}s "
                                f"(last looks {', '.join(f'{x:.0f}' for x in seen[-3:])})", 0)
        m, secs = waited
        return ActionResult(inp.action, True, f"backlog of {dest} draining after {secs:.0f}s of watching "
                            f"({' → '.join(f'{x:.0f}' for x in seen[-3:])})", int(m["backlog"]))

    async def _wait_for(self, inp: ActionInput, dest: str, since: datetime,
                        done: Callable[[dict[str, float]], bool], wait_s: float,
                        poll: float = 1.0) -> tuple[dict[str, float], float] | None:
        """Poll the destination's metrics since `since` until done(metrics) or wait_s pass (None)."""
        began = time.monotonic()
        while True:
            m = await destination_metrics(self.pool, inp.org_id, dest, since, False)
            if done(m):
                return m, time.monotonic() - began
            if time.monotonic() - began >= wait_s:
                return None
            if activity.in_activity():
                activity.heartbeat()
            await asyncio.sleep(poll)

    async def _replay(self, inp: ActionInput, dest: str) -> ActionResult:
        ids = await open_dead_letter_ids(self.pool, inp.org_id, destination=dest)
        if not ids:
            return ActionResult(inp.action, True, "no open dead letter", 0)
        client = await self.client_provider()
        wf_id = replay_workflow_id(f"{inp.org_id}:{','.join(map(str, ids))}")
        from temporalio.exceptions import WorkflowAlreadyStartedError

        try:
            await client.start_workflow("ReplayWorkflow", ReplayInput(inp.org_id, ids, inp.approver or inp.case_id),
                                        id=wf_id, task_queue=self.task_queue or activity.info().task_queue,
                                        search_attributes=org_attribute(inp.org_id),
                                        static_summary=f"replay of {len(ids)} dead letter(s) for {inp.case_id}")
        except WorkflowAlreadyStartedError:
            pass  # the same selection is being replayed already
        return ActionResult(inp.action, True, f"replay {wf_id} of {len(ids)} dead letter(s)", len(ids))

    async def _pause(self, inp: ActionInput, dest: str, paused: bool) -> ActionResult:
        await set_destination_paused(self.pool, inp.org_id, dest, paused, inp.approver or f"case {inp.case_id}",
                                     inp.case_id)
        return ActionResult(inp.action, True, f"{dest} {'paused' if paused else 'resumed'}", 1)

    async def _skip_heads(self, inp: ActionInput, dest: str) -> ActionResult:
        """Mark each blocked lane's dead-lettered head skipped (its dead letter discarded) so the lane flows."""
        heads = await blocked_lanes(self.pool, inp.org_id, [dest])
        if not heads:
            return ActionResult(inp.action, True, "no blocked lane", 0)
        ids = [h["head_message_id"] for h in heads]
        await deliveries.skip_heads(self.pool, inp.org_id, dest, ids, inp.approver or inp.case_id)
        return ActionResult(inp.action, True, f"skipped {len(ids)} blocked lane head(s)", len(ids))

    async def _discard(self, inp: ActionInput, dest: str) -> ActionResult:
        n = await deliveries.discard_open(self.pool, inp.org_id, dest, inp.approver or inp.case_id)
        return ActionResult(inp.action, True, f"discarded {n} open dead letter(s)", int(n))

    # -- verification ------------------------------------------------------------------------------------------

    @activity.defn(name="measure")
    async def measure(self, inp: MeasureInput) -> Measurement:
        """What verification compares: backlog and failures since `since` for a destination, engine channel state."""
        what, parts = parse_subject(inp.subject)
        now = datetime.now().astimezone()
        since = _since(inp.since) or now
        if what == "engine" and len(parts) == 2:
            st = await self.engine_status(EngineOpInput(parts[0], parts[1], "status", inp.org_id))
            return Measurement(now.isoformat(), {"queued": st.queued, "received": st.received, "sent": st.sent,
                                                 "errors": st.errors}, st.state)
        if what == "channel" and parts:
            row: Any = await messages.channel_counts_since(self.pool, inp.org_id, parts[0], since)
            values = {"accepted": row["accepted"], "rejected": row["rejected"]}
            values.update(await source_measure(self.pool, inp.org_id, parts[0], since))
            return Measurement(now.isoformat(), values)
        if what in ("destination", "lane") and parts:
            dest = self.config.destination(parts[0])
            blocking = dest is not None and dest.ordered and dest.on_dead_letter == "block"
            return Measurement(now.isoformat(),
                               await destination_metrics(self.pool, inp.org_id, parts[0], since, blocking))
        return Measurement(now.isoformat(), {})

    # -- engines -------------------------------------------------------------------------------------------------

    @activity.defn(name="engine_status")
    async def engine_status(self, inp: EngineOpInput) -> EngineStatus:
        adapter = self._adapter(inp.engine, inp.org_id)
        st = await adapter.channel_status(inp.channel)
        return EngineStatus(st.state, st.raw_state, st.queued, st.received, st.sent, st.errors,
                            sorted(adapter.capabilities))

    @activity.defn(name="engine_control")
    async def engine_control(self, inp: EngineOpInput) -> int:
        """start | stop | halt | pause | resume | clear_queue on one channel; returns messages cleared (else 0)."""
        adapter = self._adapter(inp.engine, inp.org_id)
        try:
            if inp.op == "clear_queue":
                return await adapter.clear_queue(inp.channel)
            op = {"start": adapter.start, "stop": adapter.stop, "halt": adapter.halt, "pause": adapter.pause,
                  "resume": adapter.resume}.get(inp.op)
            if op is None:
                raise ApplicationError(f"unknown engine operation {inp.op!r}", type=ERR_ACTION_UNSUPPORTED,
                                       non_retryable=True)
            await op(inp.channel)
        except EngineNotSupported as exc:
            raise ApplicationError(str(exc), type=ERR_ACTION_UNSUPPORTED, non_retryable=True) from None
        log.info("engine %s channel %s: %s", inp.engine, inp.channel, inp.op)
        return 0

    @activity.defn(name="workflow_running")
    async def workflow_running(self, workflow_id: str) -> bool:
        """Whether a workflow with this id runs now (a restart started by someone else, for example)."""
        client = await self.client_provider()
        try:
            desc = await client.get_workflow_handle(workflow_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return desc.status == WorkflowExecutionStatus.RUNNING

    # -- escalation and audit ---------------------------------------------------------------------------------

    @activity.defn(name="notify")
    async def notify(self, inp: NotifyInput) -> bool:
        """Page / mail / chat the on-call channels (recorded, retried until sent), POST the escalation to the notify
        URL (if any) and audit it; True when someone was notified. A resolved case only resolves its open page."""
        info = activity.info()
        kind, subject = case_kind_subject(inp.case_id, inp.org_id)
        event = case_event(self.notifier.links, org_id=inp.org_id, case_id=inp.case_id,
                           run_id=info.workflow_run_id or "", stage=inp.stage, kind=kind, subject=subject,
                           reason=inp.summary if inp.stage == "escalated" else "")
        ids = await self.notifier.notify(event)
        if ids and await self.notifier.pending(ids):
            raise NotificationPending(f"on-call notification of {inp.case_id} not sent yet; retrying")
        if inp.stage == "resolved":
            return bool(ids)
        sent = bool(ids)
        if inp.url:
            payload = {"case_id": inp.case_id, "org_id": inp.org_id, "stage": inp.stage, "summary": inp.summary}
            http = self.http or httpx.AsyncClient()
            try:
                resp = await http.post(inp.url, json=payload, timeout=10.0)
                resp.raise_for_status()
                sent = True
            finally:
                if self.http is None:
                    await http.aclose()
        await audit(self.pool, org_id=inp.org_id, actor="lifeline", action=f"case.{inp.stage}", subject=inp.case_id,
                    detail={"summary": inp.summary, "notified": sent, "oncall_notifications": len(ids)})
        return sent

    @activity.defn(name="audit_event")
    async def audit_event(self, inp: AuditInput) -> None:
        await audit(self.pool, org_id=inp.org_id, actor=inp.actor, action=inp.action, subject=inp.subject,
                    detail=dict(inp.detail))


def _check_owner(config: LifelineConfig, org: str, subject: str) -> None:
    """Refuse (non-retryable) to act for one org on a destination, channel or engine configured for another."""
    if config.foreign(org, subject):
        log.warning("refused: org %s acting on %s of another org", org, subject)
        raise ApplicationError(f"{subject!r} does not belong to org {org!r}", type=ERR_NOT_OWNED, non_retryable=True)
