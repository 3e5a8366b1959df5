"""The keyed audit chain: an HMAC per row under LIFELINE_AUDIT_KEY, so a database superuser who edits, deletes,
reorders or re-chains rows is found (the first bad row named), a deleted tail is caught by the exported heads,
and concurrent writers never fork the chain."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC

import asyncpg
import httpx
import pytest
from pydantic import ValidationError

from api.app import create_app
from api.auth import mint_token
from infra import audit_heads
from infra.db import create_pool, migrate, migration_files
from infra.devstack import EmbeddedPostgres
from infra.store.audit import (
    AuditKeys,
    append,
    canonical,
    list_audit,
    parse_head,
    row_mac,
    use_keys,
    verify_chain,
)
from tests.conftest import TEST_JWT_SECRET, make_settings
from tests.monitoring.conftest import make_config
from tests.security.test_production import production
from workers.cli import main


async def write(pool: asyncpg.Pool, n: int, org: str = "default", start: int = 0) -> list[int]:
    for i in range(start, start + n):
        await append(pool, org_id=org, actor=f"user{i % 2}", action="message.read", subject=f"s{i}",
                     role="operator", detail={"i": i, "why": "test ü"})
    return sorted(r["id"] for r in await list_audit(pool, org, limit=1000))


@pytest.fixture
async def tamper(superuser_pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """The attacker: the database superuser, with the append-only trigger switched off."""
    async with superuser_pool.acquire() as c:
        await c.execute("alter table audit_log disable trigger audit_log_no_update_delete")
        yield c
        await c.execute("alter table audit_log enable trigger audit_log_no_update_delete")


async def test_rows_are_keyed_and_sequenced_per_org(app_pool: asyncpg.Pool, superuser_pool: asyncpg.Pool) -> None:
    await write(app_pool, 3)
    await write(app_pool, 2, org="org-b")
    rows = await superuser_pool.fetch("select org_id, seq, key_id, prev_hash, hash from audit_log order by id")
    assert [(r["org_id"], r["seq"]) for r in rows] == [("default", 1), ("default", 2), ("default", 3),
                                                       ("org-b", 1), ("org-b", 2)]
    assert {r["key_id"] for r in rows} == {"store:k1"}
    assert rows[1]["prev_hash"] == rows[0]["hash"] and rows[3]["prev_hash"] is None
    result = await verify_chain(superuser_pool)
    assert result.ok and result.rows == 5 and result.orgs == 2 and result.unkeyed == 0


async def test_an_edited_row_is_named_even_when_the_attacker_rechains(app_pool: asyncpg.Pool,
                                                                     superuser_pool: asyncpg.Pool,
                                                                     tamper: asyncpg.Connection) -> None:
    ids = await write(app_pool, 5)
    await tamper.execute("update audit_log set actor = 'mallory' where id = $1", ids[2])
    result = await verify_chain(superuser_pool)
    assert not result.ok and result.broken_id == ids[2] and result.broken_seq == 3 and "MAC mismatch" in result.reason

    # Re-chaining from the edited row on, with a key the attacker made up (or plain SHA-256): still row 3.
    forged = AuditKeys("store:k1", {"store:k1": os.urandom(32)})
    rows = await superuser_pool.fetch("select * from audit_log where org_id = 'default' order by id")
    prev = rows[1]["hash"]
    for row in rows[2:]:
        digest = row_mac(forged.keys["store:k1"], prev, {**dict(row), "actor": "mallory"} if row["id"] == ids[2]
                         else row)
        await tamper.execute("update audit_log set prev_hash = $2, hash = $3 where id = $1", row["id"], prev, digest)
        prev = digest
    result = await verify_chain(superuser_pool)
    assert not result.ok and result.broken_id == ids[2] and "MAC mismatch" in result.reason


async def test_a_deleted_row_is_named(app_pool: asyncpg.Pool, superuser_pool: asyncpg.Pool,
                                      tamper: asyncpg.Connection) -> None:
    ids = await write(app_pool, 5)
    await tamper.execute("delete from audit_log where id = $1", ids[1])
    result = await verify_chain(superuser_pool)
    assert not result.ok and result.broken_id == ids[2] and "seq 3 follows seq 1" in result.reason
    assert "deleted" in result.reason


async def test_reordered_rows_are_named(app_pool: asyncpg.Pool, superuser_pool: asyncpg.Pool,
                                        tamper: asyncpg.Connection) -> None:
    ids = await write(app_pool, 5)

    async def swap(cols: tuple[str, ...]) -> None:
        select = f"select {', '.join(cols)} from audit_log where id = $1"
        a, b = await tamper.fetchrow(select, ids[1]), await tamper.fetchrow(select, ids[2])
        assert a is not None and b is not None
        sets = ", ".join(f"{c} = ${n + 2}" for n, c in enumerate(cols))
        for target, source in ((ids[1], b), (ids[2], a)):
            await tamper.execute(f"update audit_log set {sets} where id = $1", target, *source.values())

    # Moving whole rows (ids are identity columns: moving a row means moving its contents, MACs and seq included).
    await tamper.execute("drop index audit_log_org_seq")
    whole = ("seq", "at", "actor", "role", "action", "subject", "detail", "remote_addr", "prev_hash", "hash")
    await swap(whole)
    assert [r["subject"] for r in await superuser_pool.fetch("select subject from audit_log order by id")] == \
        ["s0", "s2", "s1", "s3", "s4"]
    result = await verify_chain(superuser_pool)
    assert not result.ok and result.broken_id == ids[1] and "seq 3 follows seq 1" in result.reason
    assert "moved" in result.reason
    await swap(whole)
    assert (await verify_chain(superuser_pool)).ok

    # Moving only the contents (seq and MACs left in place): the first moved row is named.
    await swap(("at", "actor", "role", "action", "subject", "detail", "remote_addr"))
    result = await verify_chain(superuser_pool)
    assert not result.ok and result.broken_id == ids[1] and "MAC mismatch" in result.reason


async def test_the_tail_deleted_is_caught_by_the_exported_head(app_pool: asyncpg.Pool, superuser_pool: asyncpg.Pool,
                                                                tamper: asyncpg.Connection,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    await write(app_pool, 4)
    await write(app_pool, 1, org="org-b")
    seen: dict[str, tuple[int, bytes]] = {}
    with caplog.at_level(logging.INFO, logger="lifeline.audit"):
        assert await audit_heads.export_heads(app_pool, seen) == 2
        assert await audit_heads.export_heads(app_pool, seen) == 0  # nothing moved: nothing logged
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("audit head:")]
    assert len(lines) == 2 and lines[0].startswith("audit head: org=default seq=4 hash=")
    head = "default:4:" + lines[0].rsplit("hash=", 1)[1]
    assert parse_head(head)[:2] == ("default", 4)

    await tamper.execute("delete from audit_log where org_id = 'default' and seq = 4")
    assert (await verify_chain(superuser_pool)).ok  # a shorter chain is a valid chain ...
    result = await verify_chain(superuser_pool, heads=[parse_head(head)])  # ... but not the exported one
    assert not result.ok and result.org_id == "default" and result.broken_seq == 4 and "tail" in result.reason

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lifeline.audit"):
        await audit_heads.export_heads(app_pool, seen)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "org default went back: seq 4" in errors[0]


async def test_the_cli_names_the_first_bad_row_and_checks_heads(app_pool: asyncpg.Pool, db_url: str,
                                                               tamper: asyncpg.Connection,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    ids = await write(app_pool, 3)

    async def verify(*extra: str) -> tuple[int, str]:
        code = await asyncio.to_thread(main, ["audit", "verify", "--database-url", db_url, *extra])
        return code, capsys.readouterr().out.strip()

    assert await verify() == (0, "ok: 3 rows")
    digest = await tamper.fetchval("select encode(hash, 'hex') from audit_log where id = $1", ids[2])
    assert await verify("--head", f"default:3:{digest}") == (0, "ok: 3 rows")
    await tamper.execute("delete from audit_log where id = $1", ids[2])
    code, out = await verify("--head", f"default:3:{digest}")
    assert code == 1 and "seq 3" in out and "tail" in out
    await tamper.execute("update audit_log set detail = '{\"i\": 99}' where id = $1", ids[0])
    code, out = await verify()
    assert code == 1 and out.startswith(f"broken: audit_log row {ids[0]} (seq 1) (org default): MAC mismatch")
    code = await asyncio.to_thread(main, ["audit", "verify", "--database-url", db_url, "--head", "nonsense"])
    assert code == 2


async def test_concurrent_writers_never_fork_the_chain(db_url: str, superuser_pool: asyncpg.Pool) -> None:
    # Two "processes" (pools) writing the same org's log at once.
    pools = [await create_pool(db_url, min_size=1, max_size=5, role="lifeline_app") for _ in range(2)]
    try:
        await asyncio.gather(*(append(pools[i % 2], org_id="default", actor="w", action="x", subject=str(i))
                               for i in range(60)))
    finally:
        for p in pools:
            await p.close()
    seqs = [r["seq"] for r in await superuser_pool.fetch("select seq from audit_log order by id")]
    assert seqs == list(range(1, 61))
    assert (await verify_chain(superuser_pool)).ok
    # And the database refuses a second row at a place already taken, whoever writes it.
    with pytest.raises(asyncpg.UniqueViolationError):
        await superuser_pool.execute("insert into audit_log (org_id, seq, actor, action, hash)"
                                     " values ('default', 60, 'x', 'x', '\\x00')")


async def test_rotated_keys_keep_old_rows_verifiable(app_pool: asyncpg.Pool, superuser_pool: asyncpg.Pool) -> None:
    old = base64.urlsafe_b64encode(os.urandom(32)).decode()
    new = base64.urlsafe_b64encode(os.urandom(32)).decode()
    use_keys(make_settings(audit_key=old, audit_key_id="a1").audit_keys())
    await write(app_pool, 2)
    rotated = make_settings(audit_key=new, audit_key_id="a2", audit_previous_keys=f"a1:{old}").audit_keys()
    use_keys(rotated)
    await write(app_pool, 2, start=2)
    assert [r["key_id"] for r in await superuser_pool.fetch("select key_id from audit_log order by id")] == \
        ["a1", "a1", "a2", "a2"]
    assert (await verify_chain(superuser_pool)).ok
    forgot = make_settings(audit_key=new, audit_key_id="a2").audit_keys()
    result = await verify_chain(superuser_pool, keys=forgot)
    assert not result.ok and result.broken_seq == 1 and "LIFELINE_AUDIT_PREVIOUS_KEYS" in result.reason


async def test_rows_from_before_the_keyed_chain_stay_verifiable_and_sealed(pg_server: EmbeddedPostgres) -> None:
    """An upgrade: rows chained the old unkeyed way get their seq, and the first keyed row seals them."""
    url = pg_server.create_database(f"up_{uuid.uuid4().hex[:8]}")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("select set_config('lifeline.system', 'migrate', false)")
        await conn.execute("create table schema_migrations (name text primary key,"
                           " applied_at timestamptz not null default now())")
        for path in migration_files():
            if path.name < "0080":
                await conn.execute(path.read_text())
                await conn.execute("insert into schema_migrations (name) values ($1)", path.name)
        prev = None
        from datetime import datetime
        for i in range(3):
            at = datetime.now(UTC)
            digest = hashlib.sha256((prev or b"") + canonical("default", at, "old", None, "x", f"o{i}", {},
                                                             None)).digest()
            await conn.execute("insert into audit_log (org_id, at, actor, action, subject, prev_hash, hash)"
                               " values ('default', $1, 'old', 'x', $2, $3, $4)", at, f"o{i}", prev, digest)
            prev = digest
    finally:
        await conn.close()
    await migrate(url)
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        await write(pool, 2)
        result = await verify_chain(pool)
        assert result.ok and result.rows == 5 and result.unkeyed == 3
        seqs = [(r["seq"], r["key_id"]) for r in await pool.fetch("select seq, key_id from audit_log order by id")]
        assert seqs == [(1, None), (2, None), (3, None), (4, "store:k1"), (5, "store:k1")]
        async with pool.acquire() as c:
            await c.execute("alter table audit_log disable trigger audit_log_no_update_delete")
            # Rewriting an old row and re-chaining the old part cannot reach past the first keyed row.
            rows = await c.fetch("select * from audit_log order by id")
            prev = None
            for row in rows[:3]:
                subject = "rewritten" if row["seq"] == 2 else row["subject"]
                digest = hashlib.sha256((prev or b"") + canonical("default", row["at"].astimezone(UTC), "old", None,
                                                                 "x", subject, {}, None)).digest()
                await c.execute("update audit_log set subject = $2, prev_hash = $3, hash = $4 where id = $1",
                                row["id"], subject, prev, digest)
                prev = digest
        result = await verify_chain(pool)
        assert not result.ok and result.broken_seq == 4 and "prev_hash" in result.reason
    finally:
        await pool.close()


async def test_verify_route_for_auditors(db_url: str, app_pool: asyncpg.Pool, tamper: asyncpg.Connection) -> None:
    ids = await write(app_pool, 3)
    await write(app_pool, 2, org="org-b")
    app = create_app(make_settings(database_url=db_url), make_config())

    def bearer(role: str, org: str = "default") -> dict[str, str]:
        return {"Authorization": "Bearer " + mint_token(TEST_JWT_SECRET, subject="t", org=org, roles=[role])}

    async with app.router.lifespan_context(app), \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/api/audit/verify", headers=bearer("viewer"))).status_code == 403
        body = (await c.get("/api/audit/verify", headers=bearer("auditor"))).json()
        assert body["ok"] and body["rows"] == 3 and body["head"]["seq"] == 3 and body["broken_id"] is None
        head = f"default:3:{body['head']['hash']}"
        await tamper.execute("delete from audit_log where id = $1", ids[2])
        body = (await c.get("/api/audit/verify", params={"head": head}, headers=bearer("auditor"))).json()
        assert not body["ok"] and body["broken_seq"] == 3 and "tail" in body["reason"]
        await tamper.execute("update audit_log set actor = 'mallory' where id = $1", ids[1])
        body = (await c.get("/api/audit/verify", headers=bearer("auditor"))).json()
        assert not body["ok"] and body["broken_id"] == ids[1] and "MAC" in body["reason"]
        # Org B's chain is B's business: intact, and A's route never reads it.
        body = (await c.get("/api/audit/verify", headers=bearer("auditor", "org-b"))).json()
        assert body["ok"] and body["rows"] == 2
        r = await c.get("/api/audit/verify", params={"head": "bad"}, headers=bearer("auditor"))
        assert r.status_code == 422 and r.json()["field"] == "query.head"


def test_production_refuses_a_weak_or_shared_audit_key() -> None:
    with pytest.raises(ValidationError, match="LIFELINE_AUDIT_KEY: is not random"):
        make_settings(**production(audit_key=base64.urlsafe_b64encode(b"a" * 32).decode()))
    with pytest.raises(ValidationError, match="LIFELINE_AUDIT_KEY is not base64|LIFELINE_AUDIT_KEY must decode"):
        make_settings(**production(audit_key="FAKE-replace-with-base64-of-32-bytes"))
    values = production()
    with pytest.raises(ValidationError, match="LIFELINE_AUDIT_KEY: must differ"):
        make_settings(**{**values, "audit_key": values["store_key"]})
    good = make_settings(**production(audit_key=base64.urlsafe_b64encode(os.urandom(32)).decode()))
    assert good.audit_keys().current == "a1"


async def test_the_api_process_exports_heads_periodically(db_url: str, app_pool: asyncpg.Pool,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    await write(app_pool, 2)
    app = create_app(make_settings(database_url=db_url, audit_head_seconds=0.05), make_config())
    with caplog.at_level(logging.INFO, logger="lifeline.audit"):
        async with app.router.lifespan_context(app):
            await wait_for_log(caplog, "audit head: org=default seq=2 ")
            await write(app_pool, 1, start=2)
            await wait_for_log(caplog, "audit head: org=default seq=3 ")


async def wait_for_log(caplog: pytest.LogCaptureFixture, text: str) -> None:
    for _ in range(200):
        if any(r.getMessage().startswith(text) for r in caplog.records):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no log line {text!r} in 10 s")
