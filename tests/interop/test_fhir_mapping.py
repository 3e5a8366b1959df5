"""v2 → FHIR R4 mapping: per message type, idempotency, issues, every fixture."""

from __future__ import annotations

import base64
import copy
from typing import Any
from urllib.parse import unquote

import pytest

from interop.errors import MappingError
from interop.fhir import KEY_SYSTEM, MappingConfig, supports, to_fhir_bundle, validate_bundle
from interop.message import parse, parse_batch
from tests.fixtures import good_fixtures, load

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def bundle_of(name: str, **kwargs: Any) -> Any:
    return to_fhir_bundle(parse(load(name)), **kwargs)


def one(result: Any, resource_type: str) -> dict[str, Any]:
    found = result.resources(resource_type)
    assert len(found) == 1, f"{len(found)} {resource_type}"
    return found[0]


def entry_for(result: Any, resource: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in result.bundle["entry"] if e["resource"] is resource or e["resource"] == resource)


# -- ADT -------------------------------------------------------------------------------------------

def test_adt_a01_patient_demographics() -> None:
    result = bundle_of("map_adt_a01_full")
    patient = one(result, "Patient")
    mrn = patient["identifier"][0]
    assert mrn["system"] == "urn:oid:2.16.840.1.113883.19.5"
    assert mrn["value"] == "555123"
    assert mrn["type"]["coding"][0] == {"system": V2_0203, "code": "MR"}
    assert mrn["assigner"] == {"display": "STMARY"}
    assert patient["identifier"][1]["system"] == "urn:lifeline:id:NHS"
    assert {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-12-3456"} in [
        {k: i[k] for k in ("system", "value")} for i in patient["identifier"]]
    assert patient["gender"] == "female"
    assert patient["birthDate"] == "1984-02-29"
    assert patient["name"][0] == {"use": "official", "family": "O'BRIEN", "given": ["MARY", "ELLEN"],
                                  "prefix": ["DR"]}
    assert patient["name"][1]["use"] == "maiden"
    assert patient["address"][0]["use"] == "home"
    assert patient["address"][0]["line"] == ["12 HIGH ST", "APT 3"]
    assert {"system": "email", "value": "mary@example.org", "use": "home"} in patient["telecom"]
    assert {"system": "phone", "value": "+353 (1) 5550999", "use": "work"} in patient["telecom"]
    assert patient["maritalStatus"]["coding"][0]["code"] == "M"
    assert patient["deceasedBoolean"] is False
    assert patient["extension"][0]["valueString"] == "KELLY"
    assert entry_for(result, patient)["request"] == {
        "method": "PUT", "url": "Patient?identifier=urn:oid:2.16.840.1.113883.19.5|555123"}


