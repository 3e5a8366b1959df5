"""The shared contract: task queues, workflow ids, signal/query names, search attributes, I/O dataclasses.

Side-effect free: imported by workflows (sandboxed), activities, workers and the API alike.
New dataclass fields get defaults so old histories still replay.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

DEFAULT_TASK_QUEUE = "lifeline"

# Search attribute keys (registered by the dev stack and by the production setup).
SA_CHANNEL = "LifelineChannel"
SA_DESTINATION = "LifelineDestination"
SA_MESSAGE_TYPE = "LifelineMessageType"
SA_STATUS = "LifelineStatus"
SA_CASE_KIND = "LifelineCaseKind"

# Queries / signals.
QUERY_STATUS = "status"
QUERY_STATE = "state"
QUERY_PROGRESS = "progress"
SIGNAL_EVIDENCE = "evidence"
SIGNAL_APPROVE = "approve"
SIGNAL_REJECT = "reject"

# Error types raised by activities; the retry policies name them as non-retryable.
ERR_PERMANENT_REJECT = "PermanentReject"  # AR/CR from an MLLP peer, 4xx from FHIR / webhook
ERR_MESSAGE_NOT_FOUND = "MessageNotFound"
ERR_RENDER_FAILED = "RenderFailed"  # the message cannot be rendered for the destination (FHIR mapping)
ERR_DESTINATION_UNKNOWN = "DestinationUnknown"
ERR_DELIVERY_FAILED = "DeliveryFailed"  # the workflow's own terminal failure (dead-lettered)
NON_RETRYABLE_SEND_ERRORS = [ERR_PERMANENT_REJECT, ERR_MESSAGE_NOT_FOUND, ERR_RENDER_FAILED,
                             ERR_DESTINATION_UNKNOWN]


def delivery_workflow_id(message_id: str, destination: str) -> str:
    return f"delivery:{message_id}:{destination}"


def replay_delivery_workflow_id(message_id: str, destination: str, replay: int) -> str:
    return f"delivery:{message_id}:{destination}:replay-{replay}"


def case_workflow_id(kind: str, subject: str) -> str:
    return f"case:{kind}:{subject}"


def restart_workflow_id(engine: str, channel: str) -> str:
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


@dataclass
class DeliverActivityInput:
    message_id: str
    destination: str
    org_id: str = "default"
    workflow_id: str = ""


@dataclass
class DeliverActivityResult:
    attempts: int
    peer_answer: str = ""
    latency_ms: int = 0


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
    state: str = "delivering"  # delivering | delivered | dead_lettered
    error: str = ""
    attempts: int = 0


@dataclass
class ReplayInput:
    org_id: str
    dead_letter_ids: list[int] = field(default_factory=list)
    requested_by: str = ""


@dataclass
class PrepareReplayInput:
    org_id: str
    dead_letter_ids: list[int]
    replay_workflow_id: str
    requested_by: str = ""


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


# -- healing: remediation cases, engine restarts, flow monitor -----------------------------------------------

CASE_KINDS = (
    "destination_down", "destination_rejecting", "backlog", "lane_blocked", "latency_degraded", "throughput_drop",
    "engine_channel_stopped", "engine_channel_erroring", "engine_queue_growing", "malformed_burst", "manual",
)
SAFETY_SAFE, SAFETY_RISKY, SAFETY_DESTRUCTIVE = "safe", "risky", "destructive"
# Every action a case can take, with its safety class (invariant 6: destructive always waits for a person).
ACTION_SAFETY = {
    "reconnect": SAFETY_SAFE,            # reset the backoff of a destination's waiting deliveries: try now
    "retry_now": SAFETY_SAFE,
    "replay_dead_letters": SAFETY_SAFE,
    "pause_destination": SAFETY_SAFE,
    "resume_destination": SAFETY_SAFE,
    "restart_engine_channel": SAFETY_RISKY,
    "clear_queue": SAFETY_DESTRUCTIVE,
    "skip_blocked_head": SAFETY_DESTRUCTIVE,
    "discard": SAFETY_DESTRUCTIVE,
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


@dataclass
class ApprovalInput:
    approver: str
    note: str = ""
    action: str = ""  # which pending action; empty: the one pending now


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


@dataclass
class RestartState:
    engine: str
    channel: str
    stage: str = "starting"  # stopping | halting | awaiting_approval | clearing | starting | verifying | done | failed
    raw_state: str = ""
    awaiting_approval: bool = False
    error: str = ""
    history: list[str] = field(default_factory=list)
