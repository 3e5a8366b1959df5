"""Process settings from the environment (LIFELINE_*); one Settings, built by a cached factory."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from infra.crypto import Cipher
    from infra.store.audit import AuditKeys
    from interop.message import Limits

AUDIT_LABEL = b"lifeline/audit/v1"  # derives the audit chain's key from a store key when no audit key is set
PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "dev", "development"})
# Requests per second / burst of each role's bucket on the API outside REST ingress (per user).
DEFAULT_ROLE_LIMITS = {"admin": "50/300", "operator": "50/300", "oncall": "20/200", "auditor": "20/200",
                       "viewer": "20/200", "sender": "20/100"}


def parse_rate(value: str, name: str) -> tuple[float, float]:
    """'<requests per second>/<burst>' (e.g. '20/200') as (rate, burst)."""
    rate_s, sep, burst_s = value.partition("/")
    try:
        rate, burst = float(rate_s), float(burst_s) if sep else float(rate_s)
    except ValueError:
        raise ValueError(f"{name} must look like '<requests per second>/<burst>', e.g. '20/200', not {value!r}")\
            from None
    if not (rate > 0 and burst >= 1):
        raise ValueError(f"{name}: the rate must be > 0 and the burst at least 1, not {value!r}")
    return rate, burst


def decode_key(value: str, name: str) -> bytes:
    """A 256-bit key given as base64 (standard or urlsafe)."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{name} is not base64") from exc
    if len(raw) != 32:
        raise ValueError(f"{name} must decode to 32 bytes (AES-256), got {len(raw)}")
    return raw


