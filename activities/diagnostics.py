"""Diagnosis of a remediation case: classify the root cause from the store and the engines, rank the actions.

Evidence lines carry counts, error classes and codes only — never error texts, which may echo message content.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

import asyncpg
from temporalio import activity

from activities.engines.base import EngineAdapter, EngineError
from infra.config import LifelineConfig
from infra.store import cases
from infra.store import diagnostics as store
from infra.store.audit import append as audit
from workflows.contract import (
    ACTION_SAFETY,
    CaseState,
    DiagnoseInput,
    Diagnosis,
    ProposedAction,
    RecordCaseInput,
    RecordResolutionInput,
    parse_subject,
)

log = logging.getLogger("lifeline.diagnostics")

# error_class (as delivery_attempts records it) -> signature base; the code/status is appended where known.
_CONNECTION = ("refused", "reset", "timeout", "tls", "dns", "connection")
_PROTOCOL = ("bad_ack", "ack_mismatch")

# Signature base -> (root cause, default action order). The order breaks ties in the learned ranking.
CATALOGUE: dict[str, tuple[str, tuple[str, ...]]] = {
    "refused": ("the destination refuses connections: its service is down or the port is closed",
                ("reconnect", "hold_breaker", "replay_dead_letters", "pause_destination")),
    "reset": ("the destination resets connections: overloaded, restarting, or a firewall/idle-timeout in between",
              ("reconnect", "hold_breaker", "replay_dead_letters", "pause_destination")),
    "timeout": ("the destination does not answer in time: slow, hung, or unreachable (packets dropped)",
                ("retry_now", "hold_breaker", "pause_destination", "replay_dead_letters")),
    "tls": ("the TLS handshake fails: certificate expired, untrusted, or protocol mismatch — needs a person",
            ("pause_destination", "reconnect")),
    "dns": ("the destination host name does not resolve: DNS or configuration change",
            ("pause_destination", "reconnect")),
    "connection": ("the connection to the destination fails at the transport level",
                   ("reconnect", "hold_breaker", "pause_destination")),
    "protocol": ("the peer's answers are not valid ACKs for our messages: protocol or configuration mismatch",
                 ("pause_destination", "retry_now")),
    "ack_error": ("the peer answers AE (application error): a transient fault on its side",
                  ("retry_now", "replay_dead_letters", "pause_destination")),
    "ack_reject": ("the peer rejects the content (AR/CR): the messages do not meet its rules",
                   ("replay_dead_letters", "skip_blocked_head", "pause_destination")),
    "http_4xx": ("the server rejects the request (4xx): resource invalid for its profile, or auth",
                 ("replay_dead_letters", "skip_blocked_head", "pause_destination")),
    "http_5xx": ("the server fails internally (5xx)", ("retry_now", "pause_destination", "replay_dead_letters")),
    "http_throttled": ("the server throttles us (429/503 with Retry-After)", ("pause_destination", "retry_now")),
    "render": ("messages cannot be rendered for this destination (mapping/schema error in Lifeline's output)",
               ("skip_blocked_head", "replay_dead_letters")),
    "schema": ("messages fail the destination's schema", ("skip_blocked_head", "replay_dead_letters")),
    "paused": ("the destination is paused: nothing new is delivered to it", ("resume_destination",)),
    # Nothing fails, deliveries only wait: a surge (or short capacity). Retrying or replaying changes nothing for
    # deliveries that are not failing; watching the backlog drain (bounded) and closing is what a person would do.
    "backlog": ("deliveries wait without failing: a surge of arrivals, or dispatch/worker capacity is short",
                ("await_drain", "retry_now", "replay_dead_letters")),
    "blocked": ("an ordered lane is blocked by a dead-lettered head message",
                ("replay_dead_letters", "skip_blocked_head")),
    "latency": ("deliveries are slow", ("retry_now",)),
    # A slow peer is not a down one: every send succeeds, only late. Nothing Lifeline can do makes it answer faster
    # (retrying would only add load), and messages are not lost meanwhile: a person who owns the peer must look.
    "latency:send": ("the destination answers slowly (it ACKs, but seconds late): slow, not down; deliveries "
                     "continue and nothing is lost, but its owner must look at the peer or the network to it", ()),
    "engine": ("the engine channel is not processing", ("restart_engine_channel",)),
    "engine:queue_growing": ("the engine channel's queue keeps growing: its destination is stuck or slow",
                             ("restart_engine_channel", "clear_queue")),
    "engine:errors": ("the engine channel keeps erroring", ("restart_engine_channel",)),
    "malformed": ("a sender emits malformed messages: fix at the sender (Lifeline rejects and stores them)", ()),
    "throughput": ("a channel's inbound flow dropped: the sender or its connection stopped", ()),
    "file_source": ("the file or SFTP source cannot be polled (login, host key, connection or directory)",
                    ("reconnect_source", "repoll_source")),
    "file_source:silent": ("the file source stopped producing files: the sender stopped, or writes elsewhere",
                           ("repoll_source",)),
    "file_errors": ("files land in error/: the sender's files hold malformed messages (fix at the sender)",
                    ("repoll_source",)),
    "unknown": ("no known signature matches the evidence", ()),
}
_ENGINE_CAUSES = {
    "STOPPED": "the engine channel is stopped",
    "PAUSED": "the engine channel is paused: its source takes no new messages",
    "ERROR": "the engine channel is in an error state",
    "UNDEPLOYED": "the engine channel is not deployed",
    "STOPPING": "the engine channel is stuck stopping: a connector or the message in hand hangs, and the stop will "
                "not finish by itself",
    "STARTING": "the engine channel is stuck starting: a connector cannot initialise (port in use, peer or "
                "database unreachable)",
    "PAUSING": "the engine channel is stuck pausing: its source does not finish the message in hand",
}
_STUCK = ("stopping", "starting", "pausing")
_ERR = re.compile(r"\bERR (\d+(?:,\d+)*)")
_CODE = re.compile(r"\b(1\d\d|2\d\d)\b")
_HTTP_STATUS = re.compile(r"HTTP (\d{3})")
_ISSUE = re.compile(r"(fatal|error|warning|information)/([a-z-]+)")


def signature_base(signature: str) -> str:
    """The catalogue key of a signature: ack_reject:207 -> ack_reject, engine:STOPPED -> engine."""
    if signature in CATALOGUE:
        return signature
    head = signature.split(":", 1)[0]
    return head if head in CATALOGUE else "unknown"


def default_actions(signature: str) -> tuple[str, ...]:
    return CATALOGUE[signature_base(signature)][1]


def rank_actions(signature: str, stats: Mapping[str, tuple[int, int]], params: dict[str, str],
                 exclude: set[str] | None = None) -> list[ProposedAction]:
    """Defaults plus any action that worked before for this signature, by smoothed success rate, then default order.

    score = (successes + 1) / (successes + failures + 2): an untried action scores 0.5, one success 0.67.
    """
    exclude = exclude or set()
    defaults = list(default_actions(signature))
    learned = [a for a, (s, _) in stats.items() if s > 0 and a not in defaults and a in ACTION_SAFETY]
    names = [a for a in defaults + sorted(learned) if a not in exclude]

    def score(a: str) -> float:
        s, f = stats.get(a, (0, 0))
        return (s + 1) / (s + f + 2)

    order = {a: i for i, a in enumerate(names)}
    ranked = sorted(names, key=lambda a: (-score(a), order[a]))
    return [ProposedAction(a, ACTION_SAFETY[a], dict(params), round(score(a), 3)) for a in ranked]


def _iso(ts: datetime | None) -> str:
    return ts.isoformat() if ts is not None else ""


def _parse_iso(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


class DiagnosticsActivities:
    """Built once per worker: the store pool, the config, and the engine adapters by engine name."""

    def __init__(self, pool: asyncpg.Pool, config: LifelineConfig,
                 adapters: Mapping[str, EngineAdapter] | None = None, *, window_s: float = 900.0) -> None:
        self.pool = pool
        self.config = config
        self.adapters = adapters or {}
        self.window_s = window_s

    # -- diagnose ------------------------------------------------------------------------------------------------

    @activity.defn(name="diagnose")
    async def diagnose(self, inp: DiagnoseInput) -> Diagnosis:
        """Classify the root cause of a case and propose ranked actions."""
        kind_of_subject, parts = parse_subject(inp.subject)
        if kind_of_subject == "engine" and len(parts) == 2:
            diag, params = await self._engine(inp, parts[0], parts[1])
        elif kind_of_subject in ("destination", "lane") and parts:
            diag, params = await self._destination(inp, parts[0])
        elif kind_of_subject == "channel" and parts and inp.kind.startswith("file_"):
            diag, params = self._from_evidence(inp), {"channel": parts[0]}
        elif kind_of_subject == "channel" and parts:
            diag, params = await self._channel(inp, parts[0])
        else:
            diag, params = self._from_evidence(inp), {}
        exclude: set[str] = set()
        if params.get("paused") == "1":
            exclude.add("pause_destination")
        else:
            exclude.add("resume_destination")
        params.pop("paused", None)
        stats = await self._stats(inp.org_id, diag.signature)
        diag.actions = rank_actions(diag.signature, stats, params, exclude)
        log.info("case %s:%s diagnosed %s (confidence %.2f)", inp.kind, inp.subject, diag.signature, diag.confidence)
        return diag

    async def _stats(self, org_id: str, signature: str) -> dict[str, tuple[int, int]]:
        return await cases.resolution_stats(self.pool, org_id, signature)

    def _from_evidence(self, inp: DiagnoseInput) -> Diagnosis:
        sigs = [e.signature for e in inp.evidence if e.signature]
        sig = sigs[-1] if sigs else "unknown"
        cause = CATALOGUE[signature_base(sig)][0]
        return Diagnosis(sig, cause, 0.3 if sigs else 0.1,
                         [f"{len(inp.evidence)} evidence signal(s); signature from the detector: {sig}"])

    async def _destination(self, inp: DiagnoseInput, dest: str) -> tuple[Diagnosis, dict[str, str]]:
        org, window = inp.org_id, self.window_s
        params = {"destination": dest}
        pic = await store.destination_picture(self.pool, org, dest, window)
        failures, ok, load, dead, paused = pic["failures"], pic["ok"], pic["load"], pic["dead"], pic["paused"]
        params["paused"] = "1" if paused else "0"
        total = sum(r["n"] for r in failures)
        lines: list[str] = []
        if total:
            mix = ", ".join(f"{r['error_class'] or 'unclassified'} {r['n']}" for r in failures[:5])
            lines.append(f"{total} failed attempt(s) to {dest} in the last {window / 60:g} min: {mix}")
        lines.append(f"{ok['n']} successful attempt(s) in the window; last success {_iso(ok['last_at']) or 'never'}")
        lines.append(f"backlog {load['backlog']} ({load['pending']} pending, oldest "
                     f"{float(load['oldest_s'] or 0):.0f}s); {dead} open dead letter(s)")
        onset = ""
        if paused:
            diag = Diagnosis("paused", CATALOGUE["paused"][0], 0.95, lines + [f"{dest} is paused"])
        elif inp.kind == "lane_blocked":
            diag = await self._blocked(inp, dest, lines)
        elif total and (inp.kind != "latency_degraded" or total >= 3):
            top = failures[0]
            sig, cause = self._classify(top["error_class"] or "", list(top["answers"]), lines)
            share = top["n"] / total
            confidence = round(min(0.97, 0.35 + 0.6 * share * min(1.0, total / 5)), 2)
            diag = Diagnosis(sig, cause, confidence, lines)
            onset = _iso(await store.failure_onset(self.pool, org, dest))
        elif inp.kind == "latency_degraded":
            diag = await self._latency(inp, dest, lines)
        elif load["backlog"]:
            diag = Diagnosis("backlog", CATALOGUE["backlog"][0], 0.5, lines)
        elif dead:
            diag = Diagnosis("blocked" if inp.kind == "lane_blocked" else "unknown",
                             CATALOGUE["unknown"][0], 0.2, lines)
        else:
            diag = self._from_evidence(inp)
            diag.evidence = lines + diag.evidence
        diag.onset_at = onset
        return diag, params

    def _classify(self, error_class: str, answers: list[str], lines: list[str]) -> tuple[str, str]:
        """Signature and root cause of the dominant error class, with the peer's codes where it gave some."""
        if error_class in _CONNECTION:
            return error_class, CATALOGUE[error_class][0]
        if error_class in _PROTOCOL:
            return "protocol", CATALOGUE["protocol"][0]
        if error_class in ("ack_error", "ack_reject"):
            codes = sorted({c for a in answers for m in _ERR.findall(a) for c in m.split(",")}
                           or {m for a in answers for m in _CODE.findall(a)})
            ack_codes = sorted({a.split(" ", 1)[0] for a in answers if a})
            if ack_codes:
                lines.append(f"peer answered {'/'.join(ack_codes)}" + (f" with ERR code(s) {', '.join(codes)}"
                                                                         if codes else " without an ERR code"))
            sig = f"{error_class}:{codes[0]}" if codes else error_class
            return sig, CATALOGUE[error_class][0] + (f" (ERR {codes[0]})" if codes else "")
        if error_class in ("http_4xx", "http_5xx", "http_throttled"):
            statuses = sorted({m for a in answers for m in _HTTP_STATUS.findall(a)})
            issues = sorted({f"{s}/{c}" for a in answers for s, c in _ISSUE.findall(a)})
            if statuses:
                lines.append(f"server answered HTTP {', '.join(statuses)}"
                             + (f"; OperationOutcome issue(s) {', '.join(issues[:5])}" if issues else ""))
            sig = f"{error_class}:{statuses[0]}" if statuses and error_class != "http_throttled" else error_class
            cause = CATALOGUE[error_class][0] + (f" — OperationOutcome {issues[0]}" if issues else "")
            return sig, cause
        if error_class in ("render", "schema"):
            return error_class, CATALOGUE[error_class][0]
        return "unknown", CATALOGUE["unknown"][0] + f" (error class {error_class or 'none'})"

    async def _blocked(self, inp: DiagnoseInput, dest: str, lines: list[str]) -> Diagnosis:
        head = await store.oldest_blocked_head(self.pool, inp.org_id, dest)
        if head is None:
            return Diagnosis("blocked", CATALOGUE["blocked"][0], 0.3, lines + ["no blocked lane head found now"])
        error_type = str(head["error_type"])
        cls = error_type.split(":", 1)[1] if ":" in error_type else error_type
        lines.append(f"{head['heads']} lane head(s) dead-lettered; the oldest failed with {error_type}")
        return Diagnosis(f"blocked:{cls}", CATALOGUE["blocked"][0] + f" ({cls})", 0.9, lines)

    async def _latency(self, inp: DiagnoseInput, dest: str, lines: list[str]) -> Diagnosis:
        row: Any = await store.latency_stages(self.pool, inp.org_id, dest, self.window_s)
        if not row or not row["n"]:
            return Diagnosis("latency:unknown", CATALOGUE["latency"][0], 0.2, lines + ["no delivery finished"])
        stages = {"dispatch": float(row["dispatch_ms"] or 0), "queue": float(row["queue_ms"] or 0),
                  "send": float(row["send_ms"] or 0) + float(row["retry_ms"] or 0)}
        total = sum(stages.values()) or 1.0
        worst = max(stages, key=lambda k: stages[k])
        slow = [e for e in inp.evidence if e.signature == "latency:send"]
        if slow:
            m = slow[-1].metrics
            normal = f"normal {m.get('normal_send_ms', 0):.0f} ms" if m.get("normal_send_ms") else "no normal yet"
            lines.append(f"send p95 {m.get('p95_send_ms', 0):.0f} ms over {m.get('samples', 0):.0f} successful "
                         f"send(s), limit {m.get('send_limit_ms', 0):.0f} ms ({normal}); "
                         f"{m.get('failures', 0):.0f} failed attempt(s)")
        lines.append(f"{row['n']} deliveries: accept→dispatch {stages['dispatch']:.0f} ms, dispatch→first attempt "
                     f"{stages['queue']:.0f} ms, sending (incl. retries) {stages['send']:.0f} ms on average")
        cause = {"dispatch": "routing lags behind accept: the dispatcher is slow or down",
                 "queue": "deliveries wait to start: ordered lanes or worker capacity",
                 "send": "the destination answers slowly"}[worst]
        return Diagnosis(f"latency:{worst}", cause, round(0.4 + 0.5 * stages[worst] / total, 2), lines,
                         bottleneck=worst)

    async def _channel(self, inp: DiagnoseInput, channel: str) -> tuple[Diagnosis, dict[str, str]]:
        row: Any = await store.channel_intake(self.pool, inp.org_id, channel, self.window_s)
        lines = [f"{row['total']} message(s) on channel {channel} in the last {self.window_s / 60:g} min,"
                 f" {row['rejected']} rejected"]
        if inp.kind == "malformed_burst" or row["rejected"]:
            codes = await store.top_finding_codes(self.pool, inp.org_id, channel, self.window_s)
            top = codes[0]["code"] if codes else ""
            if codes:
                lines.append("top finding codes: " + ", ".join(f"{c['code']} ×{c['n']}" for c in codes))
            share = (row["rejected"] / row["total"]) if row["total"] else 0.0
            return Diagnosis(f"malformed:{top}" if top else "malformed", CATALOGUE["malformed"][0],
                             round(0.4 + 0.5 * share, 2), lines), {"channel": channel}
        lines.append(f"last message {_iso(row['last_at']) or 'none in the window'}")
        return Diagnosis("throughput:silent" if not row["total"] else "throughput:low",
                         CATALOGUE["throughput"][0], 0.5, lines), {"channel": channel}

    async def _engine(self, inp: DiagnoseInput, engine: str, channel: str) -> tuple[Diagnosis, dict[str, str]]:
        params = {"engine": engine, "channel": channel}
        configured = self.config.engine(engine)
        # Another org's engine is not read for this case (its state would leak across the wall).
        adapter = self.adapters.get(engine) if configured is None or configured.org == inp.org_id else None
        lines: list[str] = []
        state = ""
        if adapter is not None:
            try:
                st = await adapter.channel_status(channel)
                lines.append(f"{engine} channel {st.name or channel}: state {st.raw_state or st.state}, queued "
                             f"{st.queued}, received {st.received}, sent {st.sent}, errors {st.errors}")
                if st.state in ("stopped", "paused", "error", "undeployed"):
                    state = st.state.upper()
                elif st.state in _STUCK and any(e.signature == f"engine:{st.state.upper()}" for e in inp.evidence):
                    # The monitor saw it in this transitional state past the stuck limit, and it still is.
                    state = st.state.upper()
                    if "halt" in adapter.capabilities:
                        # Mirth's documented way out of a hung transition: halt (a forced stop), then start.
                        params["halt"] = "1"
                        lines.append(f"{engine} can halt: the restart halts the channel instead of asking it to "
                                     "stop again, then starts it")
                    else:
                        lines.append(f"{engine} has no forced stop: the restart asks it to stop, then start")
            except EngineError as exc:
                lines.append(f"{engine} did not answer: {type(exc).__name__}")
        metrics = {k: v for e in inp.evidence for k, v in e.metrics.items()}
        if state in _ENGINE_CAUSES:
            return Diagnosis(f"engine:{state}", _ENGINE_CAUSES[state], 0.95, lines), params
        if inp.kind == "engine_queue_growing":
            lines.append(f"queue depth {metrics.get('queued', 0):.0f} and growing across snapshots")
            return Diagnosis("engine:queue_growing", CATALOGUE["engine:queue_growing"][0], 0.8, lines), params
        if inp.kind == "engine_channel_erroring":
            return Diagnosis("engine:errors", CATALOGUE["engine:errors"][0], 0.8, lines), params
        diag = self._from_evidence(inp)
        diag.evidence = lines + diag.evidence
        return diag, params

    # -- the learning loop and the case record --------------------------------------------------------------------

    @activity.defn(name="record_resolution")
    async def record_resolution(self, inp: RecordResolutionInput) -> None:
        """Count one verified success or failure of an action for a signature."""
        await cases.record_resolution(self.pool, inp.org_id, inp.signature, inp.action, inp.success)

    @activity.defn(name="record_case")
    async def record_case(self, inp: RecordCaseInput) -> None:
        """Upsert the case row for this run; optionally append an audit row."""
        s = inp.state
        info = activity.info() if activity.in_activity() else None
        run_id = info.workflow_run_id if info is not None and info.workflow_run_id else ""
        await upsert_case(self.pool, s, run_id)
        if inp.audit_action:
            detail: dict[str, Any] = {"stage": s.stage, **inp.detail}
            await audit(self.pool, org_id=s.org_id or "default", actor=inp.actor, action=inp.audit_action,
                        subject=s.case_id, detail=detail)


async def upsert_case(pool: asyncpg.Pool, s: CaseState, run_id: str) -> None:
    opened = _parse_iso(s.opened_at) or datetime.now().astimezone()
    first = _parse_iso(s.evidence[0].observed_at) if s.evidence else None
    diag = asdict(s.diagnosis) if s.diagnosis is not None else None
    action = s.pending_action.action if s.pending_action else (s.attempts[-1].get("action") if s.attempts else None)
    await cases.upsert_case(pool, s.org_id or "default", (
        s.case_id, run_id, s.org_id or "default", s.kind, s.subject, s.stage, s.mode,
        s.diagnosis.signature if s.diagnosis else "", opened, first,
        _parse_iso(s.diagnosis.onset_at) if s.diagnosis else None, _parse_iso(s.resolved_at),
        int(s.mttd_s * 1000) if s.mttd_s is not None else None,
        int(s.mttr_s * 1000) if s.mttr_s is not None else None,
        action, s.approver or None, s.evidence_count, diag, s.attempts))
