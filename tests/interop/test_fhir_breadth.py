"""Every message type maps to a valid, idempotent transaction Bundle; one test per resource kind."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from interop.fhir import SUPPORTED_TYPES, to_fhir_bundle
from interop.fhir.mapping.core import KEY_SYSTEM, URI_SYSTEM
from interop.message import parse
from tests.fixtures import load, load_bytes, names

ALL_TYPES = sorted(f"{code}^{trigger}" for code, triggers in SUPPORTED_TYPES.items() for trigger in triggers
                   if f"{code}^{trigger}" not in {"ADT^A12", "ADT^A21", "ADT^A22", "ADT^A38", "MDM^T03",
                                                   "MDM^T04", "MDM^T07", "MDM^T08", "MDM^T11"})
TYPED = [n for n in names("map_") if n.endswith(("_a", "_b"))]


def fixture(prefix: str, variant: str = "a") -> str:
    found = [n for n in TYPED if n.startswith(f"map_{prefix}_") and n.endswith(f"_{variant}")]
    assert found, prefix
    return found[0]


def bundle(name: str) -> Any:
    return to_fhir_bundle(parse(load(name)))


def by_url(result: Any) -> dict[str, dict[str, Any]]:
    return {e["fullUrl"]: e["resource"] for e in result.bundle["entry"]}


def url_of(result: Any, resource: dict[str, Any]) -> str:
    return next(e["fullUrl"] for e in result.bundle["entry"] if e["resource"] is resource)


def references(value: Any) -> list[str]:
    if isinstance(value, dict):
        own = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return own + [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


# -- coverage of the message types -----------------------------------------------------------------------

def test_two_fixtures_of_every_message_type_across_versions_and_quirks() -> None:
    types: Counter[str] = Counter()
    versions = set()
    for name in TYPED:
        message = parse(load(name))
        types[message.message_type] += 1
        versions.add(message.version)
    for message_type in ALL_TYPES:
        assert types[message_type] >= 2, message_type
    assert {"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"} <= versions
    raw = [load_bytes(n) for n in TYPED]
    assert any(b.startswith(b"\xef\xbb\xbf") for b in raw)            # a BOM
    assert any(b"\n" in b and b"\r" not in b for b in raw)              # LF endings
    assert any(b"\r\n" in b for b in raw)                               # CRLF endings
    assert any(b"\nZPV|" in b or b"\rZPV|" in b for b in raw)           # a Z-segment
    assert any(b"~~" in b for b in raw)                                 # empty repetitions
    assert any(b"\\T\\" in b or b"\\S\\" in b for b in raw)            # escape sequences


@pytest.mark.parametrize("name", TYPED)
def test_every_fixture_maps_to_a_valid_idempotent_transaction(name: str) -> None:
    first, again = bundle(name), bundle(name)
    assert first.bundle == again.bundle
    entries = first.bundle["entry"]
    urls = [e["fullUrl"] for e in entries]
    assert len(urls) == len(set(urls))
    for entry in entries:
        assert entry["fullUrl"].startswith("urn:uuid:")
        request = entry["request"]
        assert request["method"] in ("PUT", "POST")
        conditional = request["url"] if request["method"] == "PUT" else request["ifNoneExist"]
        assert conditional.startswith(("identifier=", "_tag=")) or "?identifier=" in conditional
    # every reference inside the bundle points at an entry of the bundle
    for ref in references([e["resource"] for e in entries]):
        assert ref in urls, (name, ref)
    counts = Counter(e["resource"]["resourceType"] for e in entries)
    assert counts["Patient"] >= 1 and counts["Provenance"] >= 1
    assert any(i.location.startswith("ZPV") for i in first.issues) == (b"ZPV|" in load_bytes(name))


# -- one test per resource kind -------------------------------------------------------------------------

def test_patient_identifiers_telecom_and_extensions() -> None:
    text = load(fixture("adt_a01", "a")).replace("|20240601103000||ADT", "|20240601103000-0600||ADT")
    result = to_fhir_bundle(parse(text))
    patient = result.resources("Patient")[0]
    values = {i["value"] for i in patient["identifier"]}
    assert {"EID400100", "NO400100", "X0", "A400100", "999-00-1234", "W400100771", "1EG4TE5MK73",
            "MIL-4412"} <= values
    telecom = {(t["system"], t.get("use")) for t in patient["telecom"]}
    assert {("phone", "home"), ("email", "home"), ("phone", "work")} <= telecom
    urls = {x["url"]: x for x in patient["extension"]}
    race = urls["http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"]["extension"]
    assert {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3",
                                                  "display": "White"}} in race
    assert any(x["url"] == "ombCategory" and x["valueCoding"]["code"] == "2186-5"
               for x in urls["http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"]["extension"])
    assert urls["http://hl7.org/fhir/StructureDefinition/patient-religion"]["valueCodeableConcept"][
        "coding"][0]["code"] == "CAT"
    assert urls["http://hl7.org/fhir/StructureDefinition/patient-birthPlace"]["valueAddress"] == {"text": "CASPER WY"}
    assert "http://hl7.org/fhir/StructureDefinition/patient-citizenship" in urls
    assert patient["birthDate"] == "1971-03-04"
    assert patient["_birthDate"]["extension"][0]["valueDateTime"].startswith("1971-03-04T08:15")
    assert patient["contact"][0]["relationship"][0]["coding"][0]["code"] == "SPS"
    assert len(patient["generalPractitioner"]) >= 2  # PD1-3 organisation, PD1-4 practitioner


def test_location_partof_chain() -> None:
    result = bundle(fixture("adt_a01", "a"))
    resources = by_url(result)
    enc = result.resources("Encounter")[0]
    bed = resources[enc["location"][0]["location"]["reference"]]
    chain = [bed]
    while "partOf" in chain[-1]:
        chain.append(resources[chain[-1]["partOf"]["reference"]])
    assert [c["physicalType"]["coding"][0]["code"] for c in chain] == ["bd", "ro", "wa", "lvl", "bu", "si"]
    assert [c["name"] for c in chain] == ["B", "401", "4W", "4", "MAIN", "NORTHVALE"]
    # the same PL in another message is the same Location
    other = bundle(fixture("adt_a01", "a"))
    assert enc["location"][0]["location"]["reference"] == other.resources("Encounter")[0]["location"][0][
        "location"]["reference"]


def test_organizations_from_msh_authorities_and_payers() -> None:
    result = bundle(fixture("adt_a01", "a"))
    orgs = result.resources("Organization")
    keys = {i["value"] for o in orgs for i in o["identifier"] if i["system"] == URI_SYSTEM}
    assert "urn:oid:2.16.840.1.113883.3.7001" in keys      # MSH-4 (and CX-4 / PV1-19 authority): one resource
    assert "urn:oid:2.16.840.1.113883.3.9999" in keys      # MSH-6
    assert "urn:oid:2.16.840.1.113883.4.6" in keys         # XCN-9 assigning authority (NPI)
    assert any(o["name"] == "Acme Mutual Insurance" for o in orgs)
    coverage = result.resources("Coverage")[0]
    assert by_url(result)[coverage["payor"][0]["reference"]]["name"] == "Acme Mutual Insurance"
    assert len(keys) == len([o for o in orgs if any(i["system"] == URI_SYSTEM for i in o["identifier"])])


def test_practitioners_are_deduplicated() -> None:
    result = bundle(fixture("adt_a01", "a"))
    practitioners = result.resources("Practitioner")
    ids = [(i["system"], i["value"]) for p in practitioners for i in p["identifier"] if i["system"] != KEY_SYSTEM]
    assert len(ids) == len(set(ids))
    npi = {value for system, value in ids if system == "urn:oid:2.16.840.1.113883.4.6"}
    assert {"1234", "4455"} <= npi  # PV1-7 and PV1-17 name the same NPI practitioner: one resource
    assert {"1234", "5678", "9012", "4455"} <= {value for _, value in ids}
    enc = result.resources("Encounter")[0]
    roles = {p["type"][0]["coding"][0]["code"] for p in enc["participant"] if p.get("type")}
    assert {"ATND", "REF", "CON", "ADM"} <= roles


def test_practitioner_role_from_rol_and_prd() -> None:
    result = bundle(fixture("adt_a01", "a"))
    role = result.resources("PractitionerRole")[0]
    assert role["code"][0]["coding"][0]["code"] == "PP"
    assert by_url(result)[role["practitioner"]["reference"]]["name"][0]["family"] == "WELBY"
    assert by_url(result)[role["organization"]["reference"]]["name"] == "RIVERTON FAMILY CLINIC"
    ref = bundle(fixture("ref_i12", "a"))
    sr = ref.resources("ServiceRequest")[0]
    requester = by_url(ref)[sr["requester"]["reference"]]
    assert requester["resourceType"] == "PractitionerRole" and requester["code"][0]["coding"][0]["code"] == "RP"


def test_observations_in_every_family() -> None:
    for prefix in ("adt_a01", "orm_o01", "omg_o19", "vxu_v04", "ppr_pc1", "ref_i12", "oru_r01"):
        assert bundle(fixture(prefix, "a")).resources("Observation"), prefix
    adt = bundle(fixture("adt_a01", "a"))
    height = next(o for o in adt.resources("Observation") if o["code"]["coding"][0]["code"] == "8302-2")
    assert height["valueQuantity"]["value"] == 172
    orm = bundle(fixture("orm_o01", "a"))
    obs = orm.resources("Observation")[0]
    assert obs["basedOn"][0]["reference"] == url_of(orm, orm.resources("ServiceRequest")[0])
    oru = bundle(fixture("oru_r01", "b"))
    wbc = next(o for o in oru.resources("Observation") if o["code"]["coding"][0]["code"] == "6690-2")
    performers = {by_url(oru)[p["reference"]]["resourceType"] for p in wbc["performer"]}
    assert performers == {"Organization", "Practitioner"}  # OBX-23 lab, OBX-25 medical director


def test_service_requests_and_diagnostic_reports() -> None:
    oru = bundle(fixture("oru_r01", "a"))
    report = oru.resources("DiagnosticReport")[0]
    sr = by_url(oru)[report["basedOn"][0]["reference"]]
    assert sr["resourceType"] == "ServiceRequest" and sr["identifier"][0]["value"].startswith("PO-")
    entry = next(e for e in oru.bundle["entry"] if e["resource"] is sr)
    assert entry["request"]["method"] == "POST"  # a result message never overwrites the order
    orm = bundle(fixture("orm_o01", "b"))
    statuses = sorted(s["status"] for s in orm.resources("ServiceRequest"))
    assert statuses == ["active", "revoked"]  # the second ORC (cancel, no OBR) is an order too
    for prefix in ("oml_o21", "omg_o19", "oul_r22", "oul_r23", "oul_r24"):
        assert bundle(fixture(prefix, "a")).resources("ServiceRequest"), prefix


def test_specimens_from_spm_and_obr15() -> None:
    oml = bundle(fixture("oml_o21", "a"))
    spm = oml.resources("Specimen")[0]
    assert spm["type"]["coding"][0]["code"] == "119297000"
    assert spm["collection"]["method"]["coding"][0]["code"] == "VENIP"
    assert url_of(oml, spm) in [s["reference"] for s in oml.resources("ServiceRequest")[0]["specimen"]]
    oul = bundle(fixture("oul_r22", "a"))
    report = oul.resources("DiagnosticReport")[0]
    assert report["specimen"][0]["reference"] == url_of(oul, oul.resources("Specimen")[0])
    old = bundle(fixture("oru_r01", "b"))  # OBR-15 specimen source
    assert old.resources("Specimen")[0]["type"]["coding"][0]["code"] == "BLD"


def test_provenance_names_the_message_and_lifeline() -> None:
    result = bundle(fixture("adt_a01", "b"))
    provenances = result.resources("Provenance")
    source = next(p for p in provenances if p["entity"][0]["role"] == "source")
    assert source["entity"][0]["what"]["identifier"]["value"] == "FX-ADTA01-1"
    assert {"display": "Lifeline"} in [a["who"] for a in source["agent"]]
    patient_url = url_of(result, result.resources("Patient")[0])
    assert {"reference": patient_url} in source["target"]
    assert len(provenances) == 2  # the message's, and the EVN event's (operator EVN-5)


def test_related_persons_from_nk1_gt1_and_insured() -> None:
    result = bundle(fixture("adt_a01", "a"))
    names = sorted(r["name"][0]["family"] for r in result.resources("RelatedPerson") if r.get("name"))
    assert names == ["HARTLEY", "HARTLEY"]  # NK1 spouse and GT1 guarantor (different keys)
    assert all(r.get("name") for r in result.resources("RelatedPerson"))
    contacts = result.resources("Patient")[0]["contact"]
    assert by_url(result)[contacts[1]["organization"]["reference"]]["name"] == "RIVERTON MILLS"  # NK1-13 only
    a08 = bundle(fixture("adt_a08", "a"))
    coverage = a08.resources("Coverage")[0]
    assert by_url(a08)[coverage["subscriber"]["reference"]]["resourceType"] in ("RelatedPerson", "Patient")


def test_account_coverage_and_guarantor() -> None:
    result = bundle(fixture("adt_a01", "a"))
    account = result.resources("Account")[0]
    assert account["identifier"][0]["value"] == "AC400100"
    assert by_url(result)[account["guarantor"][0]["party"]["reference"]]["resourceType"] == "RelatedPerson"
    coverage = result.resources("Coverage")[0]
    assert coverage["identifier"][0]["value"] == "POL-880"


def test_condition_allergy_procedure() -> None:
    result = bundle(fixture("adt_a01", "a"))
    assert {c["code"]["coding"][0]["code"] for c in result.resources("Condition")} == {"I50.9", "E11.9"}
    allergies = result.resources("AllergyIntolerance")
    assert [a["reaction"][0]["manifestation"] for a in allergies if "reaction" in a] == [
        [{"text": "Hives"}, {"text": "Wheezing"}]]  # the empty repetition is dropped
    procedure = result.resources("Procedure")[0]
    assert procedure["code"]["coding"][0]["code"] == "93000"
    assert by_url(result)[procedure["performer"][0]["actor"]["reference"]]["name"][0]["family"] == "CHEN"
    iam = bundle(fixture("adt_a60", "a")).resources("AllergyIntolerance")
    assert {a["code"]["coding"][0]["code"] for a in iam if a["code"].get("coding")} == {"1191"}
    problem = bundle(fixture("ppr_pc1", "a")).resources("Condition")[0]
    assert problem["category"][0]["coding"][0]["code"] == "problem-list-item"
    deleted = bundle(fixture("ppr_pc3", "a")).resources("Condition")[0]
    assert deleted["verificationStatus"]["coding"][0]["code"] == "entered-in-error"


def test_encounter_from_pv1_and_pv2_and_episode_of_care() -> None:
    result = bundle(fixture("adt_a01", "a"))
    enc = result.resources("Encounter")[0]
    assert enc["reasonCode"][0]["coding"][0]["code"] == "R07.9"
    assert enc["length"]["value"] == 4
    assert enc["priority"]["coding"][0]["code"] == "UR"
    assert enc["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "01"
    text = load(fixture("adt_a01", "a")).replace("20240601081500|\r", "20240601081500||||||||||EP-77^^^NORTHVALE\r")
    eoc = to_fhir_bundle(parse(text))
    episode = eoc.resources("EpisodeOfCare")[0]
    assert episode["identifier"][0]["value"] == "EP-77"
    assert eoc.resources("Encounter")[0]["episodeOfCare"][0]["reference"] == url_of(eoc, episode)


def test_pharmacy_medication_request_dispense() -> None:
    result = bundle(fixture("rds_o13", "b"))
    med = result.resources("Medication")[0]
    request = result.resources("MedicationRequest")[0]
    dispense = result.resources("MedicationDispense")[0]
    assert request["medicationReference"]["reference"] == dispense["medicationReference"]["reference"]
    assert dispense["authorizingPrescription"][0]["reference"] == url_of(result, request)
    assert dispense["quantity"]["value"] == 60
    assert med["ingredient"][0]["itemCodeableConcept"]["coding"][0]["code"] == "313782"
    assert request["dosageInstruction"][0]["route"]["coding"][0]["code"] == "PO"


def test_immunization_with_observations_part_of_it() -> None:
    result = bundle(fixture("vxu_v04", "a"))
    imm = result.resources("Immunization")[0]
    assert imm["vaccineCode"]["coding"][0]["code"] == "141"
    assert by_url(result)[imm["manufacturer"]["reference"]]["name"] == "GlaxoSmithKline"
    for obs in result.resources("Observation"):
        assert obs["partOf"] == [{"reference": url_of(result, imm)}]


def test_appointment_document_charge_item_consent() -> None:
    siu = bundle(fixture("siu_s15", "a"))
    assert siu.resources("Appointment")[0]["status"] == "cancelled"
    assert any(by_url(siu).get(p["actor"].get("reference", ""), {}).get("resourceType") == "Location"
               for p in siu.resources("Appointment")[0]["participant"])
    mdm = bundle(fixture("mdm_t02", "a"))
    assert mdm.resources("DocumentReference")[0]["docStatus"] == "final"
    replaced = bundle(fixture("mdm_t10", "a")).resources("DocumentReference")[0]
    assert replaced["relatesTo"][0]["code"] == "replaces"
    dft = bundle(fixture("dft_p03", "a"))
    charges = dft.resources("ChargeItem")
    assert sorted(c["code"]["coding"][0]["code"] for c in charges) == ["80053", "93000"]
    assert charges[0]["priceOverride"] == {"value": 48.0, "currency": "USD"}
    text = load(fixture("adt_a04", "a")).replace("\rPV1|", "\rCON|1|001^Treatment^HL70496|CN-9^NORTHVALE||||||||A|||"
                                                "20240601080000|20240601080000|20250601\rPV1|", 1)
    consent = to_fhir_bundle(parse(text)).resources("Consent")[0]
    assert consent["status"] == "active"
    assert consent["provision"]["period"]["end"].startswith("2025-06-01")


def test_merge_variants() -> None:
    a40 = bundle(fixture("adt_a40", "a"))
    retired = next(p for p in a40.resources("Patient") if p["active"] is False)
    assert retired["link"][0]["type"] == "replaced-by"
    a41 = bundle(fixture("adt_a41", "a"))
    assert [a["status"] for a in a41.resources("Account")] == ["active", "inactive"]
    assert len(a41.resources("Patient")) == 1  # an account merge retires no patient


def test_encounter_without_visit_number_in_a_result_message() -> None:
    def message(control: str, admit: str) -> str:
        return ("MSH|^~\\&|LAB|NORTHVALE|LIFELINE|HUB|20240601103000+0200||ORU^R01^ORU_R01|" + control + "|P|2.5.1\r"
                "PID|1||NO1^^^NORTHVALE^MR||HARTLEY^EVELYN\r"
                "PV1|1|O|CLINIC1^^^NORTHVALE" + "|" * 41 + admit + "\r"
                "OBR|1|PO-1^ORDERS|FL-1^LAB|2345-7^Glucose^LN|||20240601090000\r"
                "OBX|1|NM|2345-7^Glucose^LN||95|mg/dL|||||F")
    first = to_fhir_bundle(parse(message("C-1", "20240601080000")))
    second = to_fhir_bundle(parse(message("C-2", "20240601080000")))
    key = first.resources("Encounter")[0]["identifier"][0]
    assert key["system"] == KEY_SYSTEM
    assert key == second.resources("Encounter")[0]["identifier"][0]  # same admission, same Encounter
    entry = next(e for e in first.bundle["entry"] if e["resource"]["resourceType"] == "Encounter")
    assert entry["request"]["method"] == "POST"  # a result message never overwrites the visit
    assert first.resources("Observation")[0]["encounter"] == {"reference": entry["fullUrl"]}
    bare = to_fhir_bundle(parse(message("C-3", "").replace("PV1|1|O|", "PV1|1||")))
    assert bare.resources("Encounter") == []
