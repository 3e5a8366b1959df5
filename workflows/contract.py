"""The shared contract: task queues, workflow ids, signal/query names, search attributes, I/O dataclasses.

Side-effect free: imported by workflows (sandboxed), activities, workers and the API alike.
New dataclass fields get defaults so old histories still replay.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

DEFAULT_TASK_QUEUE = "lifeline"


def ordered_task_queue(task_queue: str) -> str:
    """The queue of deliveries to ordered destinations: lanes hand off one message at a time, so they get their own
    pollers and slots instead of queueing each hand-off behind a saturated shared queue of unordered work."""
    return f"{task_queue}-ordered"

# Search attribute keys (registered by the dev stack and by the production setup).
SA_CHANNEL = "LifelineChannel"
SA_DESTINATION = "LifelineDestination"
SA_MESSAGE_TYPE = "LifelineMessageType"
SA_STATUS = "LifelineStatus"
SA_CASE_KIND = "LifelineCaseKind"
SA_ORG = "LifelineOrg"

# Queries / signals.
QUERY_STATUS = "status"
QUERY_STATE = "state"
QUERY_PROGRESS = "progress"
# A query is answered by a worker: with none polling it waits, so callers give it up after this (seconds).
QUERY_TIMEOUT_S = 10.0
SIGNAL_EVIDENCE = "evidence"
SIGNAL_APPROVE = "approve"
SIGNAL_REJECT = "reject"

# Error types raised by activities; the retry policies name them as non-retryable.
ERR_PERMANENT_REJECT = "PermanentReject"  # AR/CR from an MLLP peer, 4xx from FHIR / webhook
ERR_MESSAGE_NOT_FOUND = "MessageNotFound"
ERR_RENDER_FAILED = "RenderFailed"  # the message cannot be rendered for the destination (FHIR mapping)
ERR_DESTINATION_UNKNOWN = "DestinationUnknown"
ERR_TRANSFORM_FAILED = "TransformFailed"  # a route's transform step or plugin failed (the detail names the step)
ERR_DELIVERY_FAILED = "DeliveryFailed"  # the workflow's own terminal failure (dead-lettered)
ERR_NOT_OWNED = "SubjectNotOwned"  # a destination, channel or engine of another org (or none): never retried
NON_RETRYABLE_SEND_ERRORS = [ERR_PERMANENT_REJECT, ERR_MESSAGE_NOT_FOUND, ERR_RENDER_FAILED,
                             ERR_DESTINATION_UNKNOWN]


# workflow.patched ids (a changed code path keeps older histories replaying).
PATCH_LOCAL_FIRST = "delivery-local-first-attempt"  # DeliveryWorkflow: attempt 1 as a local activity


def delivery_workflow_id(message_id: str, destination: str) -> str:
    return f"delivery:{message_id}:{destination}"


def replay_delivery_workflow_id(message_id: str, destination: str, replay: int) -> str:
    return f"delivery:{message_id}:{destination}:replay-{replay}"


# workflow.patched() ids: a resolved case calls `notify` (stage resolved) to resolve its on-call page.
PATCH_ONCALL_RESOLVE = "oncall-resolve"
# Approvals and rejections carry a Lifeline token that an activity verifies before the workflow acts on them.
PATCH_VERIFY_APPROVAL = "verify-approval"
ACTIVITY_VERIFY_APPROVAL = "verify_approval"
APPROVER_ROLE = "oncall"
# A remediated case stays open through CaseInput.cooldown_s and handles a recurrence (flapping) itself.
PATCH_CASE_COOLDOWN = "case-cooldown"
# An escalated case held open counts evidence that arrives at any moment, also while it records the escalation.
PATCH_HOLD_OPEN_EVERY_RECURRENCE = "hold-open-every-recurrence"
# A recurrence while the case holds the destination's breaker renews the hold instead of spending an attempt.
PATCH_FLAP_HOLD = "case-flapping-hold"
# During a cool-down, evidence counts as a recurrence only if the verification measured since the fix fails.
PATCH_RECURRENCE_SINCE_FIX = "case-recurrence-since-fix"
# hold_breaker is verified by the delivery that went through while the hold stood (no further settle window, in
# which a flapping peer's next outage would fail it).
PATCH_HOLD_VERIFIED_BY_DELIVERY = "hold-verified-by-delivery"


def org_attribute(org: str, *more: SearchAttributePair[str]) -> TypedSearchAttributes:
    """The `LifelineOrg` search attribute (plus others) for a workflow started for an org."""
    return TypedSearchAttributes([SearchAttributePair(SearchAttributeKey.for_keyword(SA_ORG), org), *more])


def case_workflow_id(org: str, kind: str, subject: str) -> str:
    """One case per (org, kind, subject): the org in the id keeps two tenants' cases apart."""
    return f"case:{org}:{kind}:{subject}"


