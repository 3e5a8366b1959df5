"""GET /api/flow on seeded data: rates, outcomes, latency per stage, peak bucket, backlog and its trend."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import httpx

from tests.monitoring.conftest import Seeder, bearer

S = timedelta(seconds=1)
M = timedelta(minutes=1)


async def test_flow_numbers_on_seeded_data(api: httpx.AsyncClient, seed: Seeder, pool: asyncpg.Pool) -> None:
    now = await pool.fetchval("select now()")
    # Previous window (20m..10m ago): 2 messages, one still pending at the window boundary.
    old = [await seed.message(received_at=now - 15 * M) for _ in range(2)]
    await seed.delivered(old[0], "lab", base=now - 15 * M, created=S, first=2 * S, done=3 * S)
    await seed.delivered(old[1], "lab", base=now - 15 * M, created=M, first=9 * M, done=11 * M)
    # This window: 1 message 9.5m ago, 3 in the bucket 2-3m ago (the peak), 1 a moment ago; 1 rejected.
    times = [now - 9 * M - 30 * S, now - 2 * M - 30 * S, now - 2 * M - 20 * S, now - 2 * M - 10 * S, now - 5 * S]
    ids = [await seed.message(received_at=t) for t in times]
    await seed.message(raw="GARBAGE", received_at=now - M)
    for mid, t in zip(ids[:4], times[:4], strict=True):
        await seed.delivered(mid, "lab", base=t, created=S, first=3 * S, done=5 * S)
    await seed.delivery(ids[4], "lab", created_at=times[4] + S)
    await seed.attempt(ids[4], "lab", at=times[4] + 2 * S, outcome="retryable", error_class="timeout")
    await seed.delivery(ids[3], "ris", created_at=times[3] + S)  # fan-out: a second flow, still pending

    r = await api.get("/api/flow", params={"window": "10m", "bucket": "1m"}, headers=bearer("viewer"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["window_s"] == 600 and body["bucket_s"] == 60
    ch = {c["channel"]: c for c in body["channels"]}["adt-in"]
    assert (ch["received"], ch["accepted"], ch["rejected"], ch["previous_received"]) == (6, 5, 1, 2)
    assert ch["rate"]["per_minute"] == 0.6 and ch["rate"]["per_hour"] == 36
    assert ch["rate_trend"] == "rising"
    assert len(ch["buckets"]) == 10 and sum(b["count"] for b in ch["buckets"]) == 6
    assert ch["peak"]["count"] == 3 and ch["peak"]["per_minute"] == 3

    flows = {(f["channel"], f["destination"]): f for f in body["flows"]}
    lab = flows[("adt-in", "lab")]
    assert lab["messages"] == 5 and lab["previous_messages"] == 2
    assert lab["delivered"] == 5  # 4 of this window + the slow one of the previous window, finished 4m ago
    assert (lab["attempts_succeeded"], lab["attempts_failed"]) == (5, 1)
    assert lab["success_rate"] == round(5 / 6, 4) and lab["failure_rate"] == round(1 / 6, 4)
    assert lab["peak"]["count"] == 3
    lat = lab["latency"]
    # 4 fast deliveries (1s / 2s / 2s / 5s) and one slow one (1m / 8m / 2m / 11m)
    assert lat["accept_to_dispatch"]["avg_ms"] == (4 * 1000 + 60_000) / 5
    assert lat["dispatch_to_first_attempt"]["avg_ms"] == (4 * 2000 + 480_000) / 5
    assert lat["first_attempt_to_delivered"]["avg_ms"] == (4 * 2000 + 120_000) / 5
    assert lat["end_to_end"]["avg_ms"] == (4 * 5000 + 660_000) / 5
    assert 5000 < lat["end_to_end"]["p95_ms"] <= 660_000
    # Backlog now: the last message; 10 minutes ago: the slow one of the previous window.
    assert lab["backlog"]["depth"] == 1 and lab["backlog"]["previous_depth"] == 1
    assert 0 <= lab["backlog"]["oldest_age_s"] < 10
    assert 4 * 60 - 5 < lab["backlog"]["previous_oldest_age_s"] < 4 * 60 + 5
    assert lab["backlog"]["trend"] == "steady"
    ris = flows[("adt-in", "ris")]
    assert ris["messages"] == 1 and ris["backlog"]["depth"] == 1 and ris["backlog"]["trend"] == "rising"
    assert ris["success_rate"] is None

    only = (await api.get("/api/flow", params={"window": "10m", "destination": "ris"},
                          headers=bearer("viewer"))).json()
    assert [(f["channel"], f["destination"]) for f in only["flows"]] == [("adt-in", "ris")]


async def test_flow_rejects_bad_parameters_naming_the_field(api: httpx.AsyncClient) -> None:
    for params, field in (({"window": "soon"}, "window"), ({"bucket": "0s"}, "bucket"),
                          ({"window": "1m", "bucket": "5m"}, "bucket"), ({"window": "40d"}, "window")):
        r = await api.get("/api/flow", params=params, headers=bearer("viewer"))
        assert r.status_code == 422 and r.json()["field"] == field, (params, r.text)
