"""Live configuration over REST and the CLI, and the dry run (API and CLI): real PostgreSQL, a real MLLP peer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml

from infra.config import LifelineConfig, validate_config
from tests.conftest import TEST_STORE_KEY
from tests.delivery.harness import Peer, bearer, wait_for

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = "\r".join([
    "MSH|^~\\&|EPIC|GENHOSP|LAB|LABFAC|20260101120000||ADT^A08^ADT_A01|DRY1|P|2.5.1",
    "PID|1||MRN1^^^GENHOSP^MR||DOE^JANE||19800101|F",
    "PV1|1|I|4W^12^1",
    "ZPI|site-specific",
])


def document(peer_port: int, steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "channels": [{"name": "adt-in", "mllp": {"port": 2575}, "routes": [
            {"to": "lab", "steps": steps if steps is not None else [
                {"map": "PV1-3.1", "table": "wards"}, {"drop_segments": "Z*"}, {"set": "MSH-5", "value": "LIS"}]},
            {"to": "fhir", "when": {"message_type": "ORU^R01"}}]}],
        "destinations": [
            {"name": "lab", "mllp": {"host": "127.0.0.1", "port": peer_port}},
            {"name": "fhir", "fhir": {"base_url": "http://127.0.0.1:9/fhir"}},
            {"name": "hook", "webhook": {"url": "http://127.0.0.1:9/hook", "secret": "s" * 20}}],
        "tables": [{"name": "wards", "values": {"4W": "WARD-4-WEST"}}],
    }


@contextlib.asynccontextmanager
async def api(db_url: str, config: LifelineConfig, *, live: bool) -> AsyncIterator[httpx.AsyncClient]:
    from api.app import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(database_url=db_url), config, live=live)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            c.app = app  # type: ignore[attr-defined]
            yield c


async def counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    return (await pool.fetchval("select count(*) from messages"),
            await pool.fetchval("select count(*) from deliveries"),
            await pool.fetchval("select count(*) from delivery_attempts"))


async def test_dry_run_api_shows_each_step_and_stores_and_sends_nothing(pool: asyncpg.Pool, db_url: str) -> None:
    peer = Peer()
    port = await peer.start()
    config = validate_config(document(port), "test")
    async with api(db_url, config, live=False) as c:
        url = "/api/channels/adt-in/dry-run"
        assert (await c.post(url, content=SAMPLE, headers=bearer("viewer"))).status_code == 403
        r = await c.post(url, content=SAMPLE, headers={**bearer("operator"), "Content-Type": "text/plain"})
        assert r.status_code == 200, r.text
        body = r.json()
        bad = await c.post(url, content="not hl7", headers=bearer("operator"))
        assert bad.status_code == 422 and bad.json()["field"] == "body"
        assert (await c.post("/api/channels/nope/dry-run", content=SAMPLE,
                             headers=bearer("operator"))).status_code == 404
    lab, fhir = body["destinations"]
    assert fhir == {**fhir, "destination": "fhir", "routed": False, "reason": "no route's `when` matches"}
    assert lab["routed"] and lab["reason"] == "routes[0] matches" and lab["error"] is None
    assert [(s["step"], s["applied"]) for s in lab["steps"]] == [
        ("map PV1-3.1 (wards)", True), ("drop_segments Z*", True), ("set MSH-5", True)]
    assert lab["steps"][0]["diff"] == ["-PV1|1|I|4W^12^1", "+PV1|1|I|WARD-4-WEST^12^1"]
    assert lab["steps"][1]["diff"] == ["-ZPI|site-specific"]
    assert lab["rendered"].split("\r")[0].split("|")[4] == "LIS"
    assert "ZPI" not in lab["rendered"]
    # Nothing stored but the audit row, nothing sent.
    assert await counts(pool) == (0, 0, 0)
    audit = await pool.fetch("select action, subject from audit_log")
    assert [(a["action"], a["subject"]) for a in audit] == [("channel.dry_run", "channel:adt-in")] * 2
    await asyncio.sleep(0)  # the peer has had every chance to be connected to: nothing was
    assert peer.seen == []
    await peer.stop()


async def test_dry_run_shows_step_errors_and_filters(db_url: str, pool: asyncpg.Pool) -> None:
    config = validate_config(document(9, [{"filter": "inpatients stay", "when": {"PV1-2": "I"}}]), "test")
    async with api(db_url, config, live=False) as c:
        r = await c.post("/api/channels/adt-in/dry-run", content=SAMPLE, headers=bearer("operator"))
        lab = r.json()["destinations"][0]
        assert lab["filtered"] == "inpatients stay" and lab["filtered_by"] == "steps[0] filter inpatients stay"
        assert lab["rendered"] is None
    config = validate_config(document(9, [{"map": "PV1-3.1", "table": "wards", "default": "reject"}]), "test")
    async with api(db_url, config, live=False) as c:
        r = await c.post("/api/channels/adt-in/dry-run", content=SAMPLE.replace("4W^", "9Z^"),
                         headers=bearer("operator"))
        lab = r.json()["destinations"][0]
        assert lab["error"] == "steps[0] map PV1-3.1 (wards): ValueError: code '9Z' is not in table 'wards'"
    assert await counts(pool) == (0, 0, 0)


async def test_dry_run_cli_prints_each_step_and_stores_nothing(tmp_path: Path, pool: asyncpg.Pool,
                                                                db_url: str) -> None:
    (tmp_path / "lifeline.yaml").write_text(yaml.safe_dump(document(9)))
    (tmp_path / "sample.hl7").write_text(SAMPLE.replace("\r", "\n"))
    code, out, err = await cli(db_url, "--config", str(tmp_path / "lifeline.yaml"), "dry-run",
                               str(tmp_path / "sample.hl7"), "--channel", "adt-in")
    assert code == 0, err
    assert "== lab (mllp): routed, routes[0] matches" in out
    assert "steps[0] map PV1-3.1 (wards): applied" in out and "+PV1|1|I|WARD-4-WEST^12^1" in out
    assert "== fhir: not routed" in out and "nothing was stored or sent" in out
    code, out, _ = await cli(db_url, "--config", str(tmp_path / "lifeline.yaml"), "dry-run",
                             str(tmp_path / "sample.hl7"), "--channel", "adt-in", "--json")
    assert json.loads(out)["destinations"][0]["steps"][2]["step"] == "set MSH-5"
    assert await counts(pool) == (0, 0, 0)


async def cli(db_url: str, *args: str) -> tuple[int, str, str]:
    # The store key, as a deployment has it: audited commands chain their audit rows with the key derived from it.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LIFELINE_DATABASE_URL": db_url, "LIFELINE_STORE_KEY": TEST_STORE_KEY}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "workers.cli", *args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_config_versions_over_rest(pool: asyncpg.Pool, db_url: str) -> None:
    config = validate_config(document(2600), "test")
    async with api(db_url, config, live=True) as c:
        source = c.app.state.source  # type: ignore[attr-defined]
        admin, operator = bearer("admin"), bearer("operator")
        r = await c.get("/api/config", headers=operator)
        assert r.status_code == 200 and r.json()["version"] == 1
        assert r.json()["config"]["destinations"][2]["webhook"]["secret"] == "<redacted>"
        v1 = (await c.get("/api/config", headers=admin)).json()["config"]
        assert v1["destinations"][2]["webhook"]["secret"] == "s" * 20
        assert validate_config(v1, "v1") == config

        bad = {**v1, "channels": [{**v1["channels"][0], "routes": [{"to": "lab", "steps": [
            {"map": "PV1-3.1", "table": "missing"}]}]}]}
        r = await c.put("/api/config", json={"config": bad}, headers=admin)
        assert r.status_code == 422 and r.json()["field"] == "channels[0].routes[0].steps[0].table", r.text
        r = await c.put("/api/config", json={"config": {**v1, "destinations": [{"name": "x", "mllp": {
            "host": "h", "port": 70000}}]}}, headers=admin)
        assert r.status_code == 422 and r.json()["field"] == "destinations[0].mllp.port"
        assert (await c.put("/api/config", json={"config": v1}, headers=operator)).status_code == 403
        other_org = {**v1, "tables": [*v1["tables"], {"name": "other", "org": "acme", "values": {}}]}
        r = await c.put("/api/config", json={"config": other_org}, headers=admin)
        assert r.status_code == 422 and r.json()["field"] == "tables[1].org"

        v2 = json.loads(json.dumps(v1))
        v2["channels"][0]["routes"][0]["steps"][2] = {"set": "MSH-5", "value": "LIS2"}
        r = await c.put("/api/config", json={"config": v2, "comment": "new receiver", "expected_version": 1},
                        headers=admin)
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
        assert r.json()["diff"] == [{"path": "channels[adt-in].routes", "op": "change",
                                     "from": v1["channels"][0]["routes"], "to": v2["channels"][0]["routes"]}]
        stale = await c.put("/api/config", json={"config": v2, "expected_version": 1}, headers=admin)
        assert stale.status_code == 409
        await wait_for(lambda: source.versions.get("default") == 2, timeout=10)
        assert source.current.channel("adt-in").routes[0].steps[2].value == "LIS2"

        r = await c.put("/api/config/tables/wards", content="from,to\n4W,W4\n5E,W5\n",
                        headers={**admin, "Content-Type": "text/csv"})
        assert r.status_code == 200 and r.json()["version"] == 3
        assert r.json()["diff"][0]["path"] == "tables[wards].values.4W"
        r = await c.put("/api/config/destinations/lab2", json={"mllp": {"host": "127.0.0.1", "port": 2601}},
                        headers=admin)
        assert r.json()["version"] == 4
        assert (await c.delete("/api/config/destinations/lab", headers=admin)).status_code == 422  # still routed
        assert (await c.delete("/api/config/destinations/nope", headers=admin)).status_code == 404

        r = await c.post("/api/config/versions/1/restore", headers=admin)
        assert r.status_code == 200 and r.json()["version"] == 5
        assert (await c.get("/api/config", headers=admin)).json() == {"version": 5, "config": v1}
        versions = (await c.get("/api/config/versions", headers=operator)).json()["items"]
        assert [(v["version"], v["author"], v["restored_from"]) for v in versions] == [
            (5, "tester", 1), (4, "tester", None), (3, "tester", None), (2, "tester", None),
            (1, "file:lifeline.yaml", None)]
        assert versions[1]["diff"] == [{"path": "destinations[lab2]", "op": "add",
                                        "to": {"name": "lab2", "mllp": {"host": "127.0.0.1", "port": 2601}}}]
        await wait_for(lambda: source.versions.get("default") == 5, timeout=10)
        # The dashboard shows each channel's version (and, once messages flow, the version they were routed with).
        from api.routes.dashboard import compose_snapshot
        from tests.conftest import make_settings

        snap = await compose_snapshot(pool, make_settings(database_url=db_url), source.current, "default")
        assert [(c["channel"], c["config_version"], c["routed_with"]) for c in snap["channels"]] == [
            ("adt-in", 5, None)]
    audit = await pool.fetch("select action, subject, detail from audit_log order by id")
    assert [a["action"] for a in audit] == ["config.change", "config.tables.put", "config.destinations.put",
                                            "config.restore"]
    assert audit[0]["detail"]["diff"][0]["path"] == "channels[adt-in].routes"
    assert audit[3]["detail"]["restored_from"] == 1


async def test_config_apply_and_export_cli(tmp_path: Path, pool: asyncpg.Pool, db_url: str) -> None:
    path = tmp_path / "lifeline.yaml"
    path.write_text(yaml.safe_dump(document(2600)))
    code, out, err = await cli(db_url, "config", "apply", str(path), "--comment", "first")
    assert code == 0 and out.strip() == "default: version 1", err
    code, out, _ = await cli(db_url, "config", "apply", str(path))
    assert out.strip() == "default: unchanged"
    changed = document(2600, [{"set": "MSH-5", "value": "CLI"}])
    path.write_text(yaml.safe_dump(changed))
    code, out, _ = await cli(db_url, "config", "apply", str(path))
    assert out.strip() == "default: version 2"
    code, out, _ = await cli(db_url, "config", "export")
    assert code == 0 and out.startswith("# configuration versions: default 2")
    assert validate_config(yaml.safe_load(out), "export") == validate_config(changed, "x")
    bad = document(2600)
    bad["channels"][0]["routes"][0]["steps"][0]["table"] = "nope"
    path.write_text(yaml.safe_dump(bad))
    code, _, err = await cli(db_url, "config", "apply", str(path))
    assert code == 2 and "channels[0].routes[0].steps[0].table: no code table named 'nope'" in err
    rows = await pool.fetch("select version, author, comment from config_versions order by version")
    assert [r["version"] for r in rows] == [1, 2]
    assert rows[0]["comment"] == "first" and rows[0]["author"].startswith("cli:")