def case_kind_subject(case_id: str, org: str) -> tuple[str, str]:
    """(kind, subject) of a case id: case:<org>:<kind>:<subject>, or the older case:<kind>:<subject>."""
    parts = case_id.split(":", 3)
    if len(parts) == 4 and parts[1] == org:
        return parts[2], parts[3]
    old = case_id.split(":", 2) + ["", ""]
    return old[1], old[2]


def restart_workflow_id(org: str, engine: str, channel: str) -> str:
    return f"restart:{org}:{engine}:{channel}"


def legacy_restart_workflow_id(engine: str, channel: str) -> str:
    """The id restarts had before ids carried the org (kept for histories recorded then)."""
    return f"restart:{engine}:{channel}"


def replay_workflow_id(selection: str) -> str:
    return f"replay:{hashlib.sha256(selection.encode()).hexdigest()[:16]}"


@dataclass
class DeliveryInput:
    """Ids only: no message body and no patient data crosses into workflow history."""

    message_id: str
    destination: str
    org_id: str = "default"
    channel: str = ""
    message_type: str = ""
    replay: int = 0  # 0 for the first delivery; n for the n-th replay of a dead letter
    # The destination's retry policy and attempt timeout, resolved from config by the dispatcher.
    initial_interval_s: float = 1.0
    backoff: float = 2.0
    maximum_interval_s: float = 300.0
    maximum_attempts: int = 20
    attempt_timeout_s: float = 60.0
    local_first: bool = True  # attempt 1 as a local activity (the fast path); False: every attempt a regular one


@dataclass
class DeliverActivityInput:
    message_id: str
    destination: str
    org_id: str = "default"
    workflow_id: str = ""
    attempt_offset: int = 0  # attempts made before this activity (the local first attempt): numbering goes on


@dataclass
class DeliverActivityResult:
    attempts: int
    peer_answer: str = ""
    latency_ms: int = 0
    filtered: bool = False  # a route filter stopped it: recorded as 'filtered', nothing sent


@dataclass
class DeadLetterInput:
    message_id: str
    destination: str
    org_id: str
    error_type: str
    reason: str


@dataclass
class DeliveryStatus:
    message_id: str
    destination: str
    state: str = "delivering"  # delivering | delivered | filtered | dead_lettered
    error: str = ""
    attempts: int = 0


@dataclass
class ReplayInput:
    org_id: str
    dead_letter_ids: list[int] = field(default_factory=list)
    requested_by: str = ""
    with_current_config: bool = False  # render with today's configuration instead of the pinned version


@dataclass
class PrepareReplayInput:
    org_id: str
    dead_letter_ids: list[int]
    replay_workflow_id: str
    requested_by: str = ""
    with_current_config: bool = False


@dataclass
class ReplayItem:
    workflow_id: str
    delivery: DeliveryInput
    lane: str | None = None  # None: unordered, may run beside anything


@dataclass
class PrepareReplayResult:
    items: list[ReplayItem] = field(default_factory=list)


@dataclass
class ReplayProgress:
    total: int = 0
    started: int = 0
    delivered: int = 0
    failed: int = 0
    workflow_ids: list[str] = field(default_factory=list)
    org_id: str = ""  # whose replay it is: the API answers 404 to other orgs


