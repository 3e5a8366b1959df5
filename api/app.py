"""The FastAPI application: thin layer over Temporal and the store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.client import Client

from api import problems
from api.limits import BodyLimit
from api.routes import audit as audit_routes
from api.routes import (
    breakers,
    channels,
    codec,
    dashboard,
    dead_letters,
    events,
    flow,
    health,
    hl7,
    messages,
    metrics,
    remediations,
    sla,
    webhooks,
)
from api.routes import config as config_routes
from infra import audit_heads, tracing
from infra.config import LifelineConfig, get_config
from infra.crypto import Cipher, EncryptionCodec, data_converter
from infra.db import create_pool
from infra.live import ConfigSource
from infra.settings import Settings, get_settings
from infra.store import audit as audit_store

log = logging.getLogger("lifeline.api")


def temporal_connector(settings: Settings, cipher: Cipher) -> Callable[[], Awaitable[Client]]:
    """Connect on first use and keep the client; the API starts (and reports not-ready) without Temporal."""
    lock = asyncio.Lock()
    holder: list[Client] = []

    async def get() -> Client:
        if holder:
            return holder[0]
        async with lock:
            if not holder:
                holder.append(await Client.connect(
                    settings.temporal_address, namespace=settings.temporal_namespace,
                    data_converter=data_converter(cipher), interceptors=tracing.client_interceptors()))
        return holder[0]

    return get


class PathCors:
    """CORS for the configured origins (the Temporal Web UI); credentials (the session cookie) only on /api/codec,
    the one thing the Web UI calls with it."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        common: dict[str, Any] = {"allow_origins": origins, "allow_methods": ["*"], "allow_headers": ["*"]}
        self.with_credentials = CORSMiddleware(app, allow_credentials=True, **common)
        self.without = CORSMiddleware(app, allow_credentials=False, **common)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        target = self.with_credentials if path.startswith("/api/codec/") else self.without
        await target(scope, receive, send)


def create_app(settings: Settings | None = None, config: LifelineConfig | None = None, *,
               live: bool = False) -> FastAPI:
    """live: follow the configuration versions in PostgreSQL (the `lifeline api` process); tests pass a config."""
    settings = settings or get_settings()
    config = config or get_config()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # min_size=0: the API starts even when PostgreSQL is down and /readyz says so.
        app.state.pool = await create_pool(settings.database_url, min_size=0,
                                           max_size=settings.database_pool_max, role=settings.database_role)
        stop = asyncio.Event()
        following: asyncio.Task[None] | None = None
        if live:
            source = ConfigSource(config, app.state.pool)
            try:
                await source.start()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("configuration versions unavailable (%s); following them once PostgreSQL answers",
                            type(exc).__name__)
            app.state.source = source
            following = asyncio.create_task(source.follow(settings.database_url, stop))
        heads: asyncio.Task[None] | None = None
        if settings.audit_head_seconds > 0:
            heads = asyncio.create_task(audit_heads.run(app.state.pool, settings.audit_head_seconds, stop))
        try:
            yield
        finally:
            stop.set()
            if following is not None:
                await following
            if heads is not None:
                await heads
            await app.state.pool.close()

    app = FastAPI(title="Lifeline", version="0.1.0", lifespan=lifespan,
                  description="Self-healing HL7 v2 integration engine on Temporal")
    app.state.settings = settings
    app.state.config = config
    app.state.cipher = settings.cipher("codec")
    app.state.codec = EncryptionCodec(app.state.cipher)
    app.state.store_cipher = settings.cipher("store")
    audit_store.use_keys(settings.audit_keys())
    app.state.temporal = temporal_connector(settings, app.state.cipher)
    app.add_middleware(PathCors, origins=settings.cors_origins)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    problems.install(app)
    app.include_router(health.router)
    app.include_router(codec.router)
    app.include_router(channels.router)
    app.include_router(messages.router)
    app.include_router(dead_letters.router)
    app.include_router(hl7.router)
    app.include_router(remediations.router)
    app.include_router(dashboard.router)
    app.include_router(flow.router)
    app.include_router(breakers.router)
    app.include_router(metrics.router)
    app.include_router(sla.router)
    app.include_router(audit_routes.router)
    app.include_router(config_routes.router)
    app.include_router(webhooks.router)
    app.include_router(events.router)
    tracing.instrument_app(app)
    return app
