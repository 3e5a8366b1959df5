"""Webhook subscriptions against a real local HTTP receiver: the API (SSRF checks, roles, org walls, audit), signed
ordered delivery through a receiver outage, dead letters after the retry budget and their replay, send-time SSRF
checks with a DNS answer that changes, and events of a transaction that commits late."""

from __future__ import annotations

from typing import Any

import asyncpg

from infra.crypto import Cipher
from tests.delivery.harness import bearer, wait_for
from tests.webhooks.conftest import Receiver, add_versions, api, draining, verify

ADMIN, OPERATOR = bearer("admin"), bearer("operator")
FAST = {"initial_interval_s": 0.05, "maximum_interval_s": 0.3, "max_attempts": 100}


async def subscribe(client: Any, url: str, headers: dict[str, str] = ADMIN, **fields: Any) -> dict[str, Any]:
    r = await client.post("/api/webhooks", json={"url": url, "events": ["config.changed"], **FAST, **fields},
                          headers=headers)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def statuses(pool: asyncpg.Pool, sub_id: str) -> list[tuple[int, str, int]]:
    rows = await pool.fetch("select seq, status, attempts from webhook_deliveries where subscription_id = $1"
                            " order by seq", sub_id)
    return [(r["seq"], r["status"], r["attempts"]) for r in rows]


async def test_create_refuses_internal_urls_unless_allow_listed_and_shows_the_secret_once(
        db_url: str, pool: asyncpg.Pool) -> None:
    async with api(db_url) as c:
        for url in ("http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://169.254.169.254/latest/",
                    "http://10.0.0.1/h", "http://[::1]/h", "gopher://example.org/"):
            r = await c.post("/api/webhooks", json={"url": url, "events": ["*"]}, headers=ADMIN)
            assert r.status_code == 422, (url, r.text)
            assert r.json()["field"] == "url", r.text
        r = await c.post("/api/webhooks", json={"url": "https://93.184.216.34/h", "events": ["case.*", "nope"]},
                         headers=ADMIN)
        assert (r.status_code, r.json()["field"]) == (422, "events[1]"), r.text
        r = await c.post("/api/webhooks", json={"url": "https://93.184.216.34/h", "events": ["*"]},
                         headers=OPERATOR)
        assert r.status_code == 403
    assert await pool.fetchval("select count(*) from webhook_subscriptions") == 0

    async with api(db_url, allow=["127.0.0.1/32"]) as c:
        created = await subscribe(c, "http://127.0.0.1:9/hook", events=["delivery.*", "case.opened"])
        assert created["secret"].startswith("whsec_") and created["id"].startswith("wh_")
        stored = await pool.fetchval("select secret_enc from webhook_subscriptions where id = $1", created["id"])
        assert created["secret"].encode() not in stored  # encrypted with the store key
        listed = (await c.get("/api/webhooks", headers=OPERATOR)).json()["items"]
        assert [w["id"] for w in listed] == [created["id"]] and "secret" not in listed[0]
        one = await c.get(f"/api/webhooks/{created['id']}", headers=OPERATOR)
        assert one.status_code == 200 and "secret" not in one.json()
        r = await c.patch(f"/api/webhooks/{created['id']}", json={"url": "http://192.168.0.3/x"}, headers=ADMIN)
        assert (r.status_code, r.json()["field"]) == (422, "url")
        r = await c.patch(f"/api/webhooks/{created['id']}", json={"rotate_secret": True, "description": "ops"},
                          headers=ADMIN)
        assert r.status_code == 200 and r.json()["secret"] not in (None, created["secret"])
        assert r.json()["description"] == "ops"
        assert (await c.delete(f"/api/webhooks/{created['id']}", headers=OPERATOR)).status_code == 403
        assert (await c.delete(f"/api/webhooks/{created['id']}", headers=ADMIN)).status_code == 204
        assert (await c.get(f"/api/webhooks/{created['id']}", headers=OPERATOR)).status_code == 404
    audit = await pool.fetch("select action, detail::text as detail from audit_log where action like 'webhook.%'"
                             " order by id")
    assert [a["action"] for a in audit] == ["webhook.create", "webhook.update", "webhook.delete"]
    assert not any("whsec_" in a["detail"] for a in audit)


