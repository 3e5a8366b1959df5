"""/metrics: counters, the latency histogram and backlog gauges are read from the store and move exactly."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from api.routes.metrics import StoreCollector
from infra.config import LifelineConfig
from tests.monitoring.conftest import Seeder, bearer


async def scrape(api: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = await api.get("/metrics", headers=bearer("viewer"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in samples.items()
               if n == name and all(dict(lab).get(k) == val for k, val in labels.items()))


async def test_counters_histogram_and_gauges_under_a_known_load(api: httpx.AsyncClient, seed: Seeder,
                                                                pool: asyncpg.Pool, config: LifelineConfig) -> None:
    n_accepted, n_rejected = 7, 2
    ids = [await seed.message("adt-in") for _ in range(n_accepted)]
    for _ in range(n_rejected):
        await seed.message("adt-in", raw="NOT AN HL7 MESSAGE")
    now = await pool.fetchval("select now()")
    latencies = [0.2, 0.8, 2.0, 4.0, 20.0]  # seconds, accept -> delivered
    for mid, lat in zip(ids[:5], latencies, strict=True):
        base = await pool.fetchval("select received_at from messages where id = $1", mid)
        await seed.delivered(mid, "lab", base=base, created=timedelta(0), first=timedelta(0),
                             done=timedelta(seconds=lat))
    await seed.delivery(ids[5], "lab", created_at=now - timedelta(seconds=30))
    await seed.attempt(ids[5], "lab", at=now, outcome="retryable", error_class="refused")
    await seed.attempt(ids[5], "lab", at=now, outcome="retryable", error_class="refused", attempt=2)
    await seed.delivery(ids[6], "ris", created_at=now - timedelta(minutes=20), status="started")
    await seed.attempt(ids[6], "ris", at=now, outcome="permanent", error_class="ack_reject")
    await seed.dead_letter(ids[6], "ris", at=now)
    await seed.delivery(ids[0], "ris", created_at=now - timedelta(minutes=12))
    await pool.execute(
        "insert into cases (case_id, run_id, org_id, kind, subject, stage, mode, opened_at)"
        " values ('case:backlog:destination:ris', 'r1', 'default', 'backlog', 'destination:ris', 'awaiting_approval',"
        " 'semi-auto', now()), ('case:backlog:destination:lab', 'r0', 'default', 'backlog', 'destination:lab',"
        " 'resolved', 'semi-auto', now())")

    m = await scrape(api)
    assert total(m, "lifeline_messages_accepted_total", channel="adt-in") == n_accepted
    assert total(m, "lifeline_messages_rejected_total", channel="adt-in", message_type="") == n_rejected
    assert total(m, "lifeline_deliveries_delivered_total", destination="lab") == 5
    assert total(m, "lifeline_delivery_attempts_failed_total", destination="lab", error_class="refused") == 2
    assert total(m, "lifeline_delivery_attempts_failed_total", destination="ris", error_class="ack_reject") == 1
    assert total(m, "lifeline_dead_letters_total", destination="ris") == 1
    assert total(m, "lifeline_delivery_latency_seconds_count", destination="lab") == 5
    assert abs(total(m, "lifeline_delivery_latency_seconds_sum", destination="lab") - sum(latencies)) < 0.01
    assert total(m, "lifeline_delivery_latency_seconds_bucket", destination="lab", le="0.25") == 1
    assert total(m, "lifeline_delivery_latency_seconds_bucket", destination="lab", le="1.0") == 2
    assert total(m, "lifeline_delivery_latency_seconds_bucket", destination="lab", le="5.0") == 4
    assert total(m, "lifeline_delivery_latency_seconds_bucket", destination="lab", le="+Inf") == 5
    assert total(m, "lifeline_backlog_depth", destination="lab") == 1
    assert total(m, "lifeline_backlog_depth", destination="ris") == 1  # the started one was dead-lettered
    assert 12 * 60 <= total(m, "lifeline_backlog_oldest_age_seconds", destination="ris") < 13 * 60
    assert total(m, "lifeline_cases_open", kind="backlog") == 1

    # Scrapes within the cache period are served from the cache; after it, the store is read again.
    more = 3
    for _ in range(more):
        await seed.message("orders")
    assert total(await scrape(api), "lifeline_messages_accepted_total") == n_accepted
    api.app.state.metrics_collector = StoreCollector(config, ttl=0)  # type: ignore[attr-defined]
    m = await scrape(api)
    assert total(m, "lifeline_messages_accepted_total") == n_accepted + more
    assert total(m, "lifeline_messages_accepted_total", channel="orders") == more


async def test_metrics_are_scoped_to_the_token_org_and_need_a_role(api: httpx.AsyncClient, seed: Seeder) -> None:
    await seed.message("adt-in", org="other")
    assert (await api.get("/metrics")).status_code == 401
    assert (await api.get("/metrics", headers=bearer("sender"))).status_code == 403
    m = await scrape(api)
    assert total(m, "lifeline_messages_accepted_total") == 0
    assert total(m, "lifeline_backlog_depth", destination="lab") == 0  # configured destinations always appear
