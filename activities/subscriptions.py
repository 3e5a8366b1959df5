"""Webhook subscriptions, the sending side: the event body (ids, types, times and links, never content), its
signature, and one guarded POST to the address the SSRF check approved."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from activities.http import RETRYABLE_STATUS, retry_after_seconds, sign
from infra.crypto import Cipher
from infra.ssrf import AddressRefused, Guard, Target
from workflows.contract import (
    ERR_ADDRESS_REFUSED,
    ERR_WEBHOOK_FAILED,
    ERR_WEBHOOK_REJECTED,
    WEBHOOK_TIMEOUT_S,
)

SECRET_PREFIX = "whsec_"
# Signature headers: the same scheme as the webhook destination (activities/http.py sign), so one verifier serves
# both: hex HMAC-SHA256 over "<timestamp>.<raw body>".
H_TIMESTAMP, H_SIGNATURE = "X-Lifeline-Timestamp", "X-Lifeline-Signature"
H_EVENT, H_EVENT_ID, H_SUBSCRIPTION, H_SEQUENCE = ("X-Lifeline-Event", "X-Lifeline-Event-Id",
                                                   "X-Lifeline-Subscription", "X-Lifeline-Sequence")


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def seal_secret(cipher: Cipher, sub_id: str, secret: str) -> tuple[bytes, str]:
    """(ciphertext, key id): secrets are stored encrypted with the store key, bound to their subscription."""
    return cipher.encrypt(secret.encode(), aad=sub_id.encode()), cipher.key_id


def open_secret(cipher: Cipher, sub_id: str, secret_enc: bytes, key_id: str) -> str:
    return cipher.decrypt(secret_enc, key_id, aad=sub_id.encode()).decode()


@dataclass(frozen=True)
class EventLinks:
    public_url: str = "http://localhost:8000"
    temporal_ui_url: str = "http://localhost:8233"
    namespace: str = "default"

    def workflow(self, workflow_id: str) -> str:
        return f"{self.temporal_ui_url}/namespaces/{self.namespace}/workflows/{quote(workflow_id, safe='')}"

    def for_event(self, event_id: int | None, data: dict[str, Any]) -> dict[str, str]:
        links: dict[str, str] = {}
        if event_id is not None:
            links["event"] = f"{self.public_url}/api/events/log/{event_id}"
        if data.get("message_id"):
            links["message"] = f"{self.public_url}/api/messages/{quote(str(data['message_id']), safe='')}"
        if data.get("workflow_id"):
            links["workflow"] = self.workflow(str(data["workflow_id"]))
        if data.get("case_id"):
            links["case"] = f"{self.public_url}/api/remediations/{quote(str(data['case_id']), safe='')}"
            links.setdefault("workflow", self.workflow(str(data["case_id"])))
        if data.get("violation_id") is not None:
            links["sla"] = f"{self.public_url}/api/sla"
        if data.get("version") is not None and "sla" not in links:
            links["config"] = f"{self.public_url}/api/config/versions/{data['version']}"
        return links


def iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def event_body(*, event_id: int | None, event_type: str, occurred_at: Any, org_id: str, subject: str,
               data: dict[str, Any], subscription: str, sequence: int, attempt: int, redelivery: bool,
               links: EventLinks) -> dict[str, Any]:
    """What a subscriber receives; `data` is the event log's (ids, counts, states)."""
    return {"id": event_id, "type": event_type, "occurred_at": iso(occurred_at), "org": org_id,
            "subject": subject, "data": data, "links": links.for_event(event_id, data),
            "subscription": subscription, "sequence": sequence, "attempt": attempt, "redelivery": redelivery}


@dataclass
class SendOutcome:
    ok: bool
    status: int | None = None  # the receiver's HTTP status, when it answered
    error_type: str = ""  # ERR_* of the contract
    error: str = ""
    retryable: bool = False
    retry_after_s: float | None = None
    latency_ms: int = 0
    address: str = ""  # the address that was connected to