async def test_org_walls_subscriptions_deliveries_and_the_event_log(db_url: str, pool: asyncpg.Pool) -> None:
    a, b = bearer("admin", org="org-a"), bearer("admin", org="org-b")
    async with api(db_url, allow=["127.0.0.1/32"]) as c:
        sub = await subscribe(c, "http://127.0.0.1:9/hook", headers=a)
        path = f"/api/webhooks/{sub['id']}"
        assert (await c.get("/api/webhooks", headers=b)).json()["items"] == []
        assert (await c.get(path, headers=b)).status_code == 404
        assert (await c.patch(path, json={"enabled": False}, headers=b)).status_code == 404
        assert (await c.post(f"{path}/test", headers=b)).status_code == 404
        assert (await c.get(f"{path}/deliveries", headers=b)).status_code == 404
        assert (await c.post(f"{path}/replay", json={}, headers=b)).status_code == 404
        assert (await c.delete(path, headers=b)).status_code == 404
        assert (await c.get(path, headers=a)).json()["enabled"] is True

        await add_versions(pool, 2, org="org-a")
        await add_versions(pool, 1, org="org-b")
        seen_a = (await c.get("/api/events/log", headers=a)).json()["items"]
        seen_b = (await c.get("/api/events/log", headers=b)).json()["items"]
        assert [e["data"]["version"] for e in seen_a] == [2, 1]
        assert [e["data"]["version"] for e in seen_b] == [1]
        assert (await c.get(f"/api/events/log/{seen_a[0]['id']}", headers=b)).status_code == 404
        assert (await c.get(f"/api/events/log/{seen_a[0]['id']}", headers=a)).status_code == 200


