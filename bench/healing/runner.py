"""Run each fault of the scorecard in each remediation mode and measure: time to detect, diagnosis signature (and
whether right), actions (and whether they needed an approval), time to repair, messages lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from temporalio.client import Client

from bench.healing import faults as f
from bench.stack import Rig
from infra.config import LifelineConfig, validate_config
from infra.db import create_pool
from infra.devstack import free_port
from tests.conftest import make_settings
from tests.delivery.harness import bearer
from tests.healing.e2e import Lifeline, lifeline
from workflows.contract import ACTION_SAFETY, CaseState, case_workflow_id

log = logging.getLogger("bench.healing")
ONCALL = bearer("oncall")
MODES = ("semi-auto", "full-auto", "manual")
CLOSED = ("resolved", "escalated", "rejected")


@dataclass
class Spec:
    name: str
    title: str
    kind: str
    expect: str  # the right diagnosis signature (prefix match)
    safe_fix: bool  # a safe action repairs it (engine restarts are risky: approval in semi-auto)
    scenario: Callable[[Lifeline, f.Run, int, str], Awaitable[None]]
    subject: str = "destination:lab"
    ctx: Callable[[Path], contextlib.AbstractAsyncContextManager[dict[str, Any]]] | None = None
    dest: dict[str, Any] = field(default_factory=dict)
    top: dict[str, Any] = field(default_factory=dict)


# The flow monitor as shipped: the default `monitor.interval` and thresholds (issue 14's targets are "with the default
# monitor interval"); the harness runs FlowMonitorWorkflow at that interval, as the schedule would. Scenario settings
# are the destination (RETRY, timeouts), `remediation.settle` 2 s (the default 60 s is how long an action gets before
# verification in production) and, for the surge, an SLA.
MONITOR: dict[str, Any] = {}

RETRY = {"initial_interval": "300ms", "backoff": 2.0, "maximum_interval": "5s", "maximum_attempts": 200}

SPECS = [
    Spec("destination_down", "destination down (connection refused)", "destination_down", "refused", True,
         f.destination_down),
    Spec("destination_slow", "destination slow (ACK after 5 s)", "latency_degraded", "latency", False,
         f.destination_slow, dest={"mllp": {"ack_timeout": "30s"}}),
    Spec("destination_rejecting", "destination rejecting (AR storm)", "destination_rejecting", "ack_reject", True,
         f.destination_rejecting),
    Spec("mirth_stopped", "Mirth channel stopped", "engine_channel_stopped", "engine:STOPPED", False,
         f.engine_fault, subject="", ctx=lambda tmp: f.mirth_ctx(tmp, "STOPPED")),
    Spec("mirth_stuck_stopping", "Mirth channel stuck STOPPING", "engine_channel_stopped", "engine:STOPPING", False,
         f.engine_fault, subject="", ctx=lambda tmp: f.mirth_ctx(tmp, "STOPPING", stuck=True)),
    Spec("rhapsody_error", "Rhapsody comm point in ERROR", "engine_channel_stopped", "engine:ERROR", False,
         f.engine_fault, subject="", ctx=f.rhapsody_ctx),
    Spec("cloverleaf_down", "Cloverleaf thread down", "engine_channel_stopped", "engine:STOPPED", False,
         f.engine_fault, subject="", ctx=f.cloverleaf_ctx),
    Spec("backlog_surge", "backlog surge (5x normal rate, SLA backlog age 20 s)", "backlog", "backlog", True,
         f.backlog_surge, dest={"ordering": "destination"},
         top={"sla": [{"name": "lab-age", "destination": "lab", "max_backlog_age": "20s", "p95_latency": None,
                       "min_success_rate": None}]}),
    Spec("malformed_burst", "malformed burst (25 unparseable messages)", "malformed_burst", "malformed", False,
         f.malformed_burst, subject="channel:adt-in"),
    Spec("flapping", "flapping destination (down/up every 20 s)", "destination_down", "refused", True, f.flapping),
]


def build_config(spec: Spec, port: int, mode: str, engines: list[dict[str, Any]]) -> LifelineConfig:
    dest: dict[str, Any] = {"name": "lab", "mllp": {"host": "127.0.0.1", "port": port, "ack_timeout": "10s",
                                                    "connect_timeout": "2s"},
                            "on_dead_letter": "block", "retry": RETRY}
    for k, v in spec.dest.items():
        dest[k] = {**dest[k], **v} if isinstance(v, dict) and isinstance(dest.get(k), dict) else v
    if spec.name == "destination_rejecting":
        dest["on_dead_letter"] = "skip"
    return validate_config({
        "channels": [{"name": "adt-in", "mllp": {"port": 2575}, "routes": [{"to": "lab"}]}],
        "destinations": [dest], "engines": engines,
        "remediation": {"mode": mode, "approval_timeout": "5m", "settle": "2s"},
        "monitor": MONITOR, **spec.top,
    }, "scorecard")


def _ts(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None


async def approve_loop(ll: Lifeline, case_id: str, approvals: list[dict[str, str]], stop: asyncio.Event) -> None:
    """The on-call person: approves whatever waits for approval, and the scorecard records that it had to."""
    seen: set[tuple[str, int]] = set()
    while not stop.is_set():
        state = await ll.case(case_id)
        if state is not None and state.stage == "awaiting_approval" and state.pending_action is not None:
            key = (state.pending_action.action, len(state.attempts))
            if key not in seen:
                seen.add(key)
                approvals.append({"action": state.pending_action.action, "safety": state.pending_action.safety})
                await asyncio.sleep(1.0)  # a person reads before approving
                await ll.api.post(f"/api/remediations/{case_id}/approve", headers=ONCALL,
                                  json={"action": state.pending_action.action, "note": "scorecard"})
        await asyncio.sleep(0.3)


async def count_runs(client: Client, case_id: str) -> int:
    n = 0
    with contextlib.suppress(Exception):
        async for _ in client.list_workflows(f"WorkflowId = '{case_id}'"):
            n += 1
    return n


async def run_one(rig: Rig, spec: Spec, mode: str, tmp: Path) -> dict[str, Any]:
    db_url = await rig.new_database()
    pool = await create_pool(db_url, min_size=1, max_size=10)
    store_cipher = make_settings().cipher("store")
    task_queue = f"score-{uuid.uuid4().hex[:8]}"
    port = free_port()
    out: dict[str, Any] = {"fault": spec.name, "title": spec.title, "mode": mode, "expected_kind": spec.kind,
                           "expected_signature": spec.expect, "safe_fix": spec.safe_fix}
    approvals: list[dict[str, str]] = []
    run = f.Run(case_kind=spec.kind, subject=spec.subject, expect_signature=lambda s: s.startswith(spec.expect),
                safe_fix=spec.safe_fix)
    ctx = spec.ctx(tmp) if spec.ctx is not None else contextlib.nullcontext({})
    final: CaseState | None = None
    first_seen: float | None = None
    t0 = time.time()
    try:
        async with ctx as eng:
            engines = eng.get("engines", [])
            subject = spec.subject or f"engine:{engines[0]['name']}:{eng['channel']}"
            case_id = case_workflow_id("default", spec.kind, subject)
            out["case_id"] = case_id
            config = build_config(spec, port, mode, engines)
            out["monitor_interval_s"] = config.monitor.interval.total_seconds()
            async with lifeline(rig.client, pool, db_url, store_cipher, task_queue, config,
                                clear_ids=[case_id]) as ll:
                stop = asyncio.Event()
                t0 = time.time()
                ll.monitor.start()
                approver = asyncio.create_task(approve_loop(ll, case_id, approvals, stop))
                try:
                    try:
                        await asyncio.wait_for(spec.scenario(ll, run, port, case_id), 300)
                    except (TimeoutError, AssertionError) as exc:
                        run.notes.append(f"scenario: {type(exc).__name__}: {str(exc)[:200]}")
                    deadline = time.time() + 120
                    while time.time() < deadline:
                        final = await ll.case(case_id)
                        if final is not None and final.stage in CLOSED:
                            break
                        await asyncio.sleep(0.5)
                    if run.peer is not None and run.acked:
                        deadline = time.time() + 60
                        while time.time() < deadline and not set(run.acked) <= set(run.peer.received):
                            await asyncio.sleep(0.5)
                    out["case_runs"] = await count_runs(rig.client, case_id)
                    out["other_cases"] = sorted({c for r in ll.monitor.results for c in r.cases} - {case_id})
                    first_seen = ll.monitor.first_seen.get(case_id)
                finally:
                    stop.set()
                    await approver
                    if run.peer is not None:
                        await run.peer.stop()
    except AssertionError as exc:  # the e2e harness checks monitor runs did not fail
        run.notes.append(f"harness: {str(exc)[:200]}")
        first_seen = None
    finally:
        await pool.close()
    opened = _ts(final.opened_at) if final is not None else None
    detected = first_seen or opened
    resolved = _ts(final.resolved_at) if final is not None else None
    if final is not None and final.stage == "cooling_down":  # remediated and verified; open through its cool-down
        cooling = [h for h in final.history if " cooling_down" in h]
        resolved = _ts(cooling[0].split(" ", 1)[0]) if cooling else None
    signature = final.diagnosis.signature if final is not None and final.diagnosis is not None else None
    attempts = final.attempts if final is not None else []
    destructive_unapproved = [a for a in attempts if ACTION_SAFETY.get(a.get("action", "")) == "destructive"
                              and a.get("by") == "auto"]
    fixable = max(x for x in (run.fixable_at or t0, detected or t0))
    out.update({
        "detected": detected is not None,
        "detect_s": round(detected - (run.injected_at or t0), 1) if detected else None,
        "injected_after_s": round(run.injected_at - t0, 1) if run.injected_at else 0.0,
        "signature": signature,
        "diagnosis_right": bool(signature and signature.startswith(spec.expect)),
        "stage": final.stage if final is not None else None,
        "recurrences": final.recurrences if final is not None else 0,
        "first_evidence_signature": final.evidence[0].signature if final is not None and final.evidence else None,
        "actions": [{"action": a.get("action"), "outcome": a.get("outcome"), "by": a.get("by"),
                     "detail": (a.get("detail") or "")[:300]} for a in attempts],
        "history": final.history[-40:] if final is not None else [],
        "approvals": approvals,
        "destructive_without_approval": len(destructive_unapproved),
        "repair_s": (round(resolved - (fixable if fixable <= resolved else (detected or t0)), 1)
                     if resolved else None),
        "resolved_after_s": round(resolved - t0, 1) if resolved else None,
        "acked": len(run.acked),
        "lost": len(set(run.acked) - set(run.peer.received)) if run.peer is not None else 0,
        "notes": run.notes,
    })
    if spec.name == "backlog_surge":
        out["breach_s"] = round(run.breach_at - t0, 1) if run.breach_at else None
        out["forecast_lead_s"] = (round(run.breach_at - detected, 1) if run.breach_at and detected else None)
    log.info("%s [%s]: detect %ss, signature %s, stage %s, repair %ss, lost %s", spec.name, mode, out["detect_s"],
             signature, out["stage"], out["repair_s"], out["lost"])
    return out


async def run_scorecard(rig: Rig, modes: tuple[str, ...], only: list[str] | None = None) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="lifeline-score-") as tmp:
        for mode in modes:
            for spec in SPECS:
                if only and spec.name not in only:
                    continue
                d = Path(tmp) / f"{spec.name}-{mode}"
                d.mkdir()
                results.append(await run_one(rig, spec, mode, d))
    return results