# -- healing: remediation cases, engine restarts, flow monitor -----------------------------------------------

CASE_KINDS = (
    "destination_down", "destination_rejecting", "backlog", "lane_blocked", "latency_degraded", "throughput_drop",
    "engine_channel_stopped", "engine_channel_erroring", "engine_queue_growing", "malformed_burst", "manual",
    "file_source_failing", "file_source_silent", "file_errors_growing",
)
SAFETY_SAFE, SAFETY_RISKY, SAFETY_DESTRUCTIVE = "safe", "risky", "destructive"
# Every action a case can take, with its safety class (invariant 6: destructive always waits for a person).
ACTION_SAFETY = {
    "reconnect": SAFETY_SAFE,            # reset the backoff of a destination's waiting deliveries: try now
    "retry_now": SAFETY_SAFE,
    "replay_dead_letters": SAFETY_SAFE,
    "pause_destination": SAFETY_SAFE,
    # Hold the destination's circuit breaker (on, opening at the first connection failure, fixed probe interval)
    # through the case's cool-down and wait until a delivery goes through: a down or flapping peer stops being
    # hammered by retries, and deliveries resume within one probe interval of each up-window. Nothing is dropped.
    "hold_breaker": SAFETY_SAFE,
    # Watch a backlog with nothing failing (a surge) until it drains, bounded; changes nothing.
    "await_drain": SAFETY_SAFE,
    "resume_destination": SAFETY_SAFE,
    "restart_engine_channel": SAFETY_RISKY,
    "clear_queue": SAFETY_DESTRUCTIVE,
    "skip_blocked_head": SAFETY_DESTRUCTIVE,
    "discard": SAFETY_DESTRUCTIVE,
    "repoll_source": SAFETY_SAFE,        # a file/SFTP source polls now
    "reconnect_source": SAFETY_SAFE,     # an SFTP source drops its connection and logs in again, then polls
}
SIGNAL_APPROVE_CLEAR = SIGNAL_APPROVE  # EngineRestartWorkflow reuses `approve` for queue clearing
MONITOR_WORKFLOW_ID = "monitor:flow"
MONITOR_SCHEDULE_ID = "lifeline-flow-monitor"


def case_subject(*parts: str) -> str:
    """Subjects are colon-joined readable parts: destination:lab, engine:mirth1:<channel id>, channel:adt-in."""
    return ":".join(parts)


@dataclass
class Evidence:
    """One detector finding; no PHI (ids, counts, error classes only)."""

    kind: str
    subject: str
    observed_at: str  # ISO 8601, from the snapshot activity (workflows must not read the clock themselves)
    summary: str
    metrics: dict[str, float] = field(default_factory=dict)
    signature: str = ""  # error signature when known: refused, timeout, ack_reject:207, http_4xx:422, engine:STOPPED


@dataclass
class CaseInput:
    kind: str
    subject: str
    org_id: str = "default"
    mode: str = "semi-auto"  # manual | semi-auto | full-auto
    approval_timeout_s: float = 3600.0
    opened_by: str = "monitor"
    max_attempts: int = 3
    notify_url: str = ""  # escalation webhook
    settle_s: float = 60.0  # how long an action gets to show its effect before verification
    cooldown_s: float = 0.0  # stay open this long after a verified remediation; a recurrence is flapping


@dataclass
class ApprovalInput:
    approver: str
    note: str = ""
    action: str = ""  # which pending action; empty: the one pending now
    # A Lifeline JWT with role oncall (`lifeline token --role oncall`; the API adds its own for REST approvals).
    # The verified subject, not `approver`, is who approved.
    token: str = ""


@dataclass
class VerifyApprovalInput:
    token: str
    org_id: str
    workflow_id: str
    claimed: str  # the approver the signal names
    decision: str  # approve | reject
    action: str = ""


