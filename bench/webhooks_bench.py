"""What webhook subscriptions cost delivery: MLLP delivery throughput with the event log off, on with no
subscription, and with N subscriptions to every event (message.received + delivery.delivered per message), the
drainer running in the engine's process as it does in a worker; plus how fast the subscriptions drained.

    .venv/bin/python -m bench.webhooks_bench --messages 500 --subscriptions 0 1 5 10 --rounds 2

Each measurement gets a fresh database; rounds alternate the order so load drift on a shared machine spreads over
every setting. Writes bench/results/webhooks.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from activities.subscriptions import EventLinks, seal_secret
from bench.engine_bench import Engine, engine_config, send_closed_loop, wait_until
from bench.peers import RecordingPeer
from bench.stack import Rig, started, store_cipher
from infra.devstack import free_port
from infra.ssrf import Guard
from infra.store import webhooks as store
from workers.webhooks import WebhookDrainer

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("bench.webhooks")
OFF = -1  # the setting with the event-log triggers disabled


@contextlib.contextmanager
def receiver() -> Any:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.webhook_receiver", str(port)],
                            cwd=Path(__file__).resolve().parent.parent, env={**os.environ})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/count", timeout=1)
                break
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


_COUNTER: list[httpx.AsyncClient] = []


async def counts(port: int) -> tuple[int, int]:
    """(posts, distinct sends) the receiver got so far (one client for all polls: a new one costs a TLS context)."""
    if not _COUNTER:
        _COUNTER.append(httpx.AsyncClient(verify=False))
    posts, unique = (await _COUNTER[0].get(f"http://127.0.0.1:{port}/count")).text.split()
    return int(posts), int(unique)


async def count(port: int) -> int:
    """Distinct sends the receiver got so far."""
    return (await counts(port))[1]


async def one(rig: Rig, n: int, subs: int, connections: int, receiver_port: int) -> dict[str, Any]:
    peer = RecordingPeer()
    peer_port = await peer.start()
    engine = Engine(rig, await rig.new_database(), engine_config(peer_port, ordered=False))
    await engine.start()
    cipher = store_cipher()
    run_tag = uuid.uuid4().hex[:8]
    stop = asyncio.Event()
    drainer = WebhookDrainer(engine.pools[2], cipher, Guard(["127.0.0.1/32"]), EventLinks(), poll_s=0.5,
                             retention=timedelta(days=30))
    draining = asyncio.create_task(drainer.run(engine.db_url, stop))
    try:
        async with engine.pools[0].acquire() as conn:
            if subs == OFF:
                await conn.execute("alter table messages disable trigger events_message")
                await conn.execute("alter table deliveries disable trigger events_delivery")
            for i in range(max(subs, 0)):
                sid = f"wh_{run_tag}{i:03d}"  # unique across runs: the receiver counts distinct sends
                secret_enc, key_id = seal_secret(cipher, sid, "whsec_bench-secret-0123456789")
                await store.create(conn, "default", sub_id=sid, url=f"http://127.0.0.1:{receiver_port}/hook",
                                   description="bench", events=["*"], channels=[], destinations=[],
                                   message_types=[], secret_enc=secret_enc, key_id=key_id, max_attempts=20,
                                   initial_interval_s=1.0, maximum_interval_s=60.0, created_by="bench")
        posts0, received0 = await counts(receiver_port)
        t0, cpu0 = time.monotonic(), rig.cpu_seconds()
        await send_closed_loop(engine.port, n, connections, "W")
        if not await wait_until(lambda: len(peer.at) >= n, timeout=max(180.0, n / 2)):
            raise RuntimeError(f"only {len(peer.at)} of {n} messages reached the peer")
        delivered_s = max(peer.at.values()) - t0
        mid = rig.cpu_seconds()
        cpu_delivery_ms = round(1000 * sum(mid[k] - cpu0[k] for k in mid) / n, 2)
        expected = 2 * n * max(subs, 0)  # message.received + delivery.delivered, to each subscription
        drained_s = None
        if expected:
            async def drained() -> bool:
                return await count(receiver_port) - received0 >= expected

            if await wait_until(drained, timeout=600, interval=0.2):
                drained_s = time.monotonic() - t0
        after = rig.cpu_seconds()
        cpu_ms = round(1000 * sum(after[k] - cpu0[k] for k in after) / n, 2)
        posts1, received1 = await counts(receiver_port)
        async with engine.pools[0].acquire() as conn:
            logged = {r["type"]: r["n"] for r in await conn.fetch(
                "select type, count(*) as n from events group by type order by type")}
        got, posts = received1 - received0, posts1 - posts0
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(draining, 30)
        await engine.stop()
        await peer.stop()
    return {"subscriptions": "event log off" if subs == OFF else subs, "messages": n,
            "delivered_per_s": round(n / delivered_s, 1), "webhook_events": got, "webhook_events_expected": expected,
            "webhook_posts_repeated": posts - got, "events_logged": logged,
            "all_webhooks_sent_s": round(drained_s, 2) if drained_s else None,
            "webhook_events_per_s": round(expected / drained_s, 1) if drained_s else None,
            "cpu_ms_per_message_until_delivered": cpu_delivery_ms, "cpu_ms_per_message_incl_webhooks": cpu_ms}


async def run(n: int, settings: list[int], connections: int, rounds: int) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    async with started() as rig:
        with receiver() as port:
            await one(rig, max(50, n // 10), 0, connections, port)  # warm-up, not reported
            for r in range(rounds):
                order = settings if r % 2 == 0 else list(reversed(settings))
                for subs in order:
                    res = await one(rig, n, subs, connections, port)
                    res["round"] = r + 1
                    log.info("%s", res)
                    results.append(res)
    summary: dict[str, Any] = {}
    for subs in settings:
        key = "event log off" if subs == OFF else str(subs)
        rates = [x["delivered_per_s"] for x in results if str(x["subscriptions"]) == key]
        cpu = [x["cpu_ms_per_message_incl_webhooks"] for x in results if str(x["subscriptions"]) == key]
        summary[key] = {"delivered_per_s_median": sorted(rates)[len(rates) // 2], "runs": rates,
                        "cpu_ms_per_message_median": sorted(cpu)[len(cpu) // 2]}
    base = summary.get("event log off") or summary.get("0")
    if base:
        for v in summary.values():
            v["ratio_to_baseline"] = round(v["delivered_per_s_median"] / base["delivered_per_s_median"], 2)
    return {"messages": n, "connections": connections, "rounds": rounds, "loadavg_at_end": os.getloadavg(),
            "results": results, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--subscriptions", type=int, nargs="+", default=[OFF, 0, 1, 5, 10],
                        help=f"settings to measure; {OFF} = event-log triggers disabled")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "webhooks.json")
    ns = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    report = asyncio.run(run(ns.messages, ns.subscriptions, ns.connections, ns.rounds))
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
