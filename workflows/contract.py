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