@dataclass
class VerifyApprovalResult:
    ok: bool
    subject: str = ""  # the token's subject when ok
    reason: str = ""  # why it was refused (no token, bad signature, expired, revoked, role, org)


@dataclass
class ProposedAction:
    action: str
    safety: str
    params: dict[str, str] = field(default_factory=dict)
    score: float = 0.0  # past success rate for this signature (the learning loop)


@dataclass
class Diagnosis:
    signature: str
    root_cause: str
    confidence: float
    evidence: list[str] = field(default_factory=list)
    bottleneck: str = ""  # for latency symptoms: accept | dispatch | queue | send
    actions: list[ProposedAction] = field(default_factory=list)
    onset_at: str = ""  # ISO 8601: when the symptom began per the store (first failure of the streak); MTTD base


@dataclass
class CaseState:
    case_id: str
    kind: str
    subject: str
    # detected | diagnosing | awaiting_approval | remediating | verifying | resolved | escalated | rejected
    stage: str = "detected"
    mode: str = "semi-auto"
    diagnosis: Diagnosis | None = None
    pending_action: ProposedAction | None = None
    evidence: list[Evidence] = field(default_factory=list)
    attempts: list[dict[str, str]] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    opened_at: str = ""
    resolved_at: str = ""
    mttd_s: float | None = None
    mttr_s: float | None = None
    approver: str = ""
    org_id: str = ""
    evidence_count: int = 0  # every evidence signal received (the list keeps only the most recent)
    recurrences: int = 0  # times the problem came back during a cool-down after a verified remediation


@dataclass
class RestartInput:
    engine: str
    channel: str
    org_id: str = "default"
    clear_queue: bool = False  # destructive: waits for an `approve` signal whatever the mode
    requested_by: str = ""
    approval_timeout_s: float = 3600.0
    stop_timeout_s: float = 60.0
    start_timeout_s: float = 60.0
    # The channel is stuck in a transition (diagnosis engine:STOPPING ...): halt it at once instead of asking it to
    # stop and waiting stop_timeout_s first (engines that cannot halt take the normal stop path).
    force_halt: bool = False


@dataclass
class RestartState:
    engine: str
    channel: str
    stage: str = "starting"  # stopping | halting | awaiting_approval | clearing | starting | verifying | done | failed
    raw_state: str = ""
    awaiting_approval: bool = False
    error: str = ""
    history: list[str] = field(default_factory=list)


# -- flow monitor: metrics snapshot, thresholds, detector input ------------------------------------------------

CONNECTION_ERROR_CLASSES = ("refused", "reset", "timeout", "tls", "dns", "connection")
REJECT_ERROR_CLASSES = ("ack_reject", "http_4xx")
QUEUE_HISTORY_MAX = 20  # engine queue depths kept per channel (engine_queue_growing looks at the last K)


