"""Schemathesis against the running API: every operation of the OpenAPI document, with an admin token and without.

The API is the real in-process stack (embedded PostgreSQL, the Temporal dev server) served by uvicorn on a free
port, with data in it (messages accepted and rejected, a dead letter, a case, an audit trail) so the list routes
answer real rows. Schemathesis runs as its own process over HTTP (examples, coverage and fuzzing phases): no 5xx,
every status code documented, every body and media type as the document says; with the token, an operation that
declares security must refuse a request without it (ignored_auth). A longer run: `python -m bench.schemathesis`.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import uvicorn
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.diagnostics import upsert_case
from activities.engines.base import EngineChannel
from api.app import create_app
from api.auth import mint_token
from infra.config import Channel, Destination, Engine, LifelineConfig, MllpOut, Route, Sla
from infra.devstack import free_port
from infra.store.deliveries import dead_letter
from tests.conftest import TEST_JWT_SECRET, make_settings
from workers.worker import WORKFLOWS
from workflows.contract import CaseState

ROOT = Path(__file__).resolve().parents[2]
ADT = ("MSH|^~\\&|EHR|HOSP|LAB|HOSP|20240101120000||ADT^A01|{cid}|P|2.5\rEVN|A01|20240101120000\r"
       "PID|1||M{cid}^^^HOSP^MR||DOE^JANE||19800101|F\rPV1|1|I")
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "response_headers_conformance")
# Examples per operation: the suite's run stays within a few minutes; bench/schemathesis.py runs longer.
MAX_EXAMPLES = int(os.environ.get("LIFELINE_SCHEMATHESIS_EXAMPLES", "10"))
# /api/events streams forever (server-sent events): a client reads it, it never "returns".
NOT_FUZZED = "^/api/events$"


class Adapter:
    kind = "mirth"
    capabilities = frozenset({"start", "stop"})

    async def list_channels(self) -> list[EngineChannel]:
        return [EngineChannel("c1", "ADT", "started", "STARTED", queued=2)]

    async def close(self) -> None:
        return None


def config(org: str) -> LifelineConfig:
    return LifelineConfig(
        channels=[Channel(name="adt-in", org=org, routes=[Route(to="lab")])],
        destinations=[Destination(name="lab", org=org, mllp=MllpOut(host="127.0.0.1", port=9),
                                  ordering="destination")],
        engines=[Engine(name="mirth", org=org, kind="mirth", url="https://mirth.invalid/api")],
        sla=[Sla(name="lab-delivery", org=org, destination="lab", contacts=["oncall@example.org"])])


def admin(org: str) -> str:
    return mint_token(TEST_JWT_SECRET, subject="schemathesis", org=org, roles=["admin"])


@dataclass
class Served:
    url: str
    org: str


@pytest.fixture
async def served(db_url: str, pool: asyncpg.Pool, temporal_env: WorkflowEnvironment,
                 task_queue: str) -> AsyncIterator[Served]:
    """The API on a free port, with data, and a worker that runs the workflows (their activities are not served:
    a replay or case the run starts stays running, and answers its queries).

    An org of its own per test: workflow ids (case:<org>:..., restart:<org>:...) are business keys and the Temporal
    dev server serves the whole session; another test's case of the same org and subject would answer here.
    """
    org = f"st-{uuid.uuid4().hex[:8]}"
    address = temporal_env.client.service_client.config.target_host
    # Rate limits off: thousands of requests in a minute from one token would mostly be (documented) 429s.
    app = create_app(make_settings(database_url=db_url, temporal_address=address, task_queue=task_queue,
                                   rate_limits=False), config(org))
    app.state.adapter_factory = lambda engine: Adapter()
    async with app.router.lifespan_context(app), \
            Worker(temporal_env.client, task_queue=task_queue, workflows=list(WORKFLOWS)):
        await seed(app, pool, org)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                               log_level="warning"))
        serving = asyncio.create_task(server.serve())
        while not server.started:
            assert not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.05)
        try:
            yield Served(f"http://127.0.0.1:{port}", org)
        finally:
            server.should_exit = True
            await serving


async def seed(app: FastAPI, pool: asyncpg.Pool, org: str) -> None:
    import httpx

    token = {"Authorization": f"Bearer {admin(org)}"}
    headers = {**token, "content-type": "text/plain"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        ids = []
        for cid in ("S1", "S2"):
            r = await http.post("/api/channels/adt-in/messages", content=ADT.format(cid=cid), headers=headers)
            assert r.status_code == 202, r.text
            ids.append(r.json()["message_id"])
        r = await http.post("/api/channels/adt-in/messages", content="MSH|^~\\&|broken", headers=headers)
        assert r.status_code == 422, r.text
        # A running case (its state query answered by the worker, which has loaded the workflow once).
        r = await http.post("/api/remediations", json={"kind": "manual", "subject": "destination:lab"}, headers=token)
        assert r.status_code == 201, r.text
        r = await http.get(f"/api/remediations/{r.json()['case_id']}", headers=token)
        assert r.status_code == 200 and r.json()["live"], r.text
    # A delivery the peer refused for good (no delivery activity runs here), then its dead letter with its attempts.
    await pool.execute(
        "insert into deliveries (message_id, destination, org_id, seq, workflow_id, status, lane)"
        " values ($1, 'lab', $3, 1, $2, 'started', 'lab')", ids[0], f"delivery:{ids[0]}:lab", org)
    await pool.execute(
        "insert into delivery_attempts (message_id, destination, org_id, attempt, outcome, error_class, error,"
        " peer_answer, duration_ms) values ($1, 'lab', $2, 1, 'permanent', 'ack_reject', 'AR', 'AR ERR 207',"
        " 12)", ids[0], org)
    await dead_letter(pool, org, ids[0], "lab", "PermanentReject", "AR ERR 207 refused")
    # A closed case's record (the running one above has none: its activities are not served).
    await upsert_case(pool, CaseState(f"case:{org}:lane_blocked:destination:lab", "lane_blocked", "destination:lab",
                                      stage="resolved", org_id=org, opened_at="2024-01-01T00:00:00+00:00"), "run-1")


async def schemathesis(base_url: str, report: Path, *args: str, checks: str = CHECKS, examples: int = MAX_EXAMPLES,
                       phases: str = "examples,coverage,fuzzing") -> tuple[int, str]:
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{base_url}/openapi.json",
               "--checks", checks, "--phases", phases, "--max-examples", str(examples),
               # One worker: Python 3.11's ast.parse is not thread-safe, and Hypothesis calls it while generating.
               "--seed", "15", "--workers", "1", "--exclude-path-regex", NOT_FUZZED, "--request-timeout", "30",
               "--suppress-health-check", "all", "--report", "ndjson", "--report-ndjson-path", str(report),
               "--output-truncate", "false", "--no-color", *args]
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, env=env, cwd=ROOT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60 * max(10, examples))
    return proc.returncode or 0, out.decode(errors="replace")


def every_operation_tested(out: str) -> None:
    """Every operation but the event stream was selected and tested."""
    selected = re.search(r"Selected: (\d+)/(\d+)", out)
    tested = re.search(r"Tested: (\d+)", out)
    assert selected and tested, out[-5000:]
    assert int(selected[1]) == int(selected[2]) - 1 == int(tested[1]), out[-5000:]


async def test_every_operation_conforms_with_a_token(served: Served, tmp_path: Path) -> None:
    code, out = await schemathesis(served.url, tmp_path / "with-token.ndjson", "--header",
                                   f"Authorization: Bearer {admin(served.org)}", checks=f"{CHECKS},ignored_auth")
    assert code == 0, out[-20000:]
    every_operation_tested(out)


async def test_every_operation_conforms_without_a_token(served: Served, tmp_path: Path) -> None:
    # Every answer is a 401 here: the coverage phase's boundary values would only repeat it.
    code, out = await schemathesis(served.url, tmp_path / "without.ndjson", examples=3, phases="examples,fuzzing")
    assert code == 0, out[-20000:]
    every_operation_tested(out)
