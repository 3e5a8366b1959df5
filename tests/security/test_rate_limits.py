"""Rate limits: token buckets per API key / user on ingress and per role elsewhere, shared through PostgreSQL,
answered with 429 problem JSON and Retry-After, counted on /metrics; a refused request stores nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from api.app import create_app
from api.auth import hash_api_key, mint_token, new_api_key
from infra.config import Channel, Destination, LifelineConfig, MllpOut, Route
from infra.store import api_keys
from tests.conftest import TEST_JWT_SECRET, make_settings
from tests.delivery.harness import adt

# One token per 20 s after the burst: no refill can sneak in while a test runs, and Retry-After is predictable.
SLOW = "0.05/3"
CONFIG = LifelineConfig(
    channels=[Channel(name="a-in", routes=[Route(to="a-lab")]),
              Channel(name="b-in", org="org-b", routes=[Route(to="b-lab")])],
    destinations=[Destination(name="a-lab", mllp=MllpOut(host="127.0.0.1", port=9)),
                  Destination(name="b-lab", org="org-b", mllp=MllpOut(host="127.0.0.1", port=9))])
PLAIN = {"Content-Type": "text/plain"}


def bearer(role: str, org: str = "default", subject: str = "tester") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(TEST_JWT_SECRET, subject=subject, org=org, roles=[role])}"}


@asynccontextmanager
async def api(db_url: str, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """One API process (its own app, lifespan and pool) over the test database."""
    app = create_app(make_settings(database_url=db_url, **settings), CONFIG)
    async with app.router.lifespan_context(app), \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield client


async def key(pool: asyncpg.Pool, org: str, name: str) -> dict[str, str]:
    value = new_api_key()
    await api_keys.create(pool, org, name, hash_api_key(value), "sender")
    return {"X-API-Key": value, **PLAIN}


async def post(client: httpx.AsyncClient, channel: str, headers: dict[str, str], cid: str) -> httpx.Response:
    return await client.post(f"/api/channels/{channel}/messages", content=adt(cid, "MRN1"), headers=headers)


def refusals(metrics_text: str) -> dict[tuple[str, str], float]:
    return {(s.labels["scope"], s.labels["role"]): s.value
            for f in text_string_to_metric_families(metrics_text) if f.name == "lifeline_rate_limit_refusals"
            for s in f.samples if s.name.endswith("_total")}


async def test_a_burst_beyond_the_limit_gets_429_with_retry_after_stores_nothing_and_counts(
        db_url: str, app_pool: asyncpg.Pool, superuser_pool: asyncpg.Pool) -> None:
    sender = await key(app_pool, "default", "epic")
    async with api(db_url, rate_limit_ingress=SLOW) as client:
        answers = [await post(client, "a-in", sender, f"B{i}") for i in range(5)]
        assert [r.status_code for r in answers] == [202, 202, 202, 429, 429]
        refused = answers[3]
        assert refused.headers["content-type"] == "application/problem+json"
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 20
        body = refused.json()
        assert body["status"] == 429 and body["title"] == "Too Many Requests" and body["scope"] == "ingress"
        assert body["retry_after"] == retry_after and "0.05 requests per second" in body["detail"]
        # The refused messages were never accepted: only the three first control ids are stored.
        stored = await superuser_pool.fetch("select control_id from messages order by control_id")
        assert [r["control_id"] for r in stored] == ["B0", "B1", "B2"]
        # The viewer's own API bucket is separate from the sender's ingress bucket.
        metrics = await client.get("/metrics", headers=bearer("viewer"))
        assert metrics.status_code == 200
        assert refusals(metrics.text) == {("ingress", "sender"): 2}


async def test_two_api_processes_share_one_bucket(db_url: str, app_pool: asyncpg.Pool) -> None:
    sender = await key(app_pool, "default", "epic")
    async with api(db_url, rate_limit_ingress="0.05/6") as one, api(db_url, rate_limit_ingress="0.05/6") as two:
        # Concurrently from both processes: exactly the burst gets through, whichever process answers.
        answers = await asyncio.gather(*(post(c, "a-in", sender, f"S{i}")
                                         for i, c in enumerate([one, two] * 5)))
        codes = sorted(r.status_code for r in answers)
        assert codes == [202] * 6 + [429] * 4
        metrics = await two.get("/metrics", headers=bearer("viewer"))
        assert refusals(metrics.text) == {("ingress", "sender"): 4}


async def test_limits_do_not_leak_across_orgs_keys_or_users(db_url: str, app_pool: asyncpg.Pool) -> None:
    # The same key name in two orgs, a second key in the same org: three buckets.
    a_epic, b_epic, a_cerner = (await key(app_pool, "default", "epic"), await key(app_pool, "org-b", "epic"),
                                await key(app_pool, "default", "cerner"))
    async with api(db_url, rate_limit_ingress="0.05/2", rate_limit_roles={"viewer": "0.05/2"}) as client:
        assert [(await post(client, "a-in", a_epic, f"A{i}")).status_code for i in range(3)] == [202, 202, 429]
        assert [(await post(client, "b-in", b_epic, f"B{i}")).status_code for i in range(3)] == [202, 202, 429]
        assert (await post(client, "a-in", a_cerner, "C0")).status_code == 202
        # Users: the same subject in another org, another subject in the same org, and one of another role.
        alice = bearer("viewer", subject="alice")
        assert [(await client.get("/api/messages", headers=alice)).status_code for _ in range(3)] == [200, 200, 429]
        assert (await client.get("/api/messages", headers=bearer("viewer", "org-b", "alice"))).status_code == 200
        assert (await client.get("/api/messages", headers=bearer("viewer", subject="bob"))).status_code == 200
        assert (await client.get("/api/messages", headers=bearer("operator", subject="alice2"))).status_code == 200
        a_metrics = refusals((await client.get("/metrics", headers=bearer("viewer", subject="carol"))).text)
        b_metrics = refusals((await client.get("/metrics", headers=bearer("viewer", "org-b", "carol"))).text)
    assert a_metrics == {("ingress", "sender"): 1, ("api", "viewer"): 1}
    assert b_metrics == {("ingress", "sender"): 1}


async def test_role_sizes_the_api_bucket(db_url: str) -> None:
    async with api(db_url, rate_limit_roles={"viewer": "0.05/1", "operator": "0.05/4"}) as client:
        viewer, operator = bearer("viewer", subject="v"), bearer("operator", subject="o")
        assert [(await client.get("/api/messages", headers=viewer)).status_code for _ in range(2)] == [200, 429]
        codes = [(await client.get("/api/messages", headers=operator)).status_code for _ in range(5)]
        assert codes == [200] * 4 + [429]
        # A principal with several roles gets the most generous one's bucket.
        both = {"Authorization": "Bearer " + mint_token(TEST_JWT_SECRET, subject="vo", org="default",
                                                        roles=["viewer", "operator"])}
        assert [(await client.get("/api/messages", headers=both)).status_code for _ in range(4)] == [200] * 4


async def test_limits_can_be_switched_off(db_url: str) -> None:
    async with api(db_url, rate_limits=False, rate_limit_roles={"viewer": "0.05/1"}) as client:
        codes = {(await client.get("/api/messages", headers=bearer("viewer"))).status_code for _ in range(5)}
    assert codes == {200}


async def test_unauthenticated_requests_are_not_charged(db_url: str, superuser_pool: asyncpg.Pool) -> None:
    async with api(db_url, rate_limit_roles={"viewer": "0.05/1"}) as client:
        for _ in range(3):
            assert (await client.get("/api/messages")).status_code == 401
            assert (await client.get("/healthz")).status_code == 200
    assert await superuser_pool.fetchval("select count(*) from rate_buckets") == 0


async def test_the_openapi_document_declares_the_429(db_url: str) -> None:
    async with api(db_url) as client:
        doc = (await client.get("/openapi.json")).json()
    missing = [f"{method.upper()} {path}" for path, ops in doc["paths"].items() for method, op in ops.items()
               if op.get("x-required-role") and "429" not in op.get("responses", {})]
    # The login form checks the token it is given itself (no principal yet, nothing charged).
    assert missing == ["POST /dashboard/session"]
    ingress = doc["paths"]["/api/channels/{channel}/messages"]["post"]["responses"]["429"]
    assert "Retry-After" in ingress["headers"] and "application/problem+json" in ingress["content"]


@pytest.mark.parametrize(("env", "value", "needle"), [
    ("rate_limit_ingress", "fast", "LIFELINE_RATE_LIMIT_INGRESS"),
    ("rate_limit_ingress", "0/10", "LIFELINE_RATE_LIMIT_INGRESS"),
    ("rate_limit_roles", {"viewer": "10/0.5"}, "LIFELINE_RATE_LIMIT_ROLES[viewer]"),
    ("rate_limit_roles", {"janitor": "10/10"}, "unknown role"),
])
def test_bad_limits_are_refused_at_startup(env: str, value: object, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        make_settings(**{env: value})