@dataclass
class MonitorThresholds:
    """Detector thresholds, resolved from lifeline.yaml `monitor:` (see infra/config.py Monitor)."""

    disabled: list[str] = field(default_factory=list)  # detector kinds switched off
    down_consecutive_failures: int = 3
    rejecting_rate: float = 0.2  # rejects / (successes + rejects) in the window
    rejecting_min_rejects: int = 3
    backlog_depth: int = 1000
    backlog_oldest_s: float = 600.0
    latency_p95_ms: float = 10000.0
    latency_min_samples: int = 10
    # A slow peer (ACK after seconds) against the destination's normal: the send p95 over the window passes
    # max(send_floor_ms, send_factor x its learned normal), or send_p95_ms while no normal is learned yet, or the
    # destination's SLA p95 latency (send_limits) if that is lower.
    send_p95_ms: float = 3000.0
    send_factor: float = 5.0
    send_floor_ms: float = 1000.0
    send_min_samples: int = 3
    send_normal_min_samples: int = 20
    send_limits: dict[str, float] = field(default_factory=dict)
    throughput_factor: float = 0.5  # fire when the rate is below baseline * factor
    throughput_min_samples: int = 40
    throughput_min_baseline_per_min: float = 1.0
    engine_stopped_states: list[str] = field(default_factory=lambda: ["stopped", "paused", "error"])
    # A channel held in a transitional state (Mirth STOPPING/STARTING/PAUSING, Rhapsody STOPPING/STARTING/
    # INITIALIZING) longer than this is stuck: it processes nothing and will not finish the transition itself.
    engine_stuck_states: list[str] = field(default_factory=lambda: ["stopping", "starting", "pausing"])
    engine_stuck_s: float = 10.0
    engine_error_delta: int = 10
    engine_queue_snapshots: int = 4  # K: the queue grew across each of the last K snapshots
    engine_queue_min_growth: int = 1  # and by at least this much in total
    malformed_rejected: int = 20
    # Backlog forecast: open the backlog case when the backlog age is forecast to pass its limit within the
    # horizon (0 disables); the limit is the destination's SLA max_backlog_age, else backlog_oldest_s.
    forecast_horizon_s: float = 300.0
    forecast_min_backlog: int = 10
    backlog_age_limits: dict[str, float] = field(default_factory=dict)
    file_failures: int = 3  # failed polls in a row of a file/SFTP source
    file_silent_factor: float = 3.0  # silent for factor x the usual gap between files...
    file_silent_min_s: float = 3600.0  # ...and at least this long
    file_silent_min_samples: int = 5  # gaps needed before "usual" means something
    file_errors_added: int = 1  # files moved to error/ in the window


@dataclass
class FlowMonitorInput:
    """What the schedule hands each run (built from config by workers/monitor.py monitor_input)."""

    window_s: float = 300.0
    thresholds: MonitorThresholds = field(default_factory=MonitorThresholds)
    mode: str = "semi-auto"
    approval_timeout_s: float = 3600.0
    notify_url: str = ""
    case_task_queue: str = ""  # empty: the monitor's own task queue
    evaluate_sla: bool = False  # also run the `evaluate_sla` activity (set when lifeline.yaml has sla: entries)
    settle_s: float = 60.0  # CaseInput.settle_s of the cases it opens (remediation.settle)
    cooldown_s: float = 0.0  # CaseInput.cooldown_s of the cases it opens (remediation.cooldown)


@dataclass
class SnapshotInput:
    window_s: float = 300.0


@dataclass
class DestinationMetrics:
    name: str = ""
    org_id: str = "default"
    backlog: int = 0  # deliveries pending or started
    oldest_pending_age_s: float = 0.0
    successes: int = 0  # delivered attempts in the window
    failures: int = 0  # failed attempts (retryable or permanent) in the window
    rejects: int = 0  # AR/CR from an MLLP peer, 4xx from HTTP, in the window
    p95_latency_ms: float = 0.0  # accept -> delivered, deliveries finished in the window
    p95_send_ms: float = 0.0  # the successful send attempt alone
    latency_samples: int = 0
    consecutive_connection_failures: int = 0
    lanes_blocked: int = 0  # lanes whose head is dead-lettered under the `block` policy
    blocked_waiting: int = 0  # deliveries waiting behind blocked heads
    last_error_class: str = ""
    reject_signature: str = ""  # ack_reject, http_4xx:422
    # Flow rates over the last rate_span_s seconds, for the backlog forecast (rate_span_s 0: not measured).
    arrived_per_s: float = 0.0  # deliveries routed to it
    drained_per_s: float = 0.0  # deliveries it delivered
    rate_span_s: float = 0.0
    # Its normal send (ACK) time: EWMA of the window's send p95 over healthy snapshots (samples 0: not learned).
    normal_send_ms: float = 0.0
    normal_send_samples: int = 0


@dataclass
class SenderRejects:
    sender: str = ""  # sending application/facility (system names, not PHI)
    rejected: int = 0
    top_code: str = ""  # most common error finding code (table 0357)


@dataclass
class ChannelMetrics:
    name: str = ""
    org_id: str = "default"
    accepted: int = 0
    rejected: int = 0
    accepted_per_min: float = 0.0
    senders: list[SenderRejects] = field(default_factory=list)


