"""The dashboard's charts in Debian's Chromium: throughput, latency p50/p95 and backlog of the last hour per channel
→ destination render under the page's strict CSP (no violation reported) and move as messages flow; the screenshot
is kept in docs/dashboard-charts.png."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import httpx
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from infra.crypto import Cipher
from tests.browser.test_dashboard import CHROMIUM_ARGS, ApiServer, chromium, temporal_address, token  # noqa: F401
from tests.delivery.harness import Engine, Peer, adt, config_for, running, wait_for

DOCS = Path(__file__).resolve().parents[2] / "docs"
SENDER = {"Authorization": f"Bearer {token('sender', subject='ehr')}", "Content-Type": "text/plain"}


async def test_charts_render_under_csp_and_move(chromium: str, db_url: str, pool: asyncpg.Pool,  # noqa: F811
                                                temporal_env: WorkflowEnvironment, temporal_client: Client,
                                                store_cipher: Cipher, task_queue: str) -> None:
    from playwright.async_api import async_playwright, expect

    peer = Peer()
    config = config_for(await peer.start())
    engine = Engine(pool, temporal_client, config, store_cipher, task_queue, db_url)
    run = uuid.uuid4().hex[:6]

    async def send(first: int, n: int) -> None:
        ids = [f"C{run}-{i}" for i in range(first, first + n)]
        for i, control in enumerate(ids):
            r = await http.post("/api/channels/adt-in/messages", content=adt(control, f"MRN{i}"), headers=SENDER)
            assert r.status_code == 202, r.text
        await wait_for(lambda: set(ids) <= set(peer.control_ids()), timeout=60)

    async with running(engine), ApiServer(db_url, temporal_address(temporal_env), task_queue, config) as api, \
            httpx.AsyncClient(base_url=api.base, timeout=15) as http, async_playwright() as pw:
        await send(0, 3)
        series = (await http.get("/api/flow/series", headers={"Authorization": f"Bearer {token('viewer')}"})).json()
        assert [(s["channel"], s["destination"]) for s in series["series"]] == [("adt-in", "lab")]
        assert len(series["t"]) == 60 and sum(series["series"][0]["delivered"]) == 3

        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1440, "height": 1000})
            await page.add_init_script(
                "window.__csp = []; document.addEventListener('securitypolicyviolation',"
                " (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            expect.set_options(timeout=30_000)
            await page.goto(f"{api.base}/dashboard")
            await page.fill("#token", token("viewer", subject="charts-viewer"))
            await page.click("button[type=submit]")
            await expect(page.locator("#conn")).to_have_attribute("data-state", "live")

            throughput = page.locator("#chart-throughput")
            await expect(throughput.locator("canvas")).to_be_visible()
            await expect(throughput).to_have_attribute("data-series", "1")
            await expect(throughput).to_have_attribute("data-total", "3")
            await expect(page.locator("#chart-backlog")).to_have_attribute("data-last", "0")
            await expect(page.locator("#chart-latency")).to_have_attribute("data-series", "2")  # p50 and p95
            await expect(page.locator("#chart-backlog")).to_have_attribute("data-series", "1")
            assert await page.locator("#chart-latency").get_attribute("data-total") != "0"
            await expect(throughput.locator(".u-legend")).to_contain_text("adt-in → lab")

            async def pixels(sel: str) -> str:
                return str(await page.eval_on_selector(f"{sel} canvas", "c => c.toDataURL()"))

            before = await pixels("#chart-throughput")
            rendered = int(await throughput.get_attribute("data-rendered") or 0)

            # More traffic: the charts update on their own (no reload) and the drawing changes.
            await send(3, 5)
            await expect(throughput).to_have_attribute("data-total", "8")
            assert int(await throughput.get_attribute("data-rendered") or 0) > rendered
            assert await pixels("#chart-throughput") != before

            # A peer that stops answering AA makes the backlog chart rise while the deliveries retry.
            backlog = page.locator("#chart-backlog")
            peer.answer = "AE"
            for i in range(8, 10):
                r = await http.post("/api/channels/adt-in/messages", content=adt(f"C{run}-{i}", f"MRN{i}"),
                                    headers=SENDER)
                assert r.status_code == 202
            await expect(backlog).to_have_attribute("data-last", "2")  # this minute: two deliveries pending
            await page.locator("#panel-charts").scroll_into_view_if_needed()
            DOCS.mkdir(exist_ok=True)
            await page.screenshot(path=str(DOCS / "dashboard-charts.png"), full_page=False)
            peer.answer = "AA"

            assert await page.evaluate("window.__csp") == [], "the charts must run under the page's CSP"
            assert errors == []
        finally:
            await browser.close()
    await peer.stop()