class Settings(BaseSettings):
    """Everything a Lifeline process reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="LIFELINE_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path(".lifeline")
    config: Path | None = Field(default=None, description="channel configuration file (lifeline.yaml)")

    database_url: str = "postgresql://lifeline@127.0.0.1:55432/lifeline"
    database_pool_min: int = 2
    database_pool_max: int = 10
    # The role every query runs as (SET ROLE on each new connection): it owns no table, so row-level security
    # binds it. "" keeps the login role (then that role must not be a superuser for the walls to hold).
    database_role: str = "lifeline_app"

    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    temporal_ui_url: str = "http://localhost:8233"
    task_queue: str = "lifeline"

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    public_url: str = "http://localhost:8000"
    cors_origins: list[str] = Field(default_factory=lambda: ["http://localhost:8233"])

    jwt_secret: SecretStr = SecretStr("")
    jwt_issuer: str = "lifeline"
    # AES-256-GCM keys (base64). Store key encrypts raw messages at rest; codec key encrypts Temporal payloads.
    store_key: SecretStr = SecretStr("")
    store_key_id: str = "k1"
    codec_key: SecretStr = SecretStr("")
    codec_key_id: str = "k1"
    # Key rotation: earlier keys stay readable, "id:base64[,id:base64...]"; new data uses the current key.
    store_previous_keys: SecretStr = SecretStr("")
    # HMAC key for ordered-lane values (an MRN is stored only as its keyed hash). Empty: derived from the store key;
    # set it (base64 of 32 bytes) before rotating the store key so lanes stay the same across the rotation.
    lane_key: SecretStr = SecretStr("")
    codec_previous_keys: SecretStr = SecretStr("")
    # HMAC key of the audit chain (base64 of 32 bytes): without it nobody, a database superuser included, can
    # rewrite and re-chain the audit log unnoticed. Empty: derived from the store key. Each row records its key id;
    # after a rotation list the earlier keys in LIFELINE_AUDIT_PREVIOUS_KEYS ("id:base64,...") so old rows verify.
    audit_key: SecretStr = SecretStr("")
    audit_key_id: str = "a1"
    audit_previous_keys: SecretStr = SecretStr("")
    # How often the API logs each org's audit chain head (seq and MAC) when it moved; 0 turns the export off.
    audit_head_seconds: float = Field(default=300.0, ge=0)
    # Cross-org (system) transactions are summarised in the `_system` org's audit log: one row per purpose per this
    # many seconds per process; 0 turns it off.
    system_audit_seconds: float = Field(default=3600.0, ge=0)

    # Per-message limits on every accept path (MLLP, REST, files): more segments or a longer segment is refused
    # with AR / 422 naming the segment, before any validation work is done.
    max_segments: int = Field(default=10_000, ge=1)
    # Any REST request body (a channel's max_message_bytes is checked after): 413 while it streams in.
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_segment_chars: int = Field(default=4 * 1024 * 1024, ge=64)

    # Rate limits (docs/security.md#rate-limits): token buckets "<requests per second>/<burst>" shared by every API
    # process through PostgreSQL; 429 with Retry-After when empty. REST ingress: one bucket per API key or user.
    # Every other authenticated route: one bucket per user, sized by the user's most generous role; roles not in
    # LIFELINE_RATE_LIMIT_ROLES (JSON, e.g. '{"viewer": "5/50"}') keep DEFAULT_ROLE_LIMITS.
    rate_limits: bool = True
    rate_limit_ingress: str = "200/1000"
    rate_limit_roles: dict[str, str] = Field(default_factory=dict)

    dispatcher_sweep_seconds: float = 5.0
    # Webhook subscriptions (docs/webhooks.md). URLs that resolve to loopback, private, link-local (cloud metadata)
    # or other non-public addresses are refused unless an address falls in one of these networks (CIDR), set by
    # the platform operator for internal receivers, e.g. ["10.20.0.0/16"]; checked at creation and at each send.
    webhook_allow_networks: list[str] = Field(default_factory=list)
    webhook_poll_seconds: float = Field(default=0.5, gt=0)  # how often an idle subscription looks for new events
    # The event log (GET /api/events/log) and the webhook delivery records are pruned after this many days.
    event_retention_days: float = Field(default=30.0, gt=0)
    event_prune_seconds: float = Field(default=3600.0, gt=0)  # how often the worker prunes them
    # The worker also runs the outbox dispatcher and starts deliveries with eager workflow start (the first
    # workflow task comes straight back to this process); `lifeline up` and `lifeline worker --with-dispatcher`.
    worker_dispatch: bool = False
    # Deliveries to ordered destinations run on their own task queue (<task_queue>-ordered), polled by every worker
    # beside the main one: a lane delivers one message at a time, so behind a saturated shared queue each of its
    # hand-offs would wait a whole turn of unordered work. False: one queue for everything (as before).
    ordered_queue: bool = True
    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, v: str) -> str:
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return v

    @field_validator("webhook_allow_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        import ipaddress

        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not a network (CIDR such as 10.0.0.0/8 or 127.0.0.1/32)") from exc
        return v

    @model_validator(mode="after")
    def _secrets(self) -> Settings:
        for name in ("jwt_secret", "store_key", "codec_key"):
            value: SecretStr = getattr(self, name)
            secret = value.get_secret_value()
            if secret.lower() in PLACEHOLDER_SECRETS:
                if self.environment == "production":
                    raise ValueError(f"LIFELINE_{name.upper()} must be set to a real secret in production")
                continue
            if name != "jwt_secret":
                decode_key(secret, f"LIFELINE_{name.upper()}")
            elif len(secret) < 32:
                raise ValueError("LIFELINE_JWT_SECRET must be at least 32 characters")
        if self.audit_key.get_secret_value():
            decode_key(self.audit_key.get_secret_value(), "LIFELINE_AUDIT_KEY")
        for name in ("store_previous_keys", "codec_previous_keys", "audit_previous_keys"):
            previous_keys(getattr(self, name).get_secret_value(), f"LIFELINE_{name.upper()}")
        self.role_limits()
        self.ingress_limit()
        if self.environment == "production":
            from infra.production import settings_problems

            problems = settings_problems(self)
            if problems:
                raise ValueError("; ".join(f"{name}: {reason}" for name, reason in problems))
        return self

    def key(self, name: Literal["store_key", "codec_key"]) -> bytes:
        """The decoded AES key; raises when it was never configured."""
        secret = getattr(self, name).get_secret_value()
        if secret.lower() in PLACEHOLDER_SECRETS:
            raise RuntimeError(f"LIFELINE_{name.upper()} is not set (lifeline up generates one for development)")
        return decode_key(secret, f"LIFELINE_{name.upper()}")


    @property
    def ordered_task_queue(self) -> str:
        """The task queue of ordered deliveries (workflows.contract.ordered_task_queue); "" when they share the main
        one. Spelled here too because infra imports nothing from workflows."""
        return f"{self.task_queue}-ordered" if self.ordered_queue else ""

    def lane_hmac_key(self) -> bytes:
        """The key that turns a lane value (PID-3.1 ...) into its stored hash."""
        value = self.lane_key.get_secret_value()
        if value:
            return decode_key(value, "LIFELINE_LANE_KEY")
        return self.cipher("store").derive_key(b"lifeline/lane/v1")

    def audit_keys(self) -> AuditKeys:
        """The audit chain's HMAC keys: the current one (LIFELINE_AUDIT_KEY, or derived from the store key as
        `store:<store key id>`) and every earlier one, so rows chained under any of them still verify."""
        from infra.store.audit import AuditKeys

        keys = previous_keys(self.audit_previous_keys.get_secret_value(), "LIFELINE_AUDIT_PREVIOUS_KEYS")
        value = self.audit_key.get_secret_value()
        if value:
            keys[self.audit_key_id] = decode_key(value, "LIFELINE_AUDIT_KEY")
        store_keys = previous_keys(self.store_previous_keys.get_secret_value(), "LIFELINE_STORE_PREVIOUS_KEYS")
        store_key = self.store_key.get_secret_value()
        if store_key.lower() in PLACEHOLDER_SECRETS and self.environment == "development":
            # A command run beside `lifeline up` (lifeline apikey create ...) chains with the key `up` generated.
            store_key = _dev_secret(self.data_dir, "LIFELINE_STORE_KEY")
        if store_key.lower() not in PLACEHOLDER_SECRETS:
            store_keys[self.store_key_id] = decode_key(store_key, "LIFELINE_STORE_KEY")
        for kid, key in store_keys.items():
            keys[f"store:{kid}"] = hmac.new(key, AUDIT_LABEL, hashlib.sha256).digest()
        current = self.audit_key_id if value else f"store:{self.store_key_id}"
        if current not in keys:
            raise RuntimeError("LIFELINE_AUDIT_KEY (or LIFELINE_STORE_KEY to derive it) is not set")
        return AuditKeys(current, keys)

    def role_limits(self) -> dict[str, tuple[float, float]]:
        """(rate, burst) of each role's API bucket: the defaults with LIFELINE_RATE_LIMIT_ROLES over them."""
        unknown = sorted(set(self.rate_limit_roles) - set(DEFAULT_ROLE_LIMITS))
        if unknown:
            raise ValueError(f"LIFELINE_RATE_LIMIT_ROLES: unknown role(s) {unknown}; roles are "
                             f"{', '.join(DEFAULT_ROLE_LIMITS)}")
        merged = {**DEFAULT_ROLE_LIMITS, **self.rate_limit_roles}
        return {role: parse_rate(value, f"LIFELINE_RATE_LIMIT_ROLES[{role}]") for role, value in merged.items()}

    def ingress_limit(self) -> tuple[float, float]:
        """(rate, burst) of each API key's or user's bucket on REST ingress."""
        return parse_rate(self.rate_limit_ingress, "LIFELINE_RATE_LIMIT_INGRESS")

    def message_limits(self) -> Limits:
        """The per-message segment limits for interop.parse."""
        from interop.message import Limits

        return Limits(max_segments=self.max_segments, max_segment_chars=self.max_segment_chars)

    def cipher(self, purpose: Literal["store", "codec"]) -> Cipher:
        """The AES-GCM cipher for message bodies (store) or Temporal payloads (codec), older keys included."""
        from infra.crypto import Cipher

        key_id = self.store_key_id if purpose == "store" else self.codec_key_id
        older = getattr(self, f"{purpose}_previous_keys").get_secret_value()
        return Cipher(key_id, self.key(f"{purpose}_key"),  # type: ignore[arg-type]
                      previous_keys(older, f"LIFELINE_{purpose.upper()}_PREVIOUS_KEYS"))


def _dev_secret(data_dir: Path, name: str) -> str:
    """A development secret `lifeline up` generated into <data dir>/secrets.json, or ""."""
    import json

    try:
        value = json.loads((data_dir / "secrets.json").read_text()).get(name, "")
    except (OSError, ValueError):
        return ""
    return value if isinstance(value, str) else ""


def previous_keys(value: str, name: str) -> dict[str, bytes]:
    """Parse 'id:base64,id:base64' into {id: key}."""
    keys: dict[str, bytes] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        key_id, sep, b64 = item.partition(":")
        if not sep or not key_id:
            raise ValueError(f"{name} entries must look like '<key id>:<base64 key>'")
        keys[key_id] = decode_key(b64, f"{name} ({key_id})")
    return keys


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
