"""FHIR Patient → ADT^A28/A31 → parse → FHIR, and the v2 date/identifier conversions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from interop.errors import MappingError
from interop.fhir import encounter_to_adt, patient_to_adt, report_to_oru, request_to_order, to_fhir_bundle
from interop.fhir.datatypes import DateError, from_fhir_datetime, to_date, to_datetime, to_instant
from interop.message import parse
from tests.fixtures import load

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "identifier": [
        {"system": "urn:oid:2.16.840.1.113883.19.5", "value": "555|123^X",
         "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}},
        {"system": "urn:lifeline:id:NHS", "value": "A998877"},
        {"system": "https://ids.example.org/pas", "value": "P-7"},
    ],
    "name": [{"use": "official", "family": "O'Brien & Sons", "given": ["Mary", "Ellen"]}],
    "gender": "female",
    "birthDate": "1984-02-29",
    "address": [{"use": "home", "line": ["12 High St"], "city": "Dublin", "country": "IRL"}],
    "telecom": [{"system": "email", "value": "mary@example.org", "use": "home"}],
}


def identifiers(patient: dict[str, Any]) -> set[tuple[str, str]]:
    return {(i["system"], i["value"]) for i in patient["identifier"]}


@pytest.mark.parametrize("trigger", ["A28", "A31", "A08"])
def test_patient_round_trip(trigger: str) -> None:
    text = patient_to_adt(PATIENT, trigger=trigger, sending=("LIFELINE", "HUB"), receiving=("PAS", "STMARY"),
                          control_id="RT-1", timestamp=datetime(2024, 6, 1, 8, 30, tzinfo=UTC))
    message = parse(text)
    assert message.message_type == f"ADT^{trigger}"
    assert message.control_id == "RT-1"
    assert message.get("PV1-2") == "N"
    assert message.get("PID-3[1].1") == "555|123^X"  # escaped on the wire, unescaped on the way back
    back = to_fhir_bundle(message).resources("Patient")[0]
    assert identifiers(back) == identifiers(PATIENT)
    assert back["name"][0]["family"] == "O'Brien & Sons"
    assert back["name"][0]["given"] == ["Mary", "Ellen"]
    assert back["name"][0]["use"] == "official"
    assert back["birthDate"] == "1984-02-29"
    assert back["gender"] == "female"
    assert back["address"][0]["city"] == "Dublin"
    assert back["telecom"][0]["value"] == "mary@example.org"
    assert back["identifier"][0]["type"]["coding"][0]["code"] == "MR"


def test_round_trip_of_a_mapped_fixture_patient() -> None:
    original = to_fhir_bundle(parse(load("map_adt_a01_full"))).resources("Patient")[0]
    again = to_fhir_bundle(parse(patient_to_adt(original, trigger="A31"))).resources("Patient")[0]
    assert identifiers(again) == identifiers(original)
    assert (again["birthDate"], again["gender"]) == (original["birthDate"], original["gender"])
    assert again["name"][0] == original["name"][0]


def test_patient_to_adt_rejects_bad_input() -> None:
    with pytest.raises(MappingError, match="A28, A31, A08"):
        patient_to_adt(PATIENT, trigger="A01")
    with pytest.raises(MappingError, match="identifier"):
        patient_to_adt({"resourceType": "Patient"})
    with pytest.raises(MappingError, match="birthDate"):
        patient_to_adt({**PATIENT, "birthDate": "29/02/1984"})


@pytest.mark.parametrize(("hl7", "fhir"), [
    ("2024", "2024"), ("202403", "2024-03"), ("20240312", "2024-03-12"),
    ("202403120930", "2024-03-12T09:30:00-05:00"), ("20240312093015", "2024-03-12T09:30:15-05:00"),
    ("20240312093015.123", "2024-03-12T09:30:15.123-05:00"),
    ("20240312093015+0100", "2024-03-12T09:30:15+01:00"), ("2024031209+0000", "2024-03-12T09:00:00Z"),
])
def test_hl7_datetime_to_fhir(hl7: str, fhir: str) -> None:
    assert to_datetime(hl7, "-0500") == (fhir, True)


def test_dates_without_offset_and_invalid_dates() -> None:
    assert to_datetime("20240312093015", None) == ("2024-03-12", False)
    assert to_date("20240312093015+0100") == "2024-03-12"
    assert to_instant("20240312", "+0000") is None
    assert to_instant("20240312093015", "+0000") == "2024-03-12T09:30:15Z"
    for bad in ("20241301", "2024-03-12", "20240332", "202403122500", "abc"):
        with pytest.raises(DateError):
            to_datetime(bad, None)
    assert from_fhir_datetime("2024-03-12T09:30:15+01:00") == "20240312093015+0100"
    assert from_fhir_datetime("1984-02-29") == "19840229"


# -- Encounter → ADT^A01 / A03, DiagnosticReport + Observation → ORU^R01 ----------------------------------

def _key_fields(encounter: dict[str, Any]) -> tuple[Any, ...]:
    visit = next(((i["system"], i["value"]) for i in encounter["identifier"]
                  if i.get("type", {}).get("coding", [{}])[0].get("code") == "VN"), None)
    return (encounter["class"]["code"], visit, encounter.get("period"), encounter["status"])


@pytest.mark.parametrize(("fixture", "trigger"), [("map_adt_a01_full", "A01"), ("adt_a03_25_discharge", "A03")])
def test_encounter_round_trip(fixture: str, trigger: str) -> None:
    first = to_fhir_bundle(parse(load(fixture)))
    encounter, patient = first.resources("Encounter")[0], first.resources("Patient")[0]
    text = encounter_to_adt(encounter, patient, trigger=trigger, control_id="RT-E",
                            timestamp=datetime(2024, 6, 1, 8, 30, tzinfo=UTC))
    message = parse(text)
    assert message.message_type == f"ADT^{trigger}"
    again = to_fhir_bundle(message)
    assert _key_fields(again.resources("Encounter")[0]) == _key_fields(encounter)
    assert identifiers(again.resources("Patient")[0]) == identifiers(patient)


def test_encounter_to_adt_rejects_bad_input() -> None:
    first = to_fhir_bundle(parse(load("map_adt_a01_full")))
    encounter, patient = first.resources("Encounter")[0], first.resources("Patient")[0]
    with pytest.raises(MappingError, match="period.end"):
        encounter_to_adt({**encounter, "period": {"start": "2024-06-01"}}, patient, trigger="A03")
    with pytest.raises(MappingError, match="A01 or A03"):
        encounter_to_adt(encounter, patient, trigger="A02")


def _observations(result: Any) -> dict[str, tuple[Any, ...]]:
    out = {}
    for obs in result.resources("Observation"):
        value = obs.get("valueQuantity", {}).get("value"), obs.get("valueQuantity", {}).get("comparator"), \
            obs.get("valueString"), (obs.get("valueCodeableConcept") or {}).get("coding", [{}])[0].get("code")
        out[obs["code"]["coding"][0]["code"]] = (obs["status"], *value, obs.get("effectiveDateTime"))
    return out


def test_report_round_trip() -> None:
    first = to_fhir_bundle(parse(load("oru_r01_251_nm_ref_ranges")))
    text = report_to_oru(first.bundle, control_id="RT-R", timestamp=datetime(2024, 6, 1, 8, 30, tzinfo=UTC))
    message = parse(text)
    assert message.message_type == "ORU^R01"
    again = to_fhir_bundle(message)
    report, back = first.resources("DiagnosticReport")[0], again.resources("DiagnosticReport")[0]
    assert (back["code"]["coding"][0]["code"], back["status"], back["identifier"][0]["value"]) == (
        report["code"]["coding"][0]["code"], report["status"], report["identifier"][0]["value"])
    assert _observations(again) == _observations(first)
    with pytest.raises(MappingError, match="DiagnosticReport"):
        report_to_oru({"resourceType": "Bundle", "entry": [{"resource": PATIENT}]})


def _request_fields(result: Any) -> list[tuple[Any, ...]]:
    return [(tuple((i["system"], i["value"]) for i in sr["identifier"]), sr["status"], sr["intent"],
             sr.get("priority"), sr["code"]["coding"][0]["code"], sr.get("occurrenceDateTime"),
             sr.get("requester", {}).get("display"), sr.get("note")) for sr in result.resources("ServiceRequest")]


@pytest.mark.parametrize(("fixture", "kind"), [("orm_o01_24_radiology", "ORM"), ("oml_o21_251_lab", "OML")])
def test_service_request_round_trip(fixture: str, kind: str) -> None:
    first = to_fhir_bundle(parse(load(fixture)))
    text = request_to_order(first.bundle, message=kind, control_id="RT-O",
                            timestamp=datetime(2024, 6, 1, 8, 30, tzinfo=UTC))
    message = parse(text)
    assert message.message_code == kind
    again = to_fhir_bundle(message)
    assert _request_fields(again) == _request_fields(first)
    with pytest.raises(MappingError, match="ORM or OML"):
        request_to_order(first.bundle, message="ORU")
