"""The circuit breaker per destination: opens after connection failures in a row, fails fast while open, lets one
half-open probe through, closes on success; a dead peer costs no connection attempts while it is open."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.breaker import ERR_CIRCUIT_OPEN, Breakers, new_breakers, reset_all
from activities.mllp import SendError
from api.app import create_app
from infra.config import Destination, validate_config
from infra.crypto import Cipher
from infra.devstack import free_port
from infra.store.breakers import list_breakers
from tests.conftest import make_settings
from tests.delivery.harness import Engine, Peer, adt, running, send_mllp, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def dest(**breaker: Any) -> Destination:
    cfg = validate_config({"destinations": [{
        "name": "lab", "mllp": {"host": "127.0.0.1", "port": 2600},
        "breaker": {"enabled": True, "failures": 3, "probe_interval": "5s", "max_probe_interval": "12s",
                    **breaker}}]}, "test")
    return cfg.destinations[0]


async def fail(b: Breakers, d: Destination, error_class: str = "refused") -> None:
    async def send() -> str:
        raise SendError(error_class, "peer down")

    with pytest.raises(SendError):
        await b.call(d, send)


async def ok(b: Breakers, d: Destination) -> str:
    async def send() -> str:
        return "AA"

    return await b.call(d, send)


def assert_open(b: Breakers, d: Destination, wait: float) -> None:
    with pytest.raises(ApplicationError) as info:
        b.before_send(d)
    assert info.value.type == ERR_CIRCUIT_OPEN and not info.value.non_retryable
    assert info.value.next_retry_delay == timedelta(seconds=wait)


async def test_opens_probes_backs_off_and_closes() -> None:
    clock, d = Clock(), dest()
    b = Breakers(clock=clock)
    for _ in range(2):
        await fail(b, d)
    assert b.state("default", "lab").state == "closed"
    await fail(b, d)
    assert b.state("default", "lab").state == "open"
    assert_open(b, d, 5.0)  # fails fast, no send
    clock.now += 5
    assert b.before_send(d) is True  # the one half-open probe
    assert_open(b, d, 1.0)  # a second send while the probe is out
    await b.after_send(d, "timeout", probe=True)  # the probe failed: open again, interval doubled
    assert b.state("default", "lab").state == "open"
    assert_open(b, d, 10.0)
    clock.now += 10
    await fail(b, d)  # probe fails again: 20s capped at 12s
    assert_open(b, d, 12.0)
    clock.now += 12
    assert await ok(b, d) == "AA"  # the probe succeeds: closed, the count starts again
    st = b.state("default", "lab")
    assert (st.state, st.failures) == ("closed", 0)
    assert b.before_send(d) is False


async def test_rejects_prove_the_peer_is_up_and_disabled_means_never() -> None:
    clock, d = Clock(), dest()
    b = Breakers(clock=clock)
    for _ in range(2):
        await fail(b, d)
    await fail(b, d, "ack_reject")  # an AR is an answer: the peer is reachable
    await fail(b, d)
    assert b.state("default", "lab").state == "closed"
    off = dest(enabled=False)
    for _ in range(10):
        await fail(b, off)
    assert b.before_send(off) is False


async def test_reset_allows_a_probe_at_once() -> None:
    d = dest()
    b = new_breakers()
    for _ in range(3):
        await fail(b, d)
    with pytest.raises(ApplicationError):
        b.before_send(d)
    reset_all("default", "lab")  # what the reconnect action does
    assert b.before_send(d) is True


async def test_transitions_are_recorded_for_the_api(pool: asyncpg.Pool) -> None:
    clock, d = Clock(), dest()
    b = Breakers(pool, clock=clock)
    for _ in range(3):
        await fail(b, d)
    rows = await list_breakers(pool, "default")
    assert [(r["destination"], r["state"], r["failures"], r["last_error"]) for r in rows] == [
        ("lab", "open", 3, "refused")]
    assert rows[0]["next_probe_at"] is not None and rows[0]["probe_interval_s"] == 5.0
    clock.now += 5
    await ok(b, d)
    assert [(r["state"], r["failures"]) for r in await list_breakers(pool, "default")] == [("closed", 0)]
    assert await list_breakers(pool, "other-org") == []


async def test_dead_peer_costs_no_connections_while_open_and_delivery_resumes(
        pool: asyncpg.Pool, temporal_client: Client, store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    port = free_port()
    config = validate_config({
        "channels": [{"name": "adt-in", "mllp": {"port": 2575}, "routes": [{"to": "lab"}]}],
        "destinations": [{"name": "lab", "mllp": {"host": "127.0.0.1", "port": port, "connect_timeout": "2s"},
                          "retry": {"initial_interval": "100ms", "backoff": 1.0, "maximum_interval": "100ms",
                                    "maximum_attempts": 1000},
                          "breaker": {"enabled": True, "failures": 3, "probe_interval": "2s",
                                      "max_probe_interval": "2s"}}],
    }, "test")
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    peer = Peer()
    async with running(engine):
        assert await send_mllp(engine.mllp_port, [adt("BRK1", "MRN1")]) == ["AA"]

        async def breaker_state() -> str | None:
            rows = await list_breakers(pool, "default")
            return rows[0]["state"] if rows else None

        await wait_for(lambda: _eq(breaker_state(), "open"), timeout=60)
        recorded = await pool.fetchval("select count(*) from delivery_attempts")
        # Retries come every 100 ms, but while open only the 2 s probes reach the (dead) peer.
        await wait_for(lambda: _ge(pool.fetchval("select count(*) from delivery_attempts"), recorded + 2), 30)
        span = await pool.fetchval("select extract(epoch from max(at) - min(at)) from delivery_attempts"
                                   " where attempt > 3")
        probes = await pool.fetchval("select count(*) from delivery_attempts where attempt > 3")
        assert probes >= 2 and span / (probes - 1) >= 1.5, (probes, span)  # one per probe interval, not 10/s

        settings = make_settings(database_url=db_url)
        app = create_app(settings, config)
        from api.auth import mint_token

        token = mint_token(settings.jwt_secret.get_secret_value(), subject="t", org="default", roles=["viewer"])
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                r = await http.get("/api/destinations/breakers", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        assert [(b["destination"], b["state"]) for b in r.json()] in ([("lab", "open")], [("lab", "half_open")])

        await peer.start(port)
        await wait_for(lambda: len(peer.received) == 1, timeout=30)
        await wait_for(lambda: _eq(breaker_state(), "closed"), timeout=10)
    await peer.stop()


async def _eq(value: Any, want: Any) -> bool:
    return bool(await value == want)


async def _ge(value: Any, want: int) -> bool:
    return bool(await value >= want)
