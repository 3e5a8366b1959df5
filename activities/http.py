"""HTTP senders: FHIR R4 transaction bundles and signed webhooks, with retry semantics by status."""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import os
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from activities.mllp import SendError
from infra.config import FhirOut, WebhookOut

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class HttpSendError(SendError):
    def __init__(self, error_class: str, text: str, *, permanent: bool = False, peer_answer: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(error_class, text, permanent=permanent, peer_answer=peer_answer)
        self.retry_after = retry_after


def _outcome_summary(resp: httpx.Response) -> str:
    """Issue codes and diagnostics of an OperationOutcome, else the status line."""
    try:
        body = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}"
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        parts = []
        for issue in body.get("issue", [])[:5]:
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
            parts.append(f"{issue.get('severity', '?')}/{issue.get('code', '?')}: {text}"[:300])
        return f"HTTP {resp.status_code} OperationOutcome: " + " | ".join(parts)
    return f"HTTP {resp.status_code}"


async def _post(client: httpx.AsyncClient, url: str, *, content: bytes, headers: dict[str, str],
                timeout: float) -> httpx.Response:
    try:
        return await client.post(url, content=content, headers=headers, timeout=timeout)
    except httpx.TimeoutException as exc:
        raise HttpSendError("timeout", f"no answer within {timeout:g}s") from exc
    except httpx.ConnectError as exc:
        text = str(exc)
        cls = "refused" if "refused" in text.lower() else "dns" if "name" in text.lower() else (
            "tls" if "ssl" in text.lower() or "certificate" in text.lower() else "connection")
        raise HttpSendError(cls, f"connect failed: {type(exc).__name__}") from exc
    except httpx.HTTPError as exc:
        raise HttpSendError("connection", f"HTTP transport error: {type(exc).__name__}") from exc


def _check(resp: httpx.Response) -> str:
    if 200 <= resp.status_code < 300:
        return f"HTTP {resp.status_code}"
    summary = _outcome_summary(resp)
    if resp.status_code in RETRYABLE_STATUS:
        raise HttpSendError("http_5xx" if resp.status_code >= 500 else "http_throttled", summary,
                            peer_answer=summary, retry_after=retry_after_seconds(resp.headers.get("retry-after")))
    raise HttpSendError("http_4xx", summary, permanent=True, peer_answer=summary)


async def send_fhir(client: httpx.AsyncClient, cfg: FhirOut, bundle: dict[str, Any]) -> str:
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if cfg.bearer_token_env:
        token = os.environ.get(cfg.bearer_token_env, "")
        if token:
            headers["Authorization"] = f"Bearer {token}"
    resp = await _post(client, cfg.base_url.rstrip("/"), content=json.dumps(bundle).encode(), headers=headers,
                       timeout=cfg.timeout.total_seconds())
    return _check(resp)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """X-Lifeline-Signature: hex HMAC-SHA256 over '<timestamp>.<body>'."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


async def send_webhook(client: httpx.AsyncClient, cfg: WebhookOut, payload: dict[str, Any]) -> str:
    body = json.dumps(payload, separators=(",", ":")).encode()
    ts = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Lifeline-Timestamp": ts,
               "X-Lifeline-Signature": sign(cfg.secret, ts, body)}
    resp = await _post(client, cfg.url, content=body, headers=headers, timeout=cfg.timeout.total_seconds())
    return _check(resp)