def test_adt_a01_encounter_and_clinical_segments() -> None:
    result = bundle_of("map_adt_a01_full")
    patient_url = entry_for(result, one(result, "Patient"))["fullUrl"]
    enc = one(result, "Encounter")
    assert enc["status"] == "in-progress"
    assert enc["class"]["code"] == "IMP"
    assert enc["class"]["system"] == "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    assert enc["identifier"][0]["value"] == "V778899"
    assert enc["period"] == {"start": "2024-06-01T08:15:00+02:00"}  # offset taken from MSH-7
    assert enc["subject"] == {"reference": patient_url}
    roles = {p["type"][0]["coding"][0]["code"] for p in enc["participant"]}
    assert roles == {"ATND", "REF", "ADM"}
    assert enc["location"][0]["location"]["display"] == "WARD7 12 A (STMARY)"
    allergies = result.resources("AllergyIntolerance")
    assert allergies[0]["code"]["coding"][0]["code"] == "7980"
    assert allergies[0]["criticality"] == "high"
    assert [m["text"] for m in allergies[0]["reaction"][0]["manifestation"]] == ["Hives", "Anaphylaxis"]
    assert allergies[1]["category"] == ["food"]
    condition = one(result, "Condition")
    assert condition["code"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10"
    assert enc["diagnosis"][0]["condition"]["reference"] == entry_for(result, condition)["fullUrl"]
    related = one(result, "RelatedPerson")
    assert related["relationship"][0]["coding"][0]["code"] == "SPS"
    coverage = one(result, "Coverage")
    assert coverage["identifier"][0]["value"] == "POL-123456"
    assert coverage["relationship"]["coding"][0]["code"] == "self"
    assert coverage["period"] == {"start": "2024-01-01", "end": "2024-12-31"}


@pytest.mark.parametrize(("trigger", "status"), [
    ("A01", "in-progress"), ("A02", "in-progress"), ("A03", "finished"), ("A04", "in-progress"),
    ("A05", "planned"), ("A11", "entered-in-error"), ("A13", "in-progress"),
])
def test_encounter_status_follows_trigger(trigger: str, status: str) -> None:
    text = load("map_adt_a01_full").replace("ADT^A01^ADT_A01", f"ADT^{trigger}^ADT_A01")
    assert one(to_fhir_bundle(parse(text)), "Encounter")["status"] == status


def test_a08_status_from_discharge_date() -> None:
    text = load("map_adt_a01_full").replace("ADT^A01^ADT_A01", "ADT^A08^ADT_A01")
    text = text.replace("|20240601081500", "|20240601081500|20240605120000")
    enc = one(to_fhir_bundle(parse(text)), "Encounter")
    assert enc["status"] == "finished"
    assert enc["period"]["end"] == "2024-06-05T12:00:00+02:00"


def test_a28_registration_has_no_encounter() -> None:
    result = bundle_of("adt_a28_251_add_person")
    assert result.resources("Encounter") == []
    assert len(result.resources("Patient")) == 1


def test_a40_merge_links_and_retires() -> None:
    result = bundle_of("adt_a40_251_merge")
    survivor, retired = result.resources("Patient")
    survivor_url = entry_for(result, survivor)["fullUrl"]
    retired_entry = entry_for(result, retired)
    assert retired["active"] is False
    assert retired["identifier"][0]["value"] == "HIE0000077"
    assert retired["link"] == [{"other": {"reference": survivor_url}, "type": "replaced-by"}]
    assert survivor["link"] == [{"other": {"reference": retired_entry["fullUrl"]}, "type": "replaces"}]
    assert retired_entry["request"]["url"] == "Patient?identifier=urn:lifeline:id:REGIONHIE|HIE0000077"


def test_a40_without_mrg_is_a_mapping_error() -> None:
    text = "\r".join(line for line in load("adt_a40_251_merge").splitlines() if not line.startswith("MRG"))
    with pytest.raises(MappingError, match="MRG"):
        to_fhir_bundle(parse(text))


# -- ORU -------------------------------------------------------------------------------------------

def observations(result: Any) -> dict[str, dict[str, Any]]:
    return {o["code"]["coding"][0]["code"]: o for o in result.resources("Observation")}


def test_oru_report_and_numeric_values() -> None:
    result = bundle_of("map_oru_r01_values")
    report = one(result, "DiagnosticReport")
    assert report["status"] == "final"
    assert report["identifier"][0]["value"] == "FL-1"
    assert report["issued"] == "2024-03-12T10:55:00-05:00"
    assert len(report["result"]) == 10
    obs = observations(result)
    hb = obs["718-7"]
    assert hb["valueQuantity"] == {"value": 13.5, "unit": "g/dL", "system": "http://unitsofmeasure.org",
                                   "code": "g/dL"}
    assert hb["referenceRange"][0]["low"]["value"] == 12.0
    assert hb["referenceRange"][0]["high"]["value"] == 16.0
    assert hb["interpretation"][0]["coding"][0]["code"] == "N"
    assert hb["effectiveDateTime"] == "2024-03-12T09:45:00-05:00"
    chol = obs["2093-3"]
    assert "system" not in chol["valueQuantity"] or chol["valueQuantity"]["system"] != "http://unitsofmeasure.org"
    assert chol["status"] == "preliminary"
    assert chol["referenceRange"][0] == {"high": {k: v for k, v in chol["valueQuantity"].items()
                                                  if k != "value"} | {"value": 200}, "text": "<200"}
    assert chol["effectiveDateTime"] == "2024-03-12T09:30:00-05:00"  # OBR-7 when OBX-14 is empty


def test_oru_other_value_types() -> None:
    obs = observations(bundle_of("map_oru_r01_values"))
    assert obs["5778-6"]["valueString"] == "Straw"
    assert obs["5778-6"]["status"] == "corrected"
    assert obs["600-7"]["valueCodeableConcept"]["coding"][0] == {
        "system": "http://snomed.info/sct", "code": "112283007", "display": "Escherichia coli"}
    crp = obs["1988-5"]
    assert crp["valueQuantity"]["comparator"] == "<"
    assert crp["valueQuantity"]["value"] == 5
    assert crp["valueQuantity"]["code"] == "mg/L"
    assert crp["referenceRange"][0]["low"]["value"] == 10
    assert obs["5048-4"]["valueRatio"] == {"numerator": {"value": 1}, "denominator": {"value": 128}}
    assert obs["2345-7"]["valueRange"]["low"]["value"] == 70
    assert obs["2345-7"]["valueRange"]["high"]["value"] == 110
    assert obs["21112-8"]["valueDateTime"] == "1965-01-01"
    assert obs["8665-2"]["valueDateTime"] == "2024-03-01T08:30:00-05:00"
    assert obs["11502-2"]["status"] == "cancelled"


def test_oru_unmappable_content_is_reported() -> None:
    result = bundle_of("map_oru_r01_values")
    assert [str(i) for i in result.issues] == ["OBX[10]-5: value type ED has no Observation.value[x] mapping"]
    note_holder = observations(result)["11502-2"]
    assert note_holder["note"] == [{"text": "Specimen slightly hemolysed."}]


def test_unknown_segments_and_fields_are_reported() -> None:
    result = bundle_of("map_adt_a01_full")
    assert any(i.location == "ZPI" for i in result.issues)
    text = load("map_adt_a01_full").replace("|19840229|F|", "|19840229|Q|")
    text = text.replace("^IRL^H||^PRN", "^IRL^H|DUBLIN CITY|^PRN")  # PID-12 county: the address district
    text = text.replace("\rEVN|", "\rZXX|1|site specific\rEVN|")
    result = to_fhir_bundle(parse(text))
    issues = {i.location: i.reason for i in result.issues}
    assert "table 0001" in issues["PID-8"]
    assert one(result, "Patient")["address"][0]["district"] == "DUBLIN CITY"
    assert issues["ZXX"].startswith("segment ZXX is not mapped")


def test_bad_dates_are_reported_not_raised() -> None:
    text = load("map_adt_a01_full").replace("|19840229|", "|19841345|")
    result = to_fhir_bundle(parse(text))
    assert "birthDate" not in one(result, "Patient")
    assert any(i.location == "PID-7" for i in result.issues)


def test_times_without_offset_keep_date_precision_or_use_default() -> None:
    text = load("map_adt_a01_full").replace("20240601083000+0200", "20240601083000")
    result = to_fhir_bundle(parse(text))
    assert one(result, "Encounter")["period"]["start"] == "2024-06-01"
    assert any(i.location == "PV1-44" for i in result.issues)
    tz = to_fhir_bundle(parse(text), config=MappingConfig(default_timezone="+0100"))
    assert one(tz, "Encounter")["period"]["start"] == "2024-06-01T08:15:00+01:00"


# -- orders, immunization, pharmacy, scheduling, documents -----------------------------------------

def test_orm_service_request() -> None:
    result = bundle_of("orm_o01_24_radiology")
    sr = one(result, "ServiceRequest")
    assert sr["status"] == "active"
    assert sr["intent"] == "order"
    assert sr["priority"] == "routine"
    assert sr["identifier"][0]["value"] == "RAD-ORD-9"
    assert sr["identifier"][0]["type"]["coding"][0]["code"] == "PLAC"
    assert sr["code"]["coding"][0]["system"] == "http://www.ama-assn.org/go/cpt"
    assert sr["note"] == [{"text": "Patient allergic to iodine? Premedicate per protocol."}]
    assert sr["requester"]["display"] == "JAMES KILDARE"
    assert entry_for(result, sr)["request"]["method"] == "PUT"
    patient_entry = entry_for(result, one(result, "Patient"))
    assert patient_entry["request"]["method"] == "POST"  # a lab/order feed never overwrites demographics
    assert patient_entry["request"]["ifNoneExist"].startswith("identifier=")
    assert one(result, "Condition")["subject"] == {"reference": patient_entry["fullUrl"]}  # DG1 of the order


def test_oml_service_request() -> None:
    result = bundle_of("oml_o21_251_lab")
    sr = one(result, "ServiceRequest")
    assert sr["intent"] == "order"
    assert sr["subject"]["reference"] == entry_for(result, one(result, "Patient"))["fullUrl"]


def test_vxu_immunization() -> None:
    result = bundle_of("vxu_v04_251_immunization")
    imm = one(result, "Immunization")
    assert imm["status"] == "completed"
    assert imm["vaccineCode"]["coding"][0] == {"system": "http://hl7.org/fhir/sid/cvx", "code": "08",
                                               "display": "Hep B, adolescent or pediatric"}
    assert imm["occurrenceDateTime"] == "2024-05-01T09:30:00-07:00"
    assert imm["doseQuantity"]["value"] == 0.5
    assert imm["doseQuantity"]["code"] == "mL"
    assert imm["lotNumber"] == "L123AB"
    assert imm["primarySource"] is True
    assert imm["manufacturer"]["display"] == "Merck"
    assert imm["route"]["coding"][0]["code"] == "C28161"
    assert imm["site"]["coding"][0]["code"] == "LT"
    assert imm["identifier"][0]["value"] == "IZ-778"
    assert entry_for(result, imm)["request"]["url"].startswith("Immunization?identifier=")
    assert len(bundle_of("vxu_v04_25_two_doses").resources("Immunization")) == 2


def test_rde_medication_request() -> None:
    result = bundle_of("rde_o11_251_pharmacy")
    mr = one(result, "MedicationRequest")
    assert mr["status"] == "active"
    medication = one(result, "Medication")
    assert mr["medicationReference"]["reference"] == entry_for(result, medication)["fullUrl"]
    assert medication["code"]["coding"][0]["system"] == "http://www.nlm.nih.gov/research/umls/rxnorm"
    dosage = mr["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 5
    assert dosage["route"]["coding"][0]["code"] == "PO"
    assert dosage["timing"]["code"]["text"] == "QD"
    assert mr["requester"]["display"] == "DR MARCUS WELBY"


def test_siu_appointment() -> None:
    result = bundle_of("map_siu_s12_tz")
    appt = one(result, "Appointment")
    assert appt["status"] == "booked"
    assert appt["start"] == "2024-04-15T09:30:00-07:00"
    assert appt["end"] == "2024-04-15T10:15:00-07:00"
    assert appt["minutesDuration"] == 45
    assert appt["identifier"][0]["value"] == "APT-F-2001"
    assert appt["comment"] == "Bring medication list."
    actors = [p["actor"] for p in appt["participant"]]
    assert actors[0]["reference"] == entry_for(result, one(result, "Patient"))["fullUrl"]
    room = next(a for a in actors if a.get("display") == "CLINIC2 EXAM4 (VALLEYCLINIC)")
    location = next(e["resource"] for e in result.bundle["entry"] if e["fullUrl"] == room["reference"])
    assert location["resourceType"] == "Location" and location["name"] == "EXAM4"
    cancelled = load("map_siu_s12_tz").replace("SIU^S12^SIU_S12", "SIU^S15^SIU_S12")
    assert one(to_fhir_bundle(parse(cancelled)), "Appointment")["status"] == "cancelled"


def test_mdm_document_reference() -> None:
    result = bundle_of("map_mdm_t02_pdf")
    doc = one(result, "DocumentReference")
    assert doc["status"] == "current"
    assert doc["docStatus"] == "final"
    assert doc["masterIdentifier"]["value"] == "DOC-4455"
    assert doc["type"]["coding"][0]["code"] == "DS"
    assert doc["date"] == "2024-03-20T18:00:00Z"
    text, pdf = (c["attachment"] for c in doc["content"])
    assert base64.b64decode(text["data"]).decode() == "Admitted with chest pain & dyspnoea.\nDischarged home."
    assert text["contentType"].startswith("text/plain")
    assert pdf["contentType"] == "application/pdf"
    assert base64.b64decode(pdf["data"]).startswith(b"%PDF")
    assert doc["context"]["encounter"][0]["reference"] == entry_for(result, one(result, "Encounter"))["fullUrl"]


def test_unsupported_type_is_a_mapping_error() -> None:
    msg = parse(load("ack_a01_251_aa"))
    assert not supports(msg)
    with pytest.raises(MappingError, match="no FHIR mapping"):
        to_fhir_bundle(msg)


def test_patient_without_identifier_is_keyed_on_demographics_or_refused() -> None:
    text = load("map_oru_r01_values").replace("MRN42^^^CITYHOSP^MR", "")
    result = to_fhir_bundle(parse(text))
    patient = one(result, "Patient")
    assert patient["identifier"][0]["system"] == KEY_SYSTEM
    assert any(i.location == "PID-3" and "name, birth date" in i.reason for i in result.issues)
    assert patient["identifier"] == one(to_fhir_bundle(parse(text)), "Patient")["identifier"]
    with pytest.raises(MappingError, match="PID-3"):
        to_fhir_bundle(parse(text.replace("ROE^RICHARD", "")))


def test_missing_event_segments_are_reported_not_refused() -> None:
    no_sch = "\r".join(s for s in load("map_siu_s12_tz").split("\r") if not s.startswith("SCH"))
    result = to_fhir_bundle(parse(no_sch))
    assert result.resources("Patient") and not result.resources("Appointment")
    assert any(i.location == "SCH" and i.severity == "error" for i in result.issues)
    no_date = load("vxu_v04_251_immunization").replace("|20240501093000|20240501093000|", "|||", 1)
    result = to_fhir_bundle(parse(no_date))
    assert any(i.location.startswith("RXA") and i.severity == "error" for i in result.issues)


def test_invalid_resource_names_resource_and_field() -> None:
    result = bundle_of("map_adt_a01_full")
    broken = copy.deepcopy(result.bundle)
    next(e for e in broken["entry"] if e["resource"]["resourceType"] == "Patient")["resource"]["birthDate"] = (
        "1984-02-30x")
    with pytest.raises(MappingError, match=r"Patient .*birthDate"):
        validate_bundle(broken)


# -- idempotency -----------------------------------------------------------------------------------

MAPPED = ["map_adt_a01_full", "adt_a40_251_merge", "map_oru_r01_values", "orm_o01_24_radiology",
          "oml_o21_251_lab", "vxu_v04_251_immunization", "rde_o11_251_pharmacy", "map_siu_s12_tz",
          "map_mdm_t02_pdf"]


@pytest.mark.parametrize("name", MAPPED)
def test_mapping_is_idempotent(name: str) -> None:
    first, second = bundle_of(name), bundle_of(name)
    assert first.bundle == second.bundle
    urls = [e["fullUrl"] for e in first.bundle["entry"]]
    assert len(urls) == len(set(urls))
    assert all(u.startswith("urn:uuid:") for u in urls)
    for entry in first.bundle["entry"]:
        request = entry["request"]
        conditional = request.get("ifNoneExist", "") if request["method"] == "POST" else request["url"]
        if entry["resource"]["resourceType"] == "Provenance":  # no identifier element: keyed on a tag
            system, value = conditional.split("_tag=", 1)[1].split("|", 1)
            assert any(t["code"] == value for t in entry["resource"]["meta"]["tag"])
            continue
        assert "identifier=" in conditional, entry
        system, value = conditional.split("identifier=", 1)[1].split("|", 1)
        assert any(i["value"] == unquote(value) for i in entry["resource"]["identifier"])


def test_fullurls_are_stable_across_messages() -> None:
    # The same patient in an ADT and in an ORU from another sender gets one fullUrl: a key, not a message.
    adt = parse(load("rde_o11_251_pharmacy"))
    oru = parse(load("map_mdm_t02_pdf"))
    url = {entry_for(r, one(r, "Patient"))["fullUrl"] for r in (to_fhir_bundle(adt), to_fhir_bundle(oru))}
    assert len(url) == 1


def test_derived_keys_for_resources_without_business_ids() -> None:
    result = bundle_of("map_adt_a01_full")
    allergy = result.resources("AllergyIntolerance")[0]
    assert allergy["identifier"][0]["system"] == KEY_SYSTEM
    # A later A08 with the allergy list in another order still addresses the same resources.
    text = load("map_adt_a01_full")
    lines = text.split("\r")
    al1 = [i for i, line in enumerate(lines) if line.startswith("AL1")]
    lines[al1[0]], lines[al1[1]] = lines[al1[1]], lines[al1[0]]
    swapped = to_fhir_bundle(parse("\r".join(lines).replace("MAP-A01-0001", "MAP-A08-0002")))
    assert {a["identifier"][0]["value"] for a in swapped.resources("AllergyIntolerance")} == {
        a["identifier"][0]["value"] for a in result.resources("AllergyIntolerance")}


# -- every fixture ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(good_fixtures()))
def test_every_mappable_fixture_validates(name: str) -> None:
    text = good_fixtures()[name]
    messages = parse_batch(text).messages if text.lstrip("\ufeff").startswith(("FHS", "BHS")) else [parse(text)]
    mapped = [m for m in messages if supports(m)]
    if not mapped:
        pytest.skip("no FHIR mapping for this message type")
    for message in mapped:
        result = to_fhir_bundle(message)
        validate_bundle(result.bundle)
        assert result.bundle["type"] == "transaction"
        assert result.resources("Patient")
