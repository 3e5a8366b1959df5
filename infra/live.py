"""Live configuration: what every process routes, renders and watches with, following PostgreSQL's newest version.

Each org's configuration is stored as numbered versions (infra/store/config.py). A process merges every org's
newest version into one LifelineConfig (`current`), follows changes through LISTEN/NOTIFY (with a poll as a
safety net), and calls its subscribers, so listeners, the dispatcher and the workers change without a restart.
`lifeline.yaml` is the bootstrap: at start, an org whose part of the file differs from what the file last gave
gets it as a new version (so the first start stores version 1, and an unchanged file keeps API-made versions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, get_origin

import asyncpg

from infra.config import ConfigError, LifelineConfig, validate_config
from infra.store import config as store

log = logging.getLogger("lifeline.config")

Subscriber = Callable[[LifelineConfig], Awaitable[None] | None]
# Top-level lists (channels, destinations, engines, sla, tables, ...) hold per-org items; the other sections
# (remediation, monitor) are process-wide: the default org's version decides them.
_PER_ORG = tuple(n for n, f in LifelineConfig.model_fields.items() if get_origin(f.annotation) is list)
_SHARED = tuple(n for n in LifelineConfig.model_fields if n not in _PER_ORG)


def dump(config: LifelineConfig) -> dict[str, Any]:
    """The JSON form of a configuration (what `GET /api/config` returns and `lifeline config export` writes)."""
    return config.model_dump(mode="json", by_alias=True, exclude_defaults=True)


def orgs_of(config: LifelineConfig) -> list[str]:
    found = {x.org for section in _PER_ORG for x in getattr(config, section)}
    return sorted(found or {"default"})


def org_document(config: LifelineConfig, org: str) -> dict[str, Any]:
    """One org's part of a configuration, in JSON form (the shared sections come along)."""
    full = dump(config)
    doc: dict[str, Any] = {}
    for section in _PER_ORG:
        items = [d for d, x in zip(full.get(section, []), getattr(config, section), strict=True) if x.org == org]
        if items:
            doc[section] = items
    for section in _SHARED:
        if section in full:
            doc[section] = full[section]
    return doc


def check_org_document(document: Any, org: str, file: str = "config") -> LifelineConfig:
    """Validate one org's document: key-path errors, and nothing in it may belong to another org."""
    config = validate_config(document, file)
    problems = [(f"{section}[{i}].org", f"must be {org!r} (the caller's org)")
                for section in _PER_ORG for i, x in enumerate(getattr(config, section)) if x.org != org]
    if problems:
        raise ConfigError(file, problems)
    return config


def merge(documents: dict[str, dict[str, Any]]) -> LifelineConfig:
    """Every org's document as one configuration (validated, so cross-org conflicts such as ports show)."""
    merged: dict[str, Any] = {section: [] for section in _PER_ORG}
    for org in sorted(documents):
        doc = documents[org]
        for section in _PER_ORG:
            merged[section] += [{**item, "org": org} for item in doc.get(section, [])]
    shared_from = documents.get("default") or (documents[min(documents)] if documents else {})
    for section in _SHARED:
        if section in shared_from:
            merged[section] = shared_from[section]
    return validate_config(merged, "configuration")


class ConfigSource:
    """The configuration a process follows: `current` (all orgs, newest versions), `versions` per org, and any
    earlier version by number for deliveries pinned to it. Without a pool it is the file's config, version None."""

    def __init__(self, base: LifelineConfig, pool: asyncpg.Pool | None = None) -> None:
        self.base = base
        self.pool = pool
        self.current = base
        self.versions: dict[str, int] = {}
        self._subscribers: list[Subscriber] = []
        self._pinned: OrderedDict[tuple[str, int], LifelineConfig] = OrderedDict()
        self._lock = asyncio.Lock()
        self._started = False

    def subscribe(self, fn: Subscriber) -> None:
        """Call fn(config) after each change (and not now)."""
        self._subscribers.append(fn)

    def version(self, org: str) -> int | None:
        return self.versions.get(org)

    async def start(self, author: str = "file:lifeline.yaml") -> ConfigSource:
        """Store the file's part where it changed (see bootstrap), then load the newest versions."""
        if self.pool is not None:
            await bootstrap(self.pool, self.base, author)
            self._started = True
            await self.refresh()
        return self

    async def refresh(self) -> bool:
        """Load the newest versions; True (and subscribers called) when something changed."""
        if self.pool is None:
            return False
        async with self._lock:
            numbers = await store.version_numbers(self.pool)
            if numbers == self.versions:
                return False
            rows = await store.current_versions(self.pool)
            try:
                merged = merge({r.org_id: r.document for r in rows})
            except ConfigError as exc:
                log.error("configuration versions %s cannot be combined; keeping the previous one: %s",
                          {r.org_id: r.version for r in rows}, exc)
                return False
            self.current = merged
            self.versions = {r.org_id: r.version for r in rows}
        log.info("configuration now at versions %s", self.versions)
        for fn in self._subscribers:
            result = fn(merged)
            if asyncio.iscoroutine(result):
                await result
        return True

    async def pinned(self, org: str, version: int | None) -> LifelineConfig:
        """The configuration as it was at `version` of `org` (None: the current one)."""
        if version is None or self.pool is None or self.versions.get(org) == version:
            return self.current
        key = (org, version)
        found = self._pinned.get(key)
        if found is not None:
            self._pinned.move_to_end(key)
            return found
        row = await store.get_version(self.pool, org, version)
        if row is None:
            raise LookupError(f"configuration version {version} of org {org!r} does not exist")
        config = merge({org: row.document})
        self._pinned[key] = config
        while len(self._pinned) > 64:
            self._pinned.popitem(last=False)
        return config

    async def follow(self, database_url: str, stop: asyncio.Event, poll_seconds: float = 5.0) -> None:
        """Refresh on every NOTIFY of a new version, and every poll_seconds in case a notification was missed."""
        wake = asyncio.Event()
        conn: asyncpg.Connection | None = None
        while not stop.is_set():
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(database_url)
                    await conn.add_listener(store.CONFIG_CHANNEL, lambda *_: wake.set())
                wake.clear()
                if self._started:
                    await self.refresh()
                else:
                    await self.start()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("cannot follow configuration versions (%s); retrying", type(exc).__name__)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
                conn = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_seconds):
                    waiters = {asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())}
                    try:
                        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for w in waiters:
                            w.cancel()
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


async def bootstrap(pool: asyncpg.Pool, config: LifelineConfig, author: str) -> list[int]:
    """A new version from the file for each org whose part of the file changed since the file last gave one
    (the first start stores version 1; an unchanged file keeps what the API stored since)."""
    added: list[int] = []
    for org in orgs_of(config):
        row = await store.add_file_version(pool, org, org_document(config, org), author)
        if row is not None:
            added.append(row.version)
    return added


async def start_source(config: LifelineConfig, pool: asyncpg.Pool, database_url: str,
                       stop: asyncio.Event) -> tuple[ConfigSource, asyncio.Task[None]]:
    """A started ConfigSource and the task that keeps it following (ends with `stop`). PostgreSQL down at start:
    the file's configuration serves until the follower can store and read versions."""
    source = ConfigSource(config, pool)
    try:
        await source.start()
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("configuration versions unavailable (%s); using the file until PostgreSQL answers",
                    type(exc).__name__)
    return source, asyncio.create_task(source.follow(database_url, stop))