@dataclass
class Baseline:
    """EWMA of a channel's accepted_per_min for one hour bucket, as it was before this snapshot was folded in."""

    channel: str = ""
    bucket: str = ""  # how:<0-167> (hour of week) or hod:<0-23> (hour of day), in the monitor's timezone
    mean: float = 0.0
    samples: int = 0


@dataclass
class EngineChannelMetrics:
    engine: str = ""
    channel_id: str = ""
    name: str = ""
    org_id: str = "default"
    state: str = "unknown"
    raw_state: str = ""
    queued: int = 0
    errors: int = 0
    errors_delta: int = 0  # since the previous snapshot
    queued_history: list[int] = field(default_factory=list)  # oldest first, this snapshot last
    error: str = ""  # why the state is unknown (adapter error text)
    state_age_s: float = 0.0  # how long the monitor has seen it in this state (0: first seen in it now)


@dataclass
class FileSourceMetrics:
    """A file or SFTP source as its poller last recorded it (names, counts and error classes only)."""

    channel: str = ""
    org_id: str = "default"
    kind: str = "file"  # file | sftp
    location: str = ""  # directory or sftp://user@host:port/dir
    consecutive_failures: int = 0
    last_error_class: str = ""  # auth | hostkey | refused | timeout | dns | connection | sftp | io
    last_poll_age_s: float = -1.0
    silent_s: float = -1.0  # since the last new file (-1: none yet)
    usual_gap_s: float = 0.0  # median gap between new files over the last two weeks
    gap_samples: int = 0
    error_files: int = 0  # files in error/ at the last poll
    errors_added: int = 0  # files the poller moved to error/ in the window


@dataclass
class Snapshot:
    observed_at: str = ""  # ISO 8601 (UTC)
    window_s: float = 300.0
    destinations: list[DestinationMetrics] = field(default_factory=list)
    channels: list[ChannelMetrics] = field(default_factory=list)
    engine_channels: list[EngineChannelMetrics] = field(default_factory=list)
    baselines: list[Baseline] = field(default_factory=list)
    file_sources: list[FileSourceMetrics] = field(default_factory=list)


@dataclass
class OpenCaseInput:
    evidence: Evidence
    case: CaseInput
    task_queue: str = ""


@dataclass
class OpenCaseResult:
    workflow_id: str = ""
    run_id: str = ""


@dataclass
class FlowMonitorResult:
    observed_at: str = ""
    findings: int = 0
    cases: list[str] = field(default_factory=list)


# Activity inputs/outputs of the healing activities (diagnostics, remediation, engine control).

@dataclass
class DiagnoseInput:
    kind: str
    subject: str
    org_id: str = "default"
    evidence: list[Evidence] = field(default_factory=list)


@dataclass
class RecordCaseInput:
    state: CaseState
    audit_action: str = ""  # when set, also appends an audit row (actor below)
    actor: str = "lifeline"
    detail: dict[str, str] = field(default_factory=dict)


@dataclass
class RecordResolutionInput:
    org_id: str
    signature: str
    action: str
    success: bool


@dataclass
class ActionInput:
    case_id: str
    org_id: str
    action: str
    subject: str
    params: dict[str, str] = field(default_factory=dict)
    approver: str = ""  # who approved (empty: ran automatically)


@dataclass
class ActionResult:
    action: str
    ok: bool
    detail: str = ""
    affected: int = 0


@dataclass
class MeasureInput:
    kind: str
    subject: str
    org_id: str = "default"
    since: str = ""  # ISO 8601: count failures/successes from here (the end of the remediation)


@dataclass
class Measurement:
    at: str = ""
    values: dict[str, float] = field(default_factory=dict)  # backlog, failures, successes, queued, received ...
    state: str = ""  # engine channel state for engine subjects (normalised), else ""


@dataclass
class NotifyInput:
    case_id: str
    org_id: str
    url: str
    stage: str
    summary: str


