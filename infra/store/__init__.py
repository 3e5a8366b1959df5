"""The store layer: every SQL statement of Lifeline, one module per aggregate, each a set of named async functions.

Every statement runs in a transaction that names the org it acts for (`org_tx`): PostgreSQL's row-level security
(migration 0010) shows a transaction only the rows of `current_setting('lifeline.org')`. Work that must see every
org (the dispatcher's outbox, the flow monitor's snapshot, the audit chain verification) runs in `system_tx`, which
names its purpose from a closed list, logs it, counts it and (in the long-running processes) records it in the audit
log of the pseudo-org `_system`: one row per purpose per interval per process (`system_tx.summary`, with the number
of transactions), so cross-org reads leave a keyed trail without a row per dispatcher sweep or API-key request.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn: TypeAlias = asyncpg.Connection | PoolConnectionProxy[asyncpg.Record]
    Db: TypeAlias = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy[asyncpg.Record]

log = logging.getLogger("lifeline.store")

ORG_SETTING = "lifeline.org"
SYSTEM_SETTING = "lifeline.system"
# The only cross-org work there is; a new purpose is a reviewed change to this tuple (tests/stack/test_rls.py).
SYSTEM_PURPOSES = ("dispatch", "monitor_snapshot", "audit_verify", "api_key_lookup", "notification_delivery",
                   "config_versions", "webhook_delivery", "event_retention")
# How many system transactions each purpose ran in this process (the API exports it on /metrics as
# lifeline_store_cross_org_transactions_total).
system_tx_count: Counter[str] = Counter()
# The audit org of cross-org work: configured org names start with [a-z0-9], so no tenant can be called this; a token
# of org `_system` with role auditor reads it through /api/audit.
SYSTEM_AUDIT_ORG = "_system"


class _SystemAudit:
    """Whether and how often this process records its system transactions in the audit log (off until a process
    turns it on at start-up: `lifeline api|worker|dispatcher|listener|poller`)."""

    def __init__(self) -> None:
        self.seconds: float | None = None
        self.actor = "lifeline"
        self.written: dict[str, tuple[float, int]] = {}  # purpose -> (monotonic time, count) of the last row
        self.baseline: dict[str, int] = {}  # counts when the summary was turned on


system_audit = _SystemAudit()


def audit_system_transactions(seconds: float | None, actor: str = "lifeline") -> None:
    """Record system transactions in the `_system` audit log, one row per purpose per `seconds` (None: off)."""
    system_audit.seconds = seconds if seconds and seconds > 0 else None
    system_audit.actor = actor
    system_audit.written.clear()
    system_audit.baseline = dict(system_tx_count)

_SET_ORG = "select set_config('lifeline.org', $1, true), set_config('lifeline.system', '', true)"
_SET_SYSTEM = "select set_config('lifeline.system', $1, true), set_config('lifeline.org', '', true)"


@asynccontextmanager
async def _tx(db: Db, setup: str, value: str, **tx: Any) -> AsyncIterator[Conn]:
    if isinstance(db, asyncpg.Pool):
        # asyncpg's own transaction (not a hand-written BEGIN), so code inside may nest conn.transaction().
        async with db.acquire() as conn, conn.transaction(**tx):
            await conn.execute(setup, value)
            yield conn
    elif db.is_in_transaction():
        # The caller's transaction: the setting is transaction-local, so it holds until the caller commits.
        await db.execute(setup, value)
        yield db
    else:
        async with db.transaction(**tx):
            await db.execute(setup, value)
            yield db


@asynccontextmanager
async def org_tx(db: Db, org: str, **tx: Any) -> AsyncIterator[Conn]:
    """A transaction acting for one org: row-level security shows it that org's rows only.

    `db` is a pool (a connection is taken for the transaction) or a connection (its transaction is used, or one
    is started); `tx` are asyncpg transaction options (isolation, readonly).
    """
    if not org:
        raise ValueError("org_tx needs an org")
    async with _tx(db, _SET_ORG, org, **tx) as conn:
        yield conn


@asynccontextmanager
async def system_tx(db: Db, purpose: str, **tx: Any) -> AsyncIterator[Conn]:
    """A transaction that sees every org, for one of SYSTEM_PURPOSES only; logged and counted."""
    if purpose not in SYSTEM_PURPOSES:
        raise ValueError(f"{purpose!r} is not a cross-org purpose ({', '.join(SYSTEM_PURPOSES)})")
    system_tx_count[purpose] += 1
    log.debug("cross-org transaction: %s", purpose)
    if system_audit.seconds is not None:
        await _record_system_tx(db, purpose)
    async with _tx(db, _SET_SYSTEM, purpose, **tx) as conn:
        yield conn


async def _record_system_tx(db: Db, purpose: str) -> None:
    """The first system transaction of a purpose, then at most one per interval, writes a summary audit row."""
    now = time.monotonic()
    last = system_audit.written.get(purpose)
    if last is not None and now - last[0] < (system_audit.seconds or 0):
        return
    if not isinstance(db, asyncpg.Pool) and db.is_in_transaction():
        return  # inside the caller's transaction (perhaps read-only): the next one writes the summary
    from infra.store.audit import append

    count = system_tx_count[purpose] - (last[1] if last else system_audit.baseline.get(purpose, 0))
    system_audit.written[purpose] = (now, system_tx_count[purpose])
    try:
        await append(db, org_id=SYSTEM_AUDIT_ORG, actor=system_audit.actor, action="system_tx.summary",
                     subject=purpose, role="system",
                     detail={"transactions": count, "since_seconds": None if last is None else round(now - last[0]),
                             "interval_seconds": system_audit.seconds})
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RuntimeError) as exc:
        # The system transaction itself decides whether the store is usable; the summary is written next time.
        # RuntimeError: this process has no audit key (no LIFELINE_AUDIT_KEY nor store key to derive it from).
        system_audit.written[purpose] = last if last is not None else \
            (now - (system_audit.seconds or 0), system_audit.baseline.get(purpose, 0))
        log.warning("cross-org transaction summary not audited: %s", type(exc).__name__)


async def ping(db: Db) -> None:
    """A round trip to the database (readiness); reads no table."""
    await db.fetchval("select 1")


async def db_now(db: Db) -> Any:
    """The database clock, the clock that stamps the rows."""
    return await db.fetchval("select now()")
