"""Webhook test fixtures: a real HTTP receiver (stdlib server on 127.0.0.1), the API with settings of the test's
choice, and a drainer running against the test database as the application role."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import asyncpg
import httpx

from activities.subscriptions import EventLinks
from infra.crypto import Cipher
from infra.db import create_pool
from infra.ssrf import Guard, Resolver
from tests.delivery.harness import HttpHit, HttpPeer, config_for
from workers.webhooks import WebhookDrainer


def verify(secret: str, hit: HttpHit, tolerance_s: float = 300) -> bool:
    """What a receiver does (docs/webhooks.md): HMAC-SHA256 of '<timestamp>.<raw body>', fresh timestamp."""
    ts = hit.headers["x-lifeline-timestamp"]
    if abs(time.time() - int(ts)) > tolerance_s:
        return False
    expected = "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + hit.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, hit.headers["x-lifeline-signature"])


class Receiver:
    """A subscriber's endpoint: answers `status` (settable while it runs; a callable gets the hit), keeps every
    request, and parses the JSON body of each."""

    def __init__(self, status: int | Callable[[HttpHit], int] = 200) -> None:
        self.status = status
        self._lock = threading.Lock()
        self.log: list[tuple[HttpHit, int]] = []  # every request with the status it got
        self.peer = HttpPeer(self._respond)
        self.port = 0

    def _respond(self, hit: HttpHit, n: int) -> tuple[int, dict[str, str], bytes]:
        status = self.status(hit) if callable(self.status) else self.status
        with self._lock:
            self.log.append((hit, status))
        return status, {"Content-Type": "text/plain"}, b"ok"

    def start(self) -> Receiver:
        self.port = self.peer.start()
        return self

    def stop(self) -> None:
        self.peer.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def hits(self) -> list[HttpHit]:
        with self._lock:
            return [h for h, _ in self.log]

    def accepted(self) -> list[dict[str, Any]]:
        """Bodies the receiver answered 2xx, in arrival order."""
        with self._lock:
            pairs = list(self.log)
        return [json.loads(h.body) for h, status in pairs if 200 <= status < 300]


@contextlib.asynccontextmanager
async def api(db_url: str, *, allow: Iterable[str] = (), resolver: Resolver | None = None,
              **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    from api.app import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(database_url=db_url, webhook_allow_networks=list(allow), **settings),
                     config_for(9))
    if resolver is not None:
        app.state.webhook_resolver = resolver
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            yield c


@contextlib.asynccontextmanager
async def draining(db_url: str, cipher: Cipher, *, allow: Iterable[str] = ("127.0.0.1/32",),
                   resolver: Resolver | None = None, poll_s: float = 0.05) -> AsyncIterator[WebhookDrainer]:
    """A drainer as a worker runs it, as the application role (row-level security applies)."""
    pool = await create_pool(db_url, min_size=1, max_size=5, role="lifeline_app")
    drainer = WebhookDrainer(pool, cipher, Guard(allow, resolver), EventLinks(), poll_s=poll_s)
    stop = asyncio.Event()
    task = asyncio.create_task(drainer.run(db_url, stop))
    try:
        yield drainer
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await pool.close()


async def add_versions(pool: asyncpg.Pool, n: int, org: str = "default") -> list[int]:
    """n configuration versions (each logs a config.changed event); returns their numbers."""
    from infra.store.config import add_version

    out = []
    for i in range(n):
        v = await add_version(pool, org, {"channels": [], "destinations": [], "n": i}, "tester")
        assert v is not None
        out.append(v.version)
    return out
