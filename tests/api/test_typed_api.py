"""The OpenAPI document is complete: a typed body for every answer, problem details for every error, security per
route; and what Schemathesis found stays fixed."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.auth import mint_token
from infra.config import EXAMPLE_CONFIG, load_config
from tests.conftest import TEST_JWT_SECRET, make_settings
from workers.cli import main
from workflows.contract import QUERY_TIMEOUT_S, CaseInput, case_workflow_id, org_attribute

PROBLEM = "application/problem+json"
PUBLIC = {("get", "/healthz"), ("post", "/dashboard/session")}  # no credentials (the session's is in its form)


def spec() -> dict[str, Any]:
    return create_app(make_settings(), load_config(EXAMPLE_CONFIG)).openapi()


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in doc["paths"].items() for method, op in item.items()]


def test_every_answer_has_a_declared_body() -> None:
    doc = spec()
    schemas = doc["components"]["schemas"]
    assert len(operations(doc)) >= 50
    for method, path, op in operations(doc):
        where = f"{method.upper()} {path}"
        success = {code: r for code, r in op["responses"].items() if code[0] in "23"}
        assert success, where
        for code, response in success.items():
            if code in ("204", "303"):
                assert not response.get("content"), where
                continue
            content = response["content"]
            assert content, f"{where} {code}: no media type"
            for media_type, body in content.items():
                schema = body.get("schema")
                assert schema, f"{where} {code} {media_type}: no schema"
                if media_type == "application/json":
                    # A model, not a loose dict[str, Any] (nor an empty schema).
                    refs = [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]
                    if schema.get("type") == "array":
                        refs.append(schema["items"].get("$ref"))
                    names = [r.rsplit("/", 1)[1] for r in refs if r]
                    assert names, f"{where} {code}: {schema}"
                    for name in names:
                        assert schemas[name].get("properties"), f"{where} {code}: {name} has no members"
                        assert schemas[name].get("additionalProperties") is False, f"{where}: {name} is open"


def test_every_error_is_problem_details_with_an_example() -> None:
    doc = spec()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    problem = doc["components"]["schemas"]["ProblemDetails"]
    assert {"type", "title", "status", "detail", "field"} <= set(problem["properties"])
    for method, path, op in operations(doc):
        where = f"{method.upper()} {path}"
        errors = {code: r for code, r in op["responses"].items() if code[0] in "45"}
        if (method, path) not in PUBLIC:
            assert {"401", "403"} <= set(errors), where
        if "requestBody" in op:
            assert "413" in errors, where  # api.limits.BodyLimit
        for code, response in errors.items():
            content = response["content"]
            if (method, path, code) == ("get", "/readyz", "503"):
                assert content["application/json"]["schema"]["$ref"].endswith("/Readiness")
                continue
            assert PROBLEM in content, f"{where} {code}"
            assert "application/json" not in content, f"{where} {code}: problems are not application/json"
            ref = content[PROBLEM]["schema"]["$ref"]
            assert ref.endswith(("/ProblemDetails", "/Rejected")), f"{where} {code}: {ref}"


def test_security_schemes_apply_per_route() -> None:
    doc = spec()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {"type": "http", "scheme": "bearer",
                                     "description": "JWT with `org` and `roles` claims"}
    assert schemes["APIKeyHeader"]["in"] == "header" and schemes["APIKeyHeader"]["name"] == "X-API-Key"
    assert schemes["SessionCookie"]["in"] == "cookie"
    for method, path, op in operations(doc):
        names = {name for requirement in op.get("security", []) for name in requirement}
        if (method, path) in PUBLIC:
            assert not names, f"{method.upper()} {path}"
        else:
            assert names == {"HTTPBearer", "APIKeyHeader", "SessionCookie"}, f"{method.upper()} {path}"
            assert op["x-required-role"], f"{method.upper()} {path}"


@pytest.fixture
async def api(db_url: str, temporal_env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[FastAPI]:
    address = temporal_env.client.service_client.config.target_host
    app = create_app(make_settings(database_url=db_url, temporal_address=address, task_queue=task_queue),
                     load_config(EXAMPLE_CONFIG))
    async with app.router.lifespan_context(app):
        yield app


def auth(role: str = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(TEST_JWT_SECRET, subject='t', org='default', roles=[role])}"}


async def test_errors_outside_the_routes_are_problem_details_too(api: FastAPI) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as http:
        # A path no route matches (a newline in a path segment), and a body FastAPI cannot read (not UTF-8).
        r = await http.post("/api/engines/mirth/channels/a%0Ab/restart", json={}, headers=auth())
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM, r.text
        r = await http.put("/api/config/channels/x", content=b"\xff\xfe{", headers={
            **auth(), "content-type": "application/json"})
        assert r.status_code in (400, 422) and r.headers["content-type"] == PROBLEM, r.text
        # An offset past PostgreSQL's bigint was a 500.
        r = await http.get("/api/messages", params={"offset": 10**21}, headers=auth())
        assert r.status_code == 422 and r.json()["field"] == "query.offset", r.text


async def test_a_case_query_without_a_worker_does_not_hang(api: FastAPI, temporal_env: WorkflowEnvironment,
                                                           task_queue: str) -> None:
    """No worker polls the task queue: the state query cannot be answered. The case reads as not live (its record),
    an approval is a 503 that says why; both within the query timeout (the request used to hang)."""
    # Its own subject: case ids are business keys, and the Temporal server outlives this test.
    subject = f"destination:no-worker-{uuid.uuid4().hex[:8]}"
    case_id = case_workflow_id("default", "manual", subject)
    handle = await temporal_env.client.start_workflow(
        "RemediationCaseWorkflow", CaseInput("manual", subject, "default", "manual", 3600.0),
        id=case_id, task_queue=f"{task_queue}-no-worker", search_attributes=org_attribute("default"),
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as http:
        started = time.monotonic()
        r = await http.get(f"/api/remediations/{case_id}", headers=auth())
        assert r.status_code == 404 and r.json()["field"] == "case_id", r.text  # not live, and no record yet
        r = await http.post(f"/api/remediations/{case_id}/approve", json={}, headers=auth("oncall"))
        assert r.status_code == 503 and "worker" in r.json()["detail"], r.text
        assert time.monotonic() - started < 4 * QUERY_TIMEOUT_S
    await handle.terminate("test over")


async def test_replay_ids_beyond_a_bigint_are_refused(api: FastAPI) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as http:
        r = await http.post("/api/dead-letters/replay", json={"ids": [1, 2**63]}, headers=auth())
        assert r.status_code == 422 and r.json()["field"] == "body.ids.1", r.text


async def test_config_versions_beyond_an_integer_are_not_found(api: FastAPI) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as http:
        r = await http.get(f"/api/config/versions/{2**31}", headers=auth())
        assert r.status_code == 422 and r.json()["field"] == "path.version", r.text


def test_lifeline_openapi_writes_the_served_document(tmp_path: Path) -> None:
    out = tmp_path / "openapi.json"
    assert main(["openapi", "--output", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["paths"].keys() == spec()["paths"].keys()
    assert written["components"]["schemas"]["MessageDetail"]["additionalProperties"] is False


async def test_unstorable_text_and_endless_durations_are_bad_input(api: FastAPI) -> None:
    """A NUL byte reached PostgreSQL, a window past timedelta's range reached timedelta: both were 500s."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as http:
        r = await http.get("/api/dead-letters", params={"destination": "lab\x00"}, headers=auth())
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
        r = await http.get("/api/flow", params={"window": "9" * 30}, headers=auth())
        assert r.status_code == 422 and r.json()["field"] == "window", r.text
