"""The /api/hl7 tools: parse, validate (+ ACK), generate, v2 -> FHIR and FHIR Patient -> ADT."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.auth import mint_token
from infra.config import EXAMPLE_CONFIG, load_config
from interop.ack import parse_ack
from interop.message import parse
from tests.conftest import TEST_JWT_SECRET, make_settings
from tests.fixtures import all_fixtures, load

VIEWER = {"Authorization": f"Bearer {mint_token(TEST_JWT_SECRET, subject='t', org='default', roles=['viewer'])}"}
TEXT = {**VIEWER, "Content-Type": "text/plain"}


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    # One viewer posts every fixture to three routes (~550 requests in seconds): a script that the default limit
    # (viewer 20/s, burst 200) would rightly slow down; these tests are about answers, not limits.
    app: FastAPI = create_app(make_settings(database_url=db_url, rate_limits=False), load_config(EXAMPLE_CONFIG))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


def problem(r: httpx.Response, status: int, field: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["field"] == field, body
    return body


# -- parse ---------------------------------------------------------------------------------------------
async def test_parse_answers_header_segments_and_unescaped_components(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/hl7/parse", content=load("adt_a01_251_basic"), headers=TEXT,
                          params=[("path", "PID-3[1].1"), ("path", "PID-3[2].5"), ("path", "PID-5.2")])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["batch"] is False
    h = body["header"]
    assert (h["type"], h["control_id"], h["version"], h["structure"]) == ("ADT^A01", "MSG00001", "2.5.1", "ADT_A01")
    assert (h["sending_application"], h["sending_facility"], h["processing_id"]) == ("EPICADT", "NORTHGATE", "P")
    assert h["separators"]["component"] == "^"
    assert [s["id"] for s in body["segments"]] == ["MSH", "EVN", "PID", "NK1", "PV1", "AL1", "DG1"]
    pid = next(s for s in body["segments"] if s["id"] == "PID")
    pid3 = next(f for f in pid["fields"] if f["field"] == 3)
    assert pid3["repetitions"] == [["100234567", "", "", "NORTHGATE", "MR"], ["987-65-4320", "", "", "USSSA", "SS"]]
    assert body["values"] == {"PID-3[1].1": "100234567", "PID-3[2].5": "SS", "PID-5.2": "JOHN"}
    assert body["ignored_lines"] == []


async def test_parse_unescapes_and_splits_subcomponents(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/hl7/parse", json={"message": load("edge_escapes_all")}, headers=VIEWER)
    assert r.status_code == 200, r.text
    segments = r.json()["segments"]
    pid = next(s for s in segments if s["id"] == "PID")
    name = next(f for f in pid["fields"] if f["field"] == 5)
    # O\T\BRIEN: an escaped subcomponent separator is text, not a split.
    assert name["repetitions"] == [["O&BRIEN", "SEAN"]]
    obx5 = next(f for f in segments[3]["fields"] if f["field"] == 5)
    assert obx5["value"].startswith("pipe | caret ^ amp & tilde ~ backslash \\ hex Hello line\nnext")
    r = await client.post("/api/hl7/parse", content=load("oru_r01_251_subcomponents"), headers=TEXT)
    assert r.status_code == 200
    assert any(isinstance(c, list) for s in r.json()["segments"] for f in s["fields"]
               for rep in f["repetitions"] for c in rep)


async def test_parse_reports_ignored_lines(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/hl7/parse", content=load("edge_trailing_garbage"), headers=TEXT)
    assert r.status_code == 200
    body = r.json()
    assert body["ignored_lines"] and [s["id"] for s in body["segments"]] == ["MSH", "EVN", "PID", "PV1"]


async def test_parse_batch_is_a_list_of_messages(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/hl7/parse?path=OBX-5", content=load("edge_batch_fhs_bhs"), headers=TEXT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["batch"] is True and body["declared_count"] == 2
    assert [s["id"] for s in body["envelope"]] == ["FHS", "BHS", "BTS", "FTS"]
    assert [m["header"]["control_id"] for m in body["messages"]] == ["B-MSG-1", "B-MSG-2"]
    assert [m["values"]["OBX-5"] for m in body["messages"]] == ["101", "141"]


@pytest.mark.parametrize(("fixture", "field"), [
    ("bad_separators", "MSH-2"), ("bad_no_msh", "MSH"),
])
async def test_parse_unparseable_is_422_naming_the_field(client: httpx.AsyncClient, fixture: str,
                                                         field: str) -> None:
    body = problem(await client.post("/api/hl7/parse", content=load(fixture), headers=TEXT), 422, field)
    assert body["detail"]


async def test_parse_bad_requests(client: httpx.AsyncClient) -> None:
    problem(await client.post("/api/hl7/parse", content=b"", headers=TEXT), 422, "body")
    problem(await client.post("/api/hl7/parse", content=b"  \r\n", headers=TEXT), 422, "body")
    problem(await client.post("/api/hl7/parse", json={"msg": "x"}, headers=VIEWER), 422, "body.message")
    problem(await client.post("/api/hl7/parse", content=b"{not json", headers={**VIEWER, "Content-Type":
                                                                             "application/json"}), 422, "body")
    problem(await client.post("/api/hl7/parse?path=PID-x", content=load("adt_a01_251_basic"), headers=TEXT),
            422, "path")
    problem(await client.post("/api/hl7/parse", content=b"M" * (4 * 1024 * 1024 + 1), headers=TEXT), 413, "body")


# -- validate ------------------------------------------------------------------------------------------
async def test_validate_good_message_is_ok_with_an_aa(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/hl7/validate?level=strict", content=load("adt_a01_251_basic"), headers=TEXT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True and body["level"] == "strict" and body["parsed"] is True
    assert not [f for f in body["findings"] if f["severity"] == "error"]
    # MSH-15 AL / MSH-16 NE ask for enhanced mode: the engine answers a commit accept.
    ack = parse_ack(body["ack"])
    assert (ack.code, ack.control_id) == ("CA", "MSG00001")
    body = (await client.post("/api/hl7/validate", content=load("oru_r01_251_nm_ref_ranges"), headers=TEXT)).json()
    assert body["ok"] is True and parse_ack(body["ack"]).code == "AA"


async def test_validate_strict_findings_and_ae(client: httpx.AsyncClient) -> None:
    text = load("bad_strict_content")
    tolerant = (await client.post("/api/hl7/validate", content=text, headers=TEXT)).json()
    assert tolerant["ok"] is True and tolerant["level"] == "tolerant"
    r = await client.post("/api/hl7/validate", params={"level": "strict"}, json={"message": text}, headers=VIEWER)
    body = r.json()
    assert body["ok"] is False
    keys = {(f["segment"], f["field"], f["code"]) for f in body["findings"] if f["severity"] == "error"}
    assert ("MSH", 7, "102") in keys and ("PID", 1, "102") in keys
    f = next(f for f in body["findings"] if (f["segment"], f["field"]) == ("PID", 1))
    assert set(f) >= {"segment", "occurrence", "field", "component", "code", "severity", "text"}
    ack = parse_ack(body["ack"])
    assert ack.control_id == "BAD-0006" and ack.code in ("AE", "AR") and ack.errors


async def test_validate_envelope_errors_answer_ar(client: httpx.AsyncClient) -> None:
    body = (await client.post("/api/hl7/validate", content=load("bad_version"), headers=TEXT)).json()
    assert body["ok"] is False
    assert any(f["code"] == "203" and f["field"] == 12 for f in body["findings"])
    assert parse_ack(body["ack"]).code == "AR"


async def test_validate_unparseable_is_a_finding_with_the_engines_ar(client: httpx.AsyncClient) -> None:
    body = (await client.post("/api/hl7/validate", content=load("bad_separators"), headers=TEXT)).json()
    assert body["ok"] is False and body["parsed"] is False and body["header"] is None
    assert body["findings"][0]["field"] == 2 and body["findings"][0]["code"] == "100"
    ack = parse_ack(body["ack"])
    assert ack.code == "AR" and ack.control_id == "BAD-0003"


async def test_validate_batch_and_bad_level(client: httpx.AsyncClient) -> None:
    body = (await client.post("/api/hl7/validate", content=load("edge_batch_fhs_bhs"), headers=TEXT)).json()
    assert body["batch"] is True and body["ok"] is True
    assert [m["header"]["control_id"] for m in body["messages"]] == ["B-MSG-1", "B-MSG-2"]
    problem(await client.post("/api/hl7/validate?level=paranoid", content=load("adt_a01_251_basic"), headers=TEXT),
            422, "level")
    problem(await client.post("/api/hl7/validate", content=b"", headers=TEXT), 422, "body")


# -- generate ------------------------------------------------------------------------------------------
SPEC: dict[str, Any] = {
    "message_type": "ORU^R01", "control_id": "GEN-1", "sending_application": "LAB",
    "patient": {"id": "P-77", "family": "O'Brien", "given": "Sean", "birth_date": "1980-08-08", "sex": "M"},
    "orders": [{"placer_id": "O-1", "service_code": "24323-8", "service_text": "CMP",
                "observations": [{"code": "2345-7", "text": "Glucose", "value": "101", "units": "mg/dL",
                                  "reference_range": "70-99", "abnormal_flag": "H"}]}],
}


async def test_generate_builds_a_message(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/hl7/generate", json=SPEC, headers=VIEWER)
    assert r.status_code == 200, r.text
    body = r.json()
    msg = parse(body["message"])
    assert (msg.message_type, msg.control_id, msg.sending_application) == ("ORU^R01", "GEN-1", "LAB")
    assert (msg.get("PID-3.1"), msg.get("PID-5.1"), msg.get("OBX-5"), msg.get("OBX-8")) == (
        "P-77", "O'Brien", "101", "H")
    assert (body["type"], body["control_id"]) == ("ORU^R01", "GEN-1")


@pytest.mark.parametrize(("change", "field"), [
    ({"message_type": "ADT^Z99"}, "body.message_type"),
    ({"patient": {"id": "1", "family": "X", "birth_date": "1980-13-01"}}, "body.patient.birth_date"),
    ({"patient": {"family": "X"}}, "body.patient.id"),
    ({"colour": "blue"}, "body.colour"),
    ({"orders": [{"placer_id": "O-1", "service_code": "X", "observations": [{"code": "C", "value": "1",
                                                                              "value_type": "NM",
                                                                              "abnormal_flag": "ZZ"}]}]},
     "body.orders[0].observations[0].abnormal_flag"),
])
async def test_generate_errors_name_the_field(client: httpx.AsyncClient, change: dict[str, Any],
                                              field: str) -> None:
    problem(await client.post("/api/hl7/generate", json={**SPEC, **change}, headers=VIEWER), 422, field)


async def test_generate_bad_bodies(client: httpx.AsyncClient) -> None:
    problem(await client.post("/api/hl7/generate", json=[1, 2], headers=VIEWER), 422, "body")
    problem(await client.post("/api/hl7/generate", content=b"{", headers={**VIEWER, "Content-Type":
                                                                         "application/json"}), 422, "body")
    problem(await client.post("/api/hl7/generate", content=b"", headers=VIEWER), 422, "body")


# -- v2 <-> FHIR ---------------------------------------------------------------------------------------
async def test_transform_maps_to_a_transaction_bundle(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/hl7/transform", content=load("adt_a01_251_basic"), headers=TEXT)
    assert r.status_code == 200, r.text
    body = r.json()
    bundle = body["bundle"]
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    patients = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert len(patients) == 1
    assert {"system": "urn:lifeline:id:NORTHGATE", "value": "100234567"}.items() <= patients[0]["identifier"][0].items()
    assert isinstance(body["issues"], list)
    r = await client.post("/api/hl7/transform", json={"message": load("oru_r01_251_nm_ref_ranges")}, headers=VIEWER)
    assert any(e["resource"]["resourceType"] == "Observation" for e in r.json()["bundle"]["entry"])


async def test_transform_errors(client: httpx.AsyncClient) -> None:
    body = problem(await client.post("/api/hl7/transform", content=load("ack_a01_251_aa"), headers=TEXT),
                   422, "MSH-9")
    assert "ACK" in body["detail"]
    problem(await client.post("/api/hl7/transform", content=load("bad_missing_msh9"), headers=TEXT), 422, "MSH-9")
    problem(await client.post("/api/hl7/transform", content=load("bad_separators"), headers=TEXT), 422, "MSH-2")
    problem(await client.post("/api/hl7/transform", content=load("edge_batch_fhs_bhs"), headers=TEXT), 422, "body")


PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-5"}],
    "name": [{"family": "Doe", "given": ["Jane"]}], "gender": "female", "birthDate": "1980-01-02",
}


async def test_from_fhir_builds_a28_and_a31(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/hl7/from-fhir", json=PATIENT, headers=VIEWER)
    assert r.status_code == 200, r.text
    msg = parse(r.json()["message"])
    assert msg.message_type == "ADT^A28"
    assert (msg.get("PID-3.1"), msg.get("PID-5.1"), msg.get("PID-5.2"), msg.get("PID-7"), msg.get("PID-8")) == (
        "MRN-5", "Doe", "Jane", "19800102", "F")
    r = await client.post("/api/hl7/from-fhir?trigger=A31", json=PATIENT, headers=VIEWER)
    assert parse(r.json()["message"]).message_type == "ADT^A31"


@pytest.mark.parametrize(("body", "query", "field"), [
    (PATIENT, "?trigger=A01", "trigger"),
    ({**PATIENT, "resourceType": "Observation"}, "", "resourceType"),
    ({**PATIENT, "identifier": []}, "", "Patient.identifier"),
    ({**PATIENT, "gender": "robot"}, "", "Patient.gender"),
    ({**PATIENT, "identifier": "MRN-5"}, "", "body"),
    (["not", "a", "patient"], "", "body"),
])
async def test_from_fhir_errors_name_the_field(client: httpx.AsyncClient, body: Any, query: str, field: str) -> None:
    problem(await client.post(f"/api/hl7/from-fhir{query}", json=body, headers=VIEWER), 422, field)


# -- robustness and access -----------------------------------------------------------------------------
async def test_no_fixture_makes_a_500(client: httpx.AsyncClient) -> None:
    for name, text in all_fixtures().items():
        for url in ("/api/hl7/parse", "/api/hl7/validate?level=strict", "/api/hl7/transform"):
            r = await client.post(url, content=text.encode(), headers=TEXT)
            assert r.status_code < 500, f"{url} {name}: {r.status_code} {r.text[:200]}"
            if r.status_code >= 400:
                assert r.json()["field"], f"{url} {name}: no field in {r.text}"


async def test_routes_need_a_viewer_token(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/hl7/parse", content=load("adt_a01_251_basic"))
    assert r.status_code == 401
    sender = mint_token(TEST_JWT_SECRET, subject="s", org="default", roles=["sender"])
    # Auth is checked before the body is read: a bad body from a stranger is still a 401/403.
    r = await client.post("/api/hl7/generate", content=b"{", headers={"Authorization": f"Bearer {sender}",
                                                                      "Content-Type": "application/json"})
    assert r.status_code == 403 and r.json()["required_role"] == "viewer"


def test_openapi_documents_the_bodies_and_the_role() -> None:
    spec = create_app(make_settings(), load_config(EXAMPLE_CONFIG)).openapi()
    parse_op = spec["paths"]["/api/hl7/parse"]["post"]
    assert parse_op["x-required-role"] == "viewer" and parse_op["tags"] == ["hl7"]
    assert set(parse_op["requestBody"]["content"]) == {"text/plain", "application/json"}
    generate_op = spec["paths"]["/api/hl7/generate"]["post"]
    assert set(generate_op["requestBody"]["content"]) == {"application/json"}
    assert {p for p in spec["paths"] if p.startswith("/api/hl7/")} == {
        "/api/hl7/parse", "/api/hl7/validate", "/api/hl7/generate", "/api/hl7/transform", "/api/hl7/from-fhir"}