@dataclass
class AuditInput:
    org_id: str
    actor: str
    action: str
    subject: str
    detail: dict[str, str] = field(default_factory=dict)


@dataclass
class EngineOpInput:
    engine: str
    channel: str
    op: str = "status"  # status | start | stop | halt | pause | resume | clear_queue
    org_id: str = "default"


@dataclass
class EngineStatus:
    state: str  # normalised State of activities.engines.base
    raw_state: str = ""
    queued: int = 0
    received: int = 0
    sent: int = 0
    errors: int = 0
    capabilities: list[str] = field(default_factory=list)


def parse_subject(subject: str) -> tuple[str, list[str]]:
    """("destination", ["lab"]) for destination:lab; ("engine", ["mirth1", "<channel>"]) for engine:mirth1:<channel>."""
    head, _, rest = subject.partition(":")
    if not rest:
        return head, []
    if head == "engine":
        engine, _, channel = rest.partition(":")
        return head, [engine, channel]
    return head, rest.split(":")


# -- SLA evaluation (activities/sla.py; the flow monitor calls it each run) -----------------------------------

@dataclass
class EvaluateSlaInput:
    org_id: str = ""  # empty: every org with an SLA in lifeline.yaml


@dataclass
class EvaluateSlaResult:
    evaluated: int = 0  # objectives evaluated
    opened: list[str] = field(default_factory=list)  # "<sla>/<objective>" violations opened by this run
    closed: list[str] = field(default_factory=list)
    escalated: list[str] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)  # remediation case workflow ids fed


# -- event log and webhook subscriptions (workers/webhooks.py; docs/webhooks.md) ---------------------------------

# What the event log records (database triggers, migration 0090) and what a subscription may name; a pattern
# 'case.*' names every type with that prefix, '*' every type.
EVENT_TYPES = (
    "message.received", "message.rejected",
    "delivery.delivered", "delivery.dead_lettered", "delivery.filtered", "delivery.skipped",
    "case.opened", "case.awaiting_approval", "case.approved", "case.remediating", "case.verifying",
    "case.resolved", "case.escalated", "case.rejected",
    "sla.violated", "sla.escalated", "sla.restored",
    "config.changed",
)
WEBHOOK_TEST_EVENT = "webhook.test"  # sent by POST /api/webhooks/{id}/test only, never logged
# Event subscriptions are an outbox drained by one drainer per subscription at a time (not a workflow per event:
# per-message events would double the Temporal work of every delivery). Their retry policy, by default:
WEBHOOK_DRAINER = "webhook-drainer"
WEBHOOK_RETRY_INITIAL_S = 1.0
WEBHOOK_RETRY_BACKOFF = 2.0
WEBHOOK_RETRY_MAXIMUM_S = 600.0
WEBHOOK_RETRY_MAXIMUM_ATTEMPTS = 20  # about 2 h of trying before the event is dead-lettered for this subscription
WEBHOOK_TIMEOUT_S = 10.0
# Errors of a webhook send; the first two are not retried (dead letter after this attempt).
ERR_ADDRESS_REFUSED = "AddressRefused"  # the URL resolves to a private/loopback/link-local/metadata address
ERR_WEBHOOK_REJECTED = "WebhookRejected"  # the receiver answered 4xx (other than 408/425/429)
ERR_WEBHOOK_FAILED = "WebhookFailed"  # connection error, timeout or 5xx: retried with backoff
ERR_EVENT_EXPIRED = "EventExpired"  # the event left the log (retention) before it could be sent
NON_RETRYABLE_WEBHOOK_ERRORS = (ERR_ADDRESS_REFUSED, ERR_WEBHOOK_REJECTED, ERR_EVENT_EXPIRED)


def webhook_backoff_s(attempt: int, initial_s: float, maximum_s: float,
                      backoff: float = WEBHOOK_RETRY_BACKOFF) -> float:
    """The pause after failed attempt `attempt` (1-based) of one event to one subscription."""
    return float(min(maximum_s, initial_s * backoff ** max(0, attempt - 1)))