class KeepAlive:
    """Signed POSTs over one kept-alive HTTP/1.1 connection to a checked address: a drainer sends a subscription's
    events one after the other to one receiver, so a general client's pool and per-request machinery (about a
    millisecond of CPU per request with httpx) buy nothing there. Connects to `Target.ip` only."""

    MAX_BODY = 1 << 20  # an answer body is read (and dropped) up to this size; a larger one ends the connection

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl = ssl_context
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter, tuple[str, str, int, str]] | None = None

    async def close(self) -> None:
        if self._conn is not None:
            writer = self._conn[1]
            self._conn = None
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def post(self, target: Target, headers: dict[str, str], body: bytes,
                   timeout: float) -> tuple[int, dict[str, str]]:
        """(status, lower-cased headers); raises OSError / TimeoutError / ValueError when there is no answer."""
        key = (target.scheme, target.ip, target.port, target.host)
        parts = urlsplit(target.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = f"POST {path} HTTP/1.1\r\nHost: {target.host_header()}\r\nContent-Length: {len(body)}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() not in ("host", "content-length")) + "\r\n"
        request = head.encode("latin-1") + body
        for attempt in (1, 2):
            reused = self._conn is not None and self._conn[2] == key
            if not reused:
                await self.close()
            try:
                async with asyncio.timeout(timeout):
                    if self._conn is None:
                        if target.scheme == "https" and self._ssl is None:
                            self._ssl = ssl.create_default_context()
                        reader, writer = await asyncio.open_connection(
                            target.ip, target.port, ssl=self._ssl if target.scheme == "https" else None,
                            server_hostname=target.host if target.scheme == "https" else None)
                        self._conn = (reader, writer, key)
                    reader, writer, _ = self._conn
                    writer.write(request)
                    await writer.drain()
                    return await self._answer(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                await self.close()
                if reused and attempt == 1:
                    continue  # the receiver closed the idle connection: once more on a new one
                if isinstance(exc, asyncio.IncompleteReadError):
                    raise ConnectionError("the receiver closed the connection without answering") from None
                raise
            except TimeoutError:
                await self.close()
                raise
        raise ConnectionError("no answer")  # not reached: the second attempt returns or raises

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
        status_line = await reader.readline()
        if not status_line:
            raise asyncio.IncompleteReadError(b"", None)
        version, status_text = status_line.split(None, 2)[:2]
        status = int(status_text)
        headers: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise asyncio.IncompleteReadError(b"", None)
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        keep = version == b"HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if status in (204, 304) or status < 200:
            pass
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            total = 0
            while True:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > self.MAX_BODY:
                    keep = False
                    break
                await reader.readexactly(size + 2)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length > self.MAX_BODY:
                keep = False
            else:
                await reader.readexactly(length)
        else:
            keep = False  # the body runs to the end of the connection: not worth reading
        if not keep:
            await self.close()
        return status, headers


async def post_signed(client: httpx.AsyncClient | KeepAlive, guard: Guard, url: str, secret: str,
                      body: dict[str, Any], headers: dict[str, str] | None = None,
                      timeout: float = WEBHOOK_TIMEOUT_S, target: Target | None = None) -> SendOutcome:
    """Check the URL (resolve, refuse non-public addresses outside the allow-list), then POST the signed body to
    the checked address, naming the host in the Host header and as the TLS server name. Never raises for the
    receiver's or the network's failures: the outcome says what happened and whether to try again. `target`: a
    check made moments ago for the same URL (a batch of sends checks once; it still connects to what was checked)."""
    started = time.monotonic()
    if target is None:
        try:
            target = await guard.check(url)
        except AddressRefused as exc:
            return SendOutcome(False, error_type=ERR_ADDRESS_REFUSED, error=str(exc))
    raw = json.dumps(body, separators=(",", ":"), default=str).encode()
    ts = str(int(time.time()))
    all_headers = {"Content-Type": "application/json", "User-Agent": "Lifeline-Webhooks/1",
                   "Host": target.host_header(), H_TIMESTAMP: ts, H_SIGNATURE: sign(secret, ts, raw),
                   **(headers or {})}
    try:
        if isinstance(client, KeepAlive):
            status, answer_headers = await client.post(target, all_headers, raw, timeout)
        else:
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            resp = await client.post(target.connect_url(), content=raw, headers=all_headers, timeout=timeout,
                                     extensions=extensions, follow_redirects=False)
            status, answer_headers = resp.status_code, {k.lower(): v for k, v in resp.headers.items()}
    except (httpx.TimeoutException, TimeoutError):
        return SendOutcome(False, error_type=ERR_WEBHOOK_FAILED, error=f"no answer within {timeout:g}s",
                           retryable=True, address=target.ip)
    except (httpx.HTTPError, OSError, ValueError) as exc:
        return SendOutcome(False, error_type=ERR_WEBHOOK_FAILED, error=f"connect failed: {type(exc).__name__}",
                           retryable=True, address=target.ip)
    latency = int((time.monotonic() - started) * 1000)
    if 200 <= status < 300:
        return SendOutcome(True, status, latency_ms=latency, address=target.ip)
    if status in RETRYABLE_STATUS:
        return SendOutcome(False, status, ERR_WEBHOOK_FAILED, f"HTTP {status}", retryable=True,
                           retry_after_s=retry_after_seconds(answer_headers.get("retry-after")), latency_ms=latency,
                           address=target.ip)
    # 3xx is not followed (a redirect would lead past the address check), 4xx says the receiver refuses it.
    return SendOutcome(False, status, ERR_WEBHOOK_REJECTED, f"HTTP {status}", latency_ms=latency, address=target.ip)
