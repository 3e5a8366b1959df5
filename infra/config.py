"""Channel configuration (lifeline.yaml): models, loading, and errors that name file, key path and reason."""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from interop.errors import PathError
from interop.message import parse_path
from interop.transform.steps import CodeTable, Step, parse_csv_table

EXAMPLE_CONFIG = Path(__file__).with_name("lifeline.example.yaml")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class ConfigError(Exception):
    """The configuration file cannot be used; str() is one line per problem: file: key path: reason."""

    def __init__(self, file: str, problems: list[tuple[str, str]]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(f"{file}: {path or '<top>'}: {reason}" for path, reason in problems))


def parse_duration(value: Any) -> timedelta:
    """'500ms', '1s', '5m', '1h', '2d' or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '1s', '5m' or '1h'")
    try:
        if isinstance(value, int | float):
            return timedelta(seconds=value)
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a duration such as '1s', '5m' or '1h'")
        return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    except OverflowError:
        # timedelta stops at 999999999 days; past it was an OverflowError (an API 500, found by Schemathesis).
        raise ValueError(f"{value!r} is longer than any duration Lifeline can hold") from None


def format_duration(value: timedelta) -> str:
    """The inverse of parse_duration, for the JSON form of the configuration."""
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms" if seconds < 1 else f"{seconds:g}s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, when_used="json")]
Name = Annotated[str, Field(pattern=_NAME)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tls(_Model):
    cert: Path
    key: Path
    client_ca: Path | None = None  # when set, clients must present a certificate signed by it


class MllpIn(_Model):
    host: str = "0.0.0.0"
    port: Port
    # None: not said (refused in production); False (`tls: off`): plaintext on purpose, warned about at start.
    tls: Tls | Literal[False] | None = None
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    idle_timeout: Duration = timedelta(minutes=10)
    max_connections: int = Field(default=2000, ge=1)
    max_connections_per_peer: int = Field(default=1000, ge=1)  # one sender (IP address) cannot take them all
    # All partial frames of this listener together (slow senders trickling large frames cannot exhaust memory).
    max_buffered_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    write_timeout: Duration = timedelta(seconds=30)  # an ACK the peer does not read within this closes the connection


def _hl7_path(value: str) -> str:
    try:
        parse_path(value)
    except PathError as exc:
        raise ValueError(str(exc)) from exc
    return value


Hl7Path = Annotated[str, BeforeValidator(_hl7_path)]


class RouteWhen(_Model):
    message_type: list[str] = Field(default_factory=lambda: ["*"])
    sending_application: list[str] | None = None
    sending_facility: list[str] | None = None
    fields: dict[Hl7Path, str | list[str]] = Field(default_factory=dict)

    @field_validator("message_type", "sending_application", "sending_facility", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class Route(_Model):
    to: Name
    when: RouteWhen = RouteWhen()
    steps: list[Step] = Field(default_factory=list)  # transform steps for this channel -> destination


class _SshAuth(_Model):
    """How Lifeline logs in to an SFTP server: secrets come from the environment or a file, never the config."""

    host: str
    port: Port = 22
    username: str
    password_env: str | None = None  # name of an environment variable holding the password
    password_file: Path | None = None
    private_key_env: str | None = None  # an environment variable holding the private key (PEM/OpenSSH text)
    private_key_file: Path | None = None
    passphrase_env: str | None = None  # for an encrypted private key
    known_hosts: Path | None = None  # default ~/.ssh/known_hosts; host-key checking is on unless told otherwise
    check_host_key: bool = True
    connect_timeout: Duration = timedelta(seconds=15)

    @model_validator(mode="after")
    def _one_secret(self) -> _SshAuth:
        given = [k for k in ("password_env", "password_file", "private_key_env", "private_key_file")
                 if getattr(self, k) is not None]
        if not given:
            raise ValueError("sftp needs one of password_env, password_file, private_key_env or private_key_file")
        return self


class _Polling(_Model):
    """What a file source picks up and when: a file is read only once it is complete."""

    pattern: str = "*.hl7"
    poll_interval: Duration = timedelta(seconds=5)
    min_age: Duration = timedelta(seconds=10)  # unchanged size and mtime for this long (ignored with done_marker)
    done_marker: str | None = None  # e.g. ".done": read X.hl7 only once X.hl7.done exists
    after: Literal["move", "delete"] = "move"
    processed_dir: str | None = None  # default <dir>/processed
    error_dir: str | None = None  # default <dir>/error
    ack: bool = False  # write a batch acknowledgment file (FHS/BHS, one ACK per message) back
    ack_dir: str | None = None  # default <dir>/ack

    @field_validator("done_marker")
    @classmethod
    def _marker(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v):
            raise ValueError("done_marker is a file-name suffix such as '.done'")
        return v


class FileIn(_Polling):
    dir: Path


class SftpIn(_Polling, _SshAuth):
    dir: str = "."


class FileBatching(_Model):
    """Collect messages into one batch file (FHS/BHS envelope); a file is closed at whichever limit comes first."""

    max_messages: int = Field(default=100, ge=1)
    max_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_wait: Duration = timedelta(seconds=60)


class _FileWriting(_Model):
    name_template: str = "{channel}-{control_id}-{ts}.hl7"  # also {destination}, {message_id}, {seq}
    newline: Literal["cr", "lf", "crlf"] = "cr"
    batch: FileBatching | None = None

    @field_validator("name_template")
    @classmethod
    def _template(cls, v: str) -> str:
        import string

        allowed = {"channel", "control_id", "ts", "destination", "message_id", "seq"}
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
        except ValueError as exc:
            raise ValueError(f"not a valid template: {exc}") from None
        unknown = names - allowed
        if unknown:
            raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; use {sorted(allowed)}")
        if "/" in v:
            raise ValueError("a file name, not a path")
        return v


class FileOut(_FileWriting):
    dir: Path


class SftpOut(_FileWriting, _SshAuth):
    dir: str = "."
    timeout: Duration = timedelta(seconds=60)


class Channel(_Model):
    name: Name
    org: Name = "default"
    mllp: MllpIn | None = None
    file: FileIn | None = None
    sftp: SftpIn | None = None
    validation: Literal["tolerant", "strict"] = "tolerant"
    routes: list[Route] = Field(default_factory=list)


class MllpOut(_Model):
    host: str
    port: Port
    ack_timeout: Duration = timedelta(seconds=30)
    connect_timeout: Duration = timedelta(seconds=10)
    tls: bool = False
    ca_file: Path | None = None  # with tls: trust this CA bundle (PEM) instead of the system trust store
    rewrite_receiving_application: str | None = None  # MSH-5
    rewrite_receiving_facility: str | None = None  # MSH-6
    # Keep a connection open for the next message when the peer does; false: one connection per message, closed
    # after its answer (a peer that closes after each answer is detected and gets that without this setting).
    reuse: bool = True

    @model_validator(mode="after")
    def _ca_needs_tls(self) -> MllpOut:
        if self.ca_file is not None and not self.tls:
            raise ValueError("ca_file is only used with tls: true")
        return self


class FhirOut(_Model):
    base_url: Annotated[str, Field(pattern=r"^https?://")]
    bearer_token_env: str | None = None  # name of an environment variable holding the token
    timeout: Duration = timedelta(seconds=30)


class WebhookOut(_Model):
    url: Annotated[str, Field(pattern=r"^https?://")]
    secret: str = Field(min_length=16)
    timeout: Duration = timedelta(seconds=30)


class KeyOrdering(_Model):
    key: Hl7Path


Ordering = Literal["none", "destination"] | KeyOrdering


class Retry(_Model):
    initial_interval: Duration = timedelta(seconds=1)
    backoff: float = Field(default=2.0, ge=1.0)
    maximum_interval: Duration = timedelta(minutes=5)
    maximum_attempts: int = Field(default=20, ge=1)


class CircuitBreaker(_Model):
    """Per destination (activities/breaker.py): open after `failures` connection failures in a row. Opt-in: while
    open, retries are spaced by the probe interval rather than the retry policy, and no attempt is recorded."""

    enabled: bool = False
    failures: int = Field(default=5, ge=1)
    probe_interval: Duration = timedelta(seconds=5)  # open → the first half-open probe; doubles after a failed one
    max_probe_interval: Duration = timedelta(seconds=30)


class Destination(_Model):
    name: Name
    org: Name = "default"
    mllp: MllpOut | None = None
    fhir: FhirOut | None = None
    webhook: WebhookOut | None = None
    file: FileOut | None = None
    sftp: SftpOut | None = None
    ordering: Ordering = "none"
    on_dead_letter: Literal["block", "skip"] = "block"
    # Unordered deliveries of this destination started and not yet finished at once (retries included); the rest
    # wait in the outbox and start as these finish. Ordered destinations run one delivery per lane instead.
    max_in_flight: int = Field(default=64, ge=1, le=10_000)
    retry: Retry = Retry()
    breaker: CircuitBreaker = CircuitBreaker()

    @model_validator(mode="after")
    def _one_kind(self) -> Destination:
        kinds = [k for k in ("mllp", "fhir", "webhook", "file", "sftp") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a destination needs exactly one of mllp, fhir, webhook, file or sftp")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("mllp", "fhir", "webhook", "file", "sftp") if getattr(self, k) is not None)

    @property
    def lane_key_path(self) -> str | None:
        return self.ordering.key if isinstance(self.ordering, KeyOrdering) else None

    @property
    def ordered(self) -> bool:
        return self.ordering != "none"


class CloverleafOptions(_Model):
    site: str
    runner: Literal["local", "ssh"] = "local"
    host: str | None = None  # ssh target when runner is ssh
    ssh_user: str | None = None
    hci_root: str | None = None  # $HCIROOT on the engine host
    command_dir: str | None = None  # where hcicmd / hciprocstatus live (default: PATH)
    process: str | None = None  # default process for threads named without one


class Engine(_Model):
    name: Name
    org: Name = "default"
    kind: Literal["mirth", "rhapsody", "cloverleaf", "lifeline"]
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None  # Mirth: https://host:8443/api; Rhapsody: :8444
    username_env: str | None = None  # credentials come from the environment, never from the file
    password_env: str | None = None
    verify_tls: bool = True
    timeout: Duration = timedelta(seconds=15)
    cloverleaf: CloverleafOptions | None = None
    channels: list[str] = Field(default_factory=list)  # watch only these (ids or names); empty: all

    @model_validator(mode="after")
    def _needs(self) -> Engine:
        if self.kind in ("mirth", "rhapsody") and not self.url:
            raise ValueError(f"a {self.kind} engine needs url")
        if self.kind == "cloverleaf" and self.cloverleaf is None:
            raise ValueError("a cloverleaf engine needs cloverleaf: {site: ...}")
        return self


class Remediation(_Model):
    mode: Literal["manual", "semi-auto", "full-auto"] = "semi-auto"
    approval_timeout: Duration = timedelta(hours=1)
    settle: Duration = timedelta(seconds=60)  # how long an action gets to show its effect before verification
    # A remediated case stays open this long (0s: closes at once); the problem coming back meanwhile is flapping:
    # the same case remediates again (within its attempt limit) with the recurrences as evidence, then escalates.
    cooldown: Duration = timedelta(minutes=5)


class _Detector(_Model):
    enabled: bool = True


class DestinationDown(_Detector):
    consecutive_failures: int = Field(default=3, ge=1)  # refused/reset/timeout/tls/dns/connection in a row


class DestinationRejecting(_Detector):
    rate: float = Field(default=0.2, gt=0, le=1)  # AR/4xx share of finished sends in the window
    min_rejects: int = Field(default=3, ge=1)


class BacklogLimits(_Detector):
    depth: int = Field(default=1000, ge=1)  # pending + started deliveries
    oldest_age: Duration = timedelta(minutes=10)
    # Forecast (workflows/detectors.py forecast_backlog_age): open the case this long before the age limit is
    # reached (0s: never forecast), from arrival and drain rates measured over forecast_span.
    forecast_horizon: Duration = timedelta(minutes=5)
    forecast_span: Duration = timedelta(minutes=1)
    forecast_min_backlog: int = Field(default=10, ge=1)


class LatencyDegraded(_Detector):
    p95: Duration = timedelta(seconds=10)  # accept -> delivered
    min_samples: int = Field(default=10, ge=1)
    # A slow peer: the window's send (ACK) p95 passes max(send_floor, send_factor x the destination's learned
    # normal), or send_p95 until a normal is learned (send_normal_samples healthy snapshots), or its SLA p95.
    send_p95: Duration = timedelta(seconds=3)
    send_factor: float = Field(default=5.0, gt=1)
    send_floor: Duration = timedelta(seconds=1)
    send_min_samples: int = Field(default=3, ge=1)
    send_normal_samples: int = Field(default=20, ge=1)
    send_alpha: float = Field(default=0.05, gt=0, le=1)  # EWMA smoothing of the normal, per healthy snapshot


class ThroughputDrop(_Detector):
    factor: float = Field(default=0.5, gt=0, lt=1)  # fire below baseline * factor
    alpha: float = Field(default=0.05, gt=0, le=1)  # EWMA smoothing per snapshot
    min_samples: int = Field(default=40, ge=1)  # snapshots in the hour bucket before it may fire
    min_baseline_per_min: float = Field(default=1.0, ge=0)  # quiet channels never fire


EngineStoppedState = Literal["stopped", "paused", "error", "undeployed"]
_DEFAULT_STOPPED_STATES: list[EngineStoppedState] = ["stopped", "paused", "error"]  # undeployed only when asked


EngineStuckState = Literal["stopping", "starting", "pausing"]
_DEFAULT_STUCK_STATES: list[EngineStuckState] = ["stopping", "starting", "pausing"]


class EngineChannelStopped(_Detector):
    states: list[EngineStoppedState] = Field(default_factory=lambda: _DEFAULT_STOPPED_STATES.copy())
    # A channel seen in one of stuck_states for stuck_after or longer is stuck (0s: never). Engines finish these
    # transitions in well under a second unless a connector hangs, so 10s is long enough to rule out a normal stop.
    stuck_after: Duration = timedelta(seconds=10)
    stuck_states: list[EngineStuckState] = Field(default_factory=lambda: _DEFAULT_STUCK_STATES.copy())


class EngineChannelErroring(_Detector):
    error_delta: int = Field(default=10, ge=1)  # new errors since the previous snapshot


class EngineQueueGrowing(_Detector):
    snapshots: int = Field(default=4, ge=2, le=20)  # grew across each of the last K snapshots
    min_growth: int = Field(default=1, ge=1)


class MalformedBurst(_Detector):
    rejected: int = Field(default=20, ge=1)  # rejected messages per sender and channel in the window


class FileSourceFailing(_Detector):
    consecutive_failures: int = Field(default=3, ge=1)  # failed polls in a row (login, host key, connection, I/O)


class FileSourceSilent(_Detector):
    factor: float = Field(default=3.0, gt=1)  # silent for factor x the usual gap between new files
    min_silence: Duration = timedelta(hours=1)
    min_samples: int = Field(default=5, ge=1)  # gaps learned before it may fire


class FileErrorsGrowing(_Detector):
    files: int = Field(default=1, ge=1)  # files moved to error/ in the window


class Monitor(_Model):
    enabled: bool = True  # the flow monitor schedule (paused when false)
    # 5 s: a detector that needs two looks (a stuck engine state, an error delta) still fires within ~15 s.
    interval: Duration = timedelta(seconds=5)
    window: Duration = timedelta(minutes=5)
    timezone: str = "UTC"  # hour-of-week / hour-of-day buckets of the throughput baseline
    destination_down: DestinationDown = DestinationDown()
    destination_rejecting: DestinationRejecting = DestinationRejecting()
    backlog: BacklogLimits = BacklogLimits()
    lane_blocked: _Detector = _Detector()
    latency_degraded: LatencyDegraded = LatencyDegraded()
    throughput_drop: ThroughputDrop = ThroughputDrop()
    engine_channel_stopped: EngineChannelStopped = EngineChannelStopped()
    engine_channel_erroring: EngineChannelErroring = EngineChannelErroring()
    engine_queue_growing: EngineQueueGrowing = EngineQueueGrowing()
    malformed_burst: MalformedBurst = MalformedBurst()
    file_source_failing: FileSourceFailing = FileSourceFailing()
    file_source_silent: FileSourceSilent = FileSourceSilent()
    file_errors_growing: FileErrorsGrowing = FileErrorsGrowing()

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    @model_validator(mode="after")
    def _positive(self) -> Monitor:
        if self.interval.total_seconds() < 1:
            raise ValueError("interval must be at least 1s")
        if self.window < self.interval:
            raise ValueError("window must be at least interval")
        return self


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$"


def _check_tz(v: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {v!r}") from None
    return v


class MaintenanceWindow(_Model):
    """A weekly window (local time of `tz`) in which SLA objectives are not enforced; end < start crosses midnight."""

    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1)
    start: Annotated[str, Field(pattern=_HHMM)]
    end: Annotated[str, Field(pattern=_HHMM)]
    tz: Annotated[str, BeforeValidator(_check_tz)] = "UTC"

    @field_validator("days", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return [str(d).lower()[:3] for d in v] if isinstance(v, list) else v

    def contains(self, at: datetime) -> bool:
        from zoneinfo import ZoneInfo

        local = at.astimezone(ZoneInfo(self.tz))
        minute = local.hour * 60 + local.minute
        start, end = (int(x[:2]) * 60 + int(x[3:]) for x in (self.start, self.end))
        day = WEEKDAYS[local.weekday()]
        previous = WEEKDAYS[(local.weekday() - 1) % 7]
        if start <= end:
            return day in self.days and start <= minute < end
        # Crosses midnight: the evening part belongs to `day`, the morning part to the day before.
        return (day in self.days and minute >= start) or (previous in self.days and minute < end)


class Sla(_Model):
    """Service-level objectives for a channel, a destination, or (neither) the whole org; null disables one."""

    name: Name
    org: Name = "default"
    channel: Name | None = None
    destination: Name | None = None
    window: Duration = timedelta(minutes=5)  # the sliding window latency and success rate are measured over
    p95_latency: Duration | None = timedelta(seconds=30)  # accept -> delivered
    max_backlog_age: Duration | None = timedelta(minutes=5)  # oldest delivery still pending
    min_success_rate: float | None = Field(default=0.99, ge=0, le=1)  # delivered / all send attempts in the window
    uptime_target: float | None = Field(default=0.999, ge=0, le=1)  # share of the uptime period without a violation
    uptime_period: Duration = timedelta(days=30)
    maintenance_windows: list[MaintenanceWindow] = Field(default_factory=list)
    escalate_after: Duration = timedelta(minutes=15)
    contacts: list[str] = Field(default_factory=list)
    alert_webhook: Annotated[str, Field(pattern=r"^https?://")] | None = None

    def in_maintenance(self, at: datetime) -> bool:
        return any(w.contains(at) for w in self.maintenance_windows)

    @property
    def subject(self) -> str:
        if self.destination:
            return f"destination:{self.destination}"
        return f"channel:{self.channel}" if self.channel else "org"


class EmailChannel(_Model):
    """SMTP; the password comes from the environment variable named by password_env."""

    smtp_host: str
    smtp_port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    username: str | None = None
    password_env: str | None = None
    sender: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]
    to: list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]] = Field(min_length=1)


class ChatChannel(_Model):
    """A Slack-compatible incoming webhook (`{"text": ...}`); the URL is a secret, so it comes from the environment."""

    webhook_url_env: str


class PagerDutyChannel(_Model):
    """PagerDuty Events API v2: trigger on escalation, resolve with the same dedup key when the case resolves."""

    routing_key_env: str
    events_url: Annotated[str, Field(pattern=r"^https?://")] = "https://events.pagerduty.com/v2/enqueue"
    severity: Literal["critical", "error", "warning", "info"] = "critical"


OncallTrigger = Literal["case.escalated", "sla.escalated"]
ONCALL_TRIGGERS: tuple[OncallTrigger, ...] = ("case.escalated", "sla.escalated")


class OncallChannel(_Model):
    name: Name
    org: Name | None = None  # only this org's events; none: every org
    events: list[OncallTrigger] = Field(default_factory=lambda: list(ONCALL_TRIGGERS))
    email: EmailChannel | None = None
    chat: ChatChannel | None = None
    pagerduty: PagerDutyChannel | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> OncallChannel:
        kinds = [k for k in ("email", "chat", "pagerduty") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of email, chat, pagerduty")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("email", "chat", "pagerduty") if getattr(self, k) is not None)


class Oncall(_Model):
    """Where escalations and SLA escalations reach people (ids and links only, never message content)."""

    channels: list[OncallChannel] = Field(default_factory=list)
    max_attempts: int = Field(default=20, ge=1)


class LifelineConfig(_Model):
    channels: list[Channel] = Field(default_factory=list)
    destinations: list[Destination] = Field(default_factory=list)
    engines: list[Engine] = Field(default_factory=list)
    remediation: Remediation = Remediation()
    monitor: Monitor = Monitor()
    sla: list[Sla] = Field(default_factory=list)
    tables: list[CodeTable] = Field(default_factory=list)
    oncall: Oncall = Oncall()

    @field_validator("tables", mode="before")
    @classmethod
    def _read_csv(cls, v: Any, info: ValidationInfo) -> Any:
        # A CSV table is read once, here: the version stores its values, so a later file edit is a new version.
        if not isinstance(v, list):
            return v
        base = Path((info.context or {}).get("base", "."))
        out: list[Any] = []
        problems: list[str] = []
        for i, t in enumerate(v):
            if isinstance(t, dict) and t.get("csv") and not t.get("values"):
                path = base / str(t["csv"])
                try:
                    t = {**t, "values": parse_csv_table(path.read_text(encoding="utf-8")), "csv": None}
                except OSError as exc:
                    problems.append(f"tables[{i}].csv\tcannot read {path}: {exc.strerror}")
                except ValueError as exc:
                    problems.append(f"tables[{i}].csv\t{path}: {exc}")
            out.append(t)
        if problems:
            raise ValueError("\n".join(problems))
        return out

    @model_validator(mode="after")
    def _step_references(self) -> LifelineConfig:
        from interop.transform.plugins import PluginNotFound, load_plugin

        problems: list[tuple[str, str]] = []
        tables: dict[tuple[str, str], int] = {}
        for i, t in enumerate(self.tables):
            if (t.org, t.name) in tables:
                problems.append((f"tables[{i}].name", f"duplicate code table name {t.name!r}"))
            tables[(t.org, t.name)] = i
        for i, ch in enumerate(self.channels):
            for j, r in enumerate(ch.routes):
                for k, step in enumerate(r.steps):
                    where = f"channels[{i}].routes[{j}].steps[{k}]"
                    if step.table and (ch.org, step.table) not in tables:
                        problems.append((f"{where}.table", f"no code table named {step.table!r} in org {ch.org!r}"))
                    if step.plugin:
                        try:
                            load_plugin(step.plugin)
                        except PluginNotFound as exc:
                            problems.append((f"{where}.plugin", str(exc)))
        if problems:
            raise ValueError("\n".join(f"{p}\t{r}" for p, r in problems))
        return self

    def tables_for(self, org: str) -> dict[str, dict[str, str]]:
        """The org's code tables by name, as the transform engine takes them."""
        return {t.name: t.values for t in self.tables if t.org == org}

    @model_validator(mode="after")
    def _references(self) -> LifelineConfig:
        problems: list[tuple[str, str]] = []
        seen: dict[str, int] = {}
        for i, ch in enumerate(self.channels):
            if ch.name in seen:
                problems.append((f"channels[{i}].name", f"duplicate channel name {ch.name!r}"))
            seen[ch.name] = i
        dest_names: dict[str, int] = {}
        for i, d in enumerate(self.destinations):
            if d.name in dest_names:
                problems.append((f"destinations[{i}].name", f"duplicate destination name {d.name!r}"))
            dest_names[d.name] = i
        engine_names: set[str] = set()
        for i, e in enumerate(self.engines):
            if e.name in engine_names:
                problems.append((f"engines[{i}].name", f"duplicate engine name {e.name!r}"))
            engine_names.add(e.name)
        ports: dict[int, str] = {}
        for i, ch in enumerate(self.channels):
            if ch.mllp:
                if ch.mllp.port in ports:
                    problems.append((f"channels[{i}].mllp.port",
                                     f"port {ch.mllp.port} is also used by channel {ports[ch.mllp.port]!r}"))
                ports[ch.mllp.port] = ch.name
            for j, r in enumerate(ch.routes):
                if r.to not in dest_names:
                    problems.append((f"channels[{i}].routes[{j}].to", f"no destination named {r.to!r}"))
                elif self.destinations[dest_names[r.to]].org != ch.org:
                    problems.append((f"channels[{i}].routes[{j}].to",
                                     f"destination {r.to!r} belongs to another org"))
        if problems:
            # Raised as ValueError so pydantic reports it; load() turns the text back into key paths.
            raise ValueError("\n".join(f"{p}\t{r}" for p, r in problems))
        return self

    @model_validator(mode="after")
    def _sla_references(self) -> LifelineConfig:
        problems: list[tuple[str, str]] = []
        names: set[tuple[str, str]] = set()
        for i, sla in enumerate(self.sla):
            if (sla.org, sla.name) in names:
                problems.append((f"sla[{i}].name", f"duplicate SLA name {sla.name!r}"))
            names.add((sla.org, sla.name))
            ch, dest = self.channel(sla.channel or ""), self.destination(sla.destination or "")
            if sla.channel and ch is None:
                problems.append((f"sla[{i}].channel", f"no channel named {sla.channel!r}"))
            elif ch is not None and ch.org != sla.org:
                problems.append((f"sla[{i}].channel", f"channel {sla.channel!r} belongs to another org"))
            if sla.destination and dest is None:
                problems.append((f"sla[{i}].destination", f"no destination named {sla.destination!r}"))
            elif dest is not None and dest.org != sla.org:
                problems.append((f"sla[{i}].destination", f"destination {sla.destination!r} belongs to another org"))
        if problems:
            raise ValueError("\n".join(f"{p}\t{r}" for p, r in problems))
        return self

    def channel(self, name: str) -> Channel | None:
        return next((c for c in self.channels if c.name == name), None)

    def destination(self, name: str) -> Destination | None:
        return next((d for d in self.destinations if d.name == name), None)

    def engine(self, name: str) -> Engine | None:
        return next((e for e in self.engines if e.name == name), None)

    def owner(self, subject: str) -> str | None:
        """The org a case subject belongs to (destination:<d>, lane:<d>:<key>, channel:<c>, engine:<e>:<channel>);
        None when it names nothing configured. Every destination, channel and engine belongs to exactly one org."""
        scope, _, rest = subject.partition(":")
        name = rest.split(":", 1)[0]
        found: Channel | Destination | Engine | None = None
        if scope in ("destination", "lane"):
            found = self.destination(name)
        elif scope == "channel":
            found = self.channel(name)
        elif scope == "engine" and ":" in rest:
            found = self.engine(name)
        return found.org if found is not None else None

    def owns(self, org: str, subject: str) -> bool:
        return self.owner(subject) == org

    def foreign(self, org: str, subject: str) -> bool:
        """True when the subject names a destination, channel or engine configured for another org."""
        owner = self.owner(subject)
        return owner is not None and owner != org


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after[_one_kind()]",) or "[" in str(part) or str(part).startswith(
            ("literal[", "function-")
        ):
            continue  # pydantic's internal union/validator labels are not key paths
        else:
            out += ("." if out else "") + str(part)
    return out