async def test_signed_events_arrive_in_order_through_a_receiver_outage(
        db_url: str, pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    receiver = Receiver(503).start()  # down: every request fails until it comes back
    try:
        async with api(db_url, allow=["127.0.0.1/32"]) as c, draining(db_url, store_cipher):
            sub = await subscribe(c, receiver.url)
            versions = await add_versions(pool, 6)
            # Down for a while: the head event is retried with backoff, nothing behind it overtakes it.
            await wait_for(lambda: len(receiver.hits) >= 5, timeout=30)
            versions += await add_versions(pool, 6)
            receiver.status = 200
            await wait_for(lambda: len(receiver.accepted()) >= 12, timeout=60)
            page = (await c.get(f"/api/webhooks/{sub['id']}/deliveries", headers=OPERATOR)).json()
    finally:
        receiver.stop()

    got = receiver.accepted()
    assert [e["sequence"] for e in got] == list(range(1, 13))
    assert [e["data"]["version"] for e in got] == versions
    assert [e["type"] for e in got] == ["config.changed"] * 12
    assert all(e["subscription"] == sub["id"] and e["org"] == "default" for e in got)
    assert all(verify(sub["secret"], h) for h in receiver.hits), "every request, retries included, is signed"
    assert not verify("whsec_not-the-secret-at-all", receiver.hits[0])
    failed_first = [e for e in got if e["attempt"] > 1]
    assert failed_first and failed_first[0]["sequence"] == 1  # the head waited, the rest queued behind it
    assert {h.headers["x-lifeline-event"] for h in receiver.hits} == {"config.changed"}
    assert all(h.headers["x-lifeline-subscription"] == sub["id"] for h in receiver.hits)
    assert got[0]["links"]["config"].endswith("/api/config/versions/1")
    assert [d["status"] for d in page["items"]] == ["delivered"] * 12
    # The first sends' order on the wire: the sequence never goes back.
    wire = [int(h.headers["x-lifeline-sequence"]) for h in receiver.hits]
    assert wire == sorted(wire)


async def test_dead_letter_after_the_retry_budget_then_replay_in_order(
        db_url: str, pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    receiver = Receiver(500).start()
    try:
        async with api(db_url, allow=["127.0.0.1/32"]) as c, draining(db_url, store_cipher):
            sub = await subscribe(c, receiver.url, max_attempts=3)
            versions = await add_versions(pool, 2)

            async def both_dead() -> bool:
                return [s for _, s, _ in await statuses(pool, sub["id"])] == ["dead_lettered"] * 2

            await wait_for(both_dead, timeout=30)
            assert await statuses(pool, sub["id"]) == [(1, "dead_lettered", 3), (2, "dead_lettered", 3)]
            assert [int(h.headers["x-lifeline-sequence"]) for h in receiver.hits] == [1, 1, 1, 2, 2, 2]
            dead = (await c.get(f"/api/webhooks/{sub['id']}/deliveries?status=dead_lettered",
                                headers=OPERATOR)).json()["items"]
            assert {d["last_error"] for d in dead} == {"WebhookFailed: HTTP 500"}
            assert (await c.get(f"/api/webhooks/{sub['id']}", headers=OPERATOR)).json()["queue"] == \
                {"dead_lettered": 2}

            receiver.status = 200
            r = await c.post(f"/api/webhooks/{sub['id']}/replay", json={}, headers=OPERATOR)
            assert r.status_code == 403
            r = await c.post(f"/api/webhooks/{sub['id']}/replay", json={}, headers=ADMIN)
            assert r.status_code == 202 and len(r.json()["queued"]) == 2
            await wait_for(lambda: len(receiver.accepted()) == 2, timeout=30)
            again = await c.post(f"/api/webhooks/{sub['id']}/replay", json={}, headers=ADMIN)
            assert again.json()["queued"] == []  # replayed once; nothing left to replay
    finally:
        receiver.stop()
    got = receiver.accepted()
    assert [(e["sequence"], e["data"]["version"], e["redelivery"]) for e in got] == \
        [(3, versions[0], True), (4, versions[1], True)]
    assert all(verify(sub["secret"], h) for h in receiver.hits)
    assert await pool.fetchval("select count(*) from audit_log where action = 'webhook.replay'") == 2


async def test_a_4xx_answer_dead_letters_at_once_and_the_queue_moves_on(
        db_url: str, pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    receiver = Receiver(lambda hit: 410 if hit.headers["x-lifeline-sequence"] == "1" else 204).start()
    try:
        async with api(db_url, allow=["127.0.0.1/32"]) as c, draining(db_url, store_cipher):
            sub = await subscribe(c, receiver.url)
            await add_versions(pool, 3)

            async def settled() -> bool:  # a batch's successes are recorded together, after the batch
                return await statuses(pool, sub["id"]) == [(1, "dead_lettered", 1), (2, "delivered", 1),
                                                           (3, "delivered", 1)]

            await wait_for(settled, timeout=30)
    finally:
        receiver.stop()
    assert len(receiver.accepted()) == 2


async def test_send_time_check_follows_dns_and_connects_to_the_checked_address(
        db_url: str, pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    """Created while the name resolves to a public address; at send time it resolves to loopback (rebinding):
    refused without the allow-list, and with it the request goes to the checked address with the name as Host."""
    receiver = Receiver(200).start()
    answers = {"hooks.example.test": ["93.184.216.34"]}

    async def resolver(host: str) -> list[str]:
        if host not in answers:
            raise OSError("NXDOMAIN")
        return answers[host]

    url = f"http://hooks.example.test:{receiver.port}/hook"
    try:
        async with api(db_url, resolver=resolver) as c:
            sub = await subscribe(c, url)  # public at creation: accepted without any allow-list
            answers["hooks.example.test"] = ["127.0.0.1"]
            async with draining(db_url, store_cipher, allow=(), resolver=resolver):
                await add_versions(pool, 1)

                async def refused() -> bool:
                    return await statuses(pool, sub["id"]) == [(1, "dead_lettered", 1)]

                await wait_for(refused, timeout=30)
            assert receiver.hits == []
            error = await pool.fetchval("select last_error from webhook_deliveries where subscription_id = $1",
                                        sub["id"])
            assert error.startswith("AddressRefused: hooks.example.test resolves to 127.0.0.1, a loopback")
            # The test route applies the same check.
            r = await c.post(f"/api/webhooks/{sub['id']}/test", headers=ADMIN)
            assert r.status_code == 200 and r.json()["error_type"] == "AddressRefused" and not r.json()["ok"]

            async with draining(db_url, store_cipher, allow=("127.0.0.1/32",), resolver=resolver):
                assert (await c.post(f"/api/webhooks/{sub['id']}/replay", json={}, headers=ADMIN)).status_code == 202
                await wait_for(lambda: len(receiver.accepted()) == 1, timeout=30)
    finally:
        receiver.stop()
    [hit] = receiver.hits
    assert hit.headers["host"] == f"hooks.example.test:{receiver.port}"
    assert verify(sub["secret"], hit)


async def test_test_route_sends_a_signed_ping_and_reports_the_answer(db_url: str, pool: asyncpg.Pool) -> None:
    receiver = Receiver(202).start()
    try:
        async with api(db_url, allow=["127.0.0.1/32"]) as c:
            sub = await subscribe(c, receiver.url)
            r = await c.post(f"/api/webhooks/{sub['id']}/test", headers=ADMIN)
            assert r.status_code == 200 and r.json()["ok"] and r.json()["status"] == 202, r.text
            receiver.status = 503
            r = await c.post(f"/api/webhooks/{sub['id']}/test", headers=ADMIN)
            assert r.json() == {"ok": False, "status": 503, "error_type": "WebhookFailed", "error": "HTTP 503",
                                "latency_ms": r.json()["latency_ms"]}
            assert (await c.post(f"/api/webhooks/{sub['id']}/test", headers=OPERATOR)).status_code == 403
    finally:
        receiver.stop()
    first = receiver.hits[0]
    assert verify(sub["secret"], first) and first.headers["x-lifeline-event"] == "webhook.test"
    assert await pool.fetchval("select count(*) from audit_log where action = 'webhook.test'") == 2
    assert await pool.fetchval("select count(*) from webhook_deliveries") == 0  # not queued, not numbered


async def test_an_event_of_a_transaction_that_commits_late_is_not_skipped(
        db_url: str, pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    """Ids are handed out at insert, not at commit: a cursor over ids alone would pass the slow transaction's
    event. The drainer admits only events of finished transactions, in their order."""
    receiver = Receiver(200).start()
    try:
        async with api(db_url, allow=["127.0.0.1/32"]) as c, draining(db_url, store_cipher) as drainer:
            await subscribe(c, receiver.url)
            slow = await pool.acquire()
            tx = slow.transaction()
            await tx.start()
            await slow.execute("insert into config_versions (org_id, version, document, author)"
                               " values ('default', 100, '{}', 'slow')")
            await add_versions(pool, 1)  # commits after the slow one began, before it ends
            rounds = drainer.admissions
            await wait_for(lambda: drainer.admissions >= rounds + 3, timeout=30)  # looked, and found nothing
            assert receiver.hits == []
            await tx.commit()
            await pool.release(slow)
            await wait_for(lambda: len(receiver.accepted()) == 2, timeout=30)
    finally:
        receiver.stop()
    assert [(e["sequence"], e["data"]["version"]) for e in receiver.accepted()] == [(1, 100), (2, 1)]


async def test_filters_select_by_channel_destination_and_message_type(db_url: str, pool: asyncpg.Pool) -> None:
    from infra.store import webhooks as store

    async with api(db_url, allow=["127.0.0.1/32"]) as c:
        sub = await subscribe(c, "http://127.0.0.1:9/h", events=["delivery.*"], destinations=["lab"],
                              message_types=["ADT^*"])
    rows = [("delivery.delivered", "lab", "ADT^A08"), ("delivery.delivered", "fhir", "ADT^A08"),
            ("delivery.dead_lettered", "lab", "ORU^R01"), ("message.received", None, "ADT^A08"),
            ("delivery.dead_lettered", "lab", "ADT^A01")]
    for t, dest, mt in rows:
        await pool.execute("insert into events (org_id, type, destination, message_type) values ('default', $1, $2,"
                           " $3)", t, dest, mt)
    assert await store.admit(pool, "default", sub["id"]) == 2
    got = await pool.fetch("select d.seq, e.type, e.message_type from webhook_deliveries d join events e"
                           " on e.id = d.event_id order by d.seq")
    assert [(r["seq"], r["type"], r["message_type"]) for r in got] == [
        (1, "delivery.delivered", "ADT^A08"), (2, "delivery.dead_lettered", "ADT^A01")]
    assert await store.admit(pool, "default", sub["id"]) == 0  # the cursor moved past what it skipped too


async def test_admission_follows_transaction_order_across_a_change_in_the_number_of_digits(
        db_url: str, pool: asyncpg.Pool) -> None:
    """Transaction ids 8, 9, 10, 99, 100, 101: sorted as text they go 10, 100, 101, 8, 9, 99. Admission must
    queue them in numeric order and leave its cursor on the highest, so nothing is queued twice — once the cluster's
    transaction ids passed 999 the drainer had sent later events before earlier ones and then sent them again."""
    from infra.store import webhooks as store

    async with api(db_url, allow=["127.0.0.1/32"]) as c:
        sub = await subscribe(c, "http://127.0.0.1:9/h")
    await pool.execute("update webhook_subscriptions set cursor_xid = '1'::xid8 where id = $1", sub["id"])
    xids = [101, 99, 10, 8, 9, 100]  # below any live id (finished); inserted out of order, like the log's ids
    for x in xids:
        await pool.execute("insert into events (org_id, type, xid, subject) values ('default', 'config.changed',"
                           " $1::text::xid8, $1)", str(x))

    async def queued() -> list[tuple[int, str]]:
        rows = await pool.fetch("select d.seq, e.subject from webhook_deliveries d join events e on e.id = d.event_id"
                                " where d.subscription_id = $1 order by d.seq", sub["id"])
        return [(r["seq"], r["subject"]) for r in rows]

    in_order = [str(x) for x in sorted(xids)]
    assert await store.admit(pool, "default", sub["id"], batch=4) == 4  # a full batch: the cursor is its last row
    assert await store.admit(pool, "default", sub["id"], batch=4) == 2  # the rest: the cursor is the log's last
    assert await store.admit(pool, "default", sub["id"], batch=4) == 0
    assert await queued() == list(enumerate(in_order, start=1))
    cursor = await pool.fetchrow("select cursor_xid::text as x, last_seq from webhook_subscriptions where id = $1",
                                 sub["id"])
    assert cursor is not None and (cursor["x"], cursor["last_seq"]) == ("101", 6)