def validate_config(data: Any, file: str, base: Path | None = None) -> LifelineConfig:
    """Validate a parsed YAML document; raise ConfigError naming key paths. CSV code tables are read relative
    to `base` (default: the file's folder)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(file, [("", "the top level must be a mapping with channels and destinations")])
    try:
        return LifelineConfig.model_validate(data, context={"base": base or Path(file).parent})
    except ValidationError as exc:
        problems: list[tuple[str, str]] = []
        for err in exc.errors():
            msg = str(err.get("msg", ""))
            if "\t" in msg:  # cross-reference problems from _references
                for line in msg.removeprefix("Value error, ").split("\n"):
                    path, reason = line.split("\t", 1)
                    problems.append((path, reason))
                continue
            reason = msg.removeprefix("Value error, ")
            path = _loc(tuple(err["loc"]))
            if (path, reason) not in problems:
                problems.append((path, reason))
        raise ConfigError(file, _dedupe_union_noise(problems)) from None


def _dedupe_union_noise(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # A bad `ordering` reports once per union member; keep one clear line for it.
    out: list[tuple[str, str]] = []
    for path, reason in problems:
        if path.endswith(".ordering") or ".ordering." in path:
            path = path.split(".ordering")[0] + ".ordering"
            reason = "must be 'none', 'destination' or {key: <HL7 path such as PID-3.1>}"
            if (path, reason) in out:
                continue
        out.append((path, reason))
    return out


def config_path() -> Path:
    """LIFELINE_CONFIG, else ./lifeline.yaml, else the shipped example."""
    env = os.environ.get("LIFELINE_CONFIG")
    if env:
        return Path(env)
    local = Path("lifeline.yaml")
    return local if local.exists() else EXAMPLE_CONFIG


def load_config(path: Path | str | None = None) -> LifelineConfig:
    """Read and validate a configuration file."""
    p = Path(path) if path is not None else config_path()
    file = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file, [("", "file not found")]) from None
    except OSError as exc:
        raise ConfigError(file, [("", f"cannot read: {exc.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(file, [(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    return validate_config(data, file)


@lru_cache(maxsize=1)
def get_config() -> LifelineConfig:
    """The process-wide configuration, loaded once."""
    return load_config()
