"""Message generation from dataclasses / dicts: output parses, validates strictly, escapes text."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from interop.errors import GenerationError, InteropError
from interop.generate import SUPPORTED_TYPES, MessageSpec, Patient, generate, generate_from_dict, hl7_datetime
from interop.message import parse
from interop.validate import validate

NOW = datetime(2024, 3, 12, 8, 30, tzinfo=UTC)


def _spec(message_type: str = "ADT^A01", **extra: Any) -> dict[str, Any]:
    return {
        "message_type": message_type,
        "patient": {"id": "P-1", "id_authority": "HOSP", "family": "O|Brien", "given": "Ann^Marie",
                    "birth_date": "1970-04-15", "sex": "F", "street": "1 Main & Co", "city": "Town",
                    "phone": "555-0100"},
        **extra,
    }


def _oru() -> dict[str, Any]:
    return _spec("ORU^R01", visit={"patient_class": "I", "location": "4WEST^412^B",
                                   "admit_time": "2024-03-12T08:00:00+01:00"}, orders=[{
        "placer_id": "O-1", "filler_id": "F-1", "service_code": "24323-8", "service_text": "CMP",
        "ordered_at": "2024-03-12T07:00", "observations": [
            {"code": "2345-7", "text": "Glucose", "value": 182, "units": "mg/dL", "reference_range": "70-99",
             "abnormal_flag": "H", "observed_at": "2024-03-12"},
            {"code": "NOTE", "value": "line 1\nline 2 | ^ ~ \\ &", "value_type": "TX"},
            {"code": "HBSAG", "value_type": "CWE", "value_code": "260385009", "value": "Negative",
             "value_system": "SCT"},
            {"code": "EDD", "value_type": "DT", "value": "2024-12-24"},
            {"code": "T", "value_type": "TS", "value": "2024-03-12T07:00:00Z"},
            {"code": "R", "value": 0.25},
        ]}])


@pytest.mark.parametrize("message_type", sorted(SUPPORTED_TYPES))
@pytest.mark.parametrize("version", ["2.3", "2.4", "2.5.1", "2.7", "2.8"])
def test_every_type_and_version_is_strictly_valid(message_type: str, version: str) -> None:
    data = _oru() if message_type == "ORU^R01" else _spec(message_type)
    if message_type == "ORM^O01":
        data["orders"] = [{"placer_id": "O-1", "service_code": "X", "service_text": "Xray"}]
    data["version"] = version
    text = generate_from_dict(data, now=NOW)
    report = validate(text, "strict")
    assert report.ok, [str(f) for f in report.findings]
    message = parse(text)
    assert message.message_type == message_type and message.version == version


def test_values_are_escaped_and_read_back() -> None:
    m = parse(generate_from_dict(_oru(), now=NOW))
    assert m.get("PID-5.1") == "O|Brien" and m.get("PID-5.2") == "Ann^Marie"
    assert m.get("PID-11.1") == "1 Main & Co"
    assert m.get("OBX[2]-5") == "line 1\nline 2 | ^ ~ \\ &"
    assert m.get("OBX[1]-5") == "182" and m.get("OBX[1]-2") == "NM" and m.get("OBX[6]-5") == "0.25"
    assert m.get("OBX[3]-5.2") == "Negative" and m.get("OBX[4]-5") == "20241224"
    assert m.get("OBX[5]-5") == "20240312070000+0000"
    assert m.get("PV1-44") == "20240312080000+0100" and m.get("PV1-3.2") == "412"
    assert m.get("MSH-7") == "20240312083000"


def test_header_fields_and_control_id() -> None:
    text = generate_from_dict(_spec(control_id="C-9", sending_facility="NORTH", timestamp="20240101120000",
                                    processing_id="T"))
    m = parse(text)
    assert (m.control_id, m.sending_facility, m.msh.get(7), m.processing_id) == ("C-9", "NORTH", "20240101120000",
                                                                                "T")
    assert m.segment("PV1") is not None and m.get("PV1-2") == "U"  # ADT always has a PV1
    assert parse(generate_from_dict(_spec())).control_id  # generated when not given


def test_dataclass_api() -> None:
    text = generate(MessageSpec(message_type="adt^a08", patient=Patient(id="1", family="DOE")), now=NOW)
    assert validate(text, "strict").ok


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("patient"), "patient"),
        (lambda d: d.update(message_type="SIU^S12"), "message_type"),
        (lambda d: d.update(version="2.9"), "version"),
        (lambda d: d.update(processing_id="X"), "processing_id"),
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d.update(patient=[]), "patient"),
        (lambda d: d["patient"].update(sex="Q"), "patient.sex"),
        (lambda d: d["patient"].update(id=" "), "patient.id"),
        (lambda d: d["patient"].update(family=""), "patient.family"),
        (lambda d: d["patient"].update(birth_date="15/04/1970"), "patient.birth_date"),
        (lambda d: d["patient"].update(given=True), "patient.given"),
        (lambda d: d["patient"].update(given=None), "patient.given"),
        (lambda d: d.update(visit={"patient_class": "Z"}), "visit.patient_class"),
        (lambda d: d.update(visit={"patient_class": ""}), "visit.patient_class"),
        (lambda d: d.update(visit={"admit_time": "yesterday"}), "visit.admit_time"),
        (lambda d: d.update(orders={}), "orders"),
        (lambda d: d.update(orders=[{"placer_id": "1", "service_code": "X"}]), "orders"),
    ],
)
def test_bad_adt_input_names_the_field(mutate: Any, field: str) -> None:
    data = _spec()
    mutate(data)
    with pytest.raises(GenerationError) as info:
        generate_from_dict(data)
    assert info.value.field == field
    assert isinstance(info.value, InteropError)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(orders=[]), "orders"),
        (lambda d: d["orders"][0].update(placer_id=""), "orders[0].placer_id"),
        (lambda d: d["orders"][0].update(service_code=""), "orders[0].service_code"),
        (lambda d: d["orders"][0].update(observations=[]), "orders[0].observations"),
        (lambda d: d["orders"][0].update(result_status="Q"), "orders[0].result_status"),
        (lambda d: d["orders"][0].update(ordered_at="soon"), "orders[0].ordered_at"),
        (lambda d: d["orders"][0]["observations"][0].update(value="high", value_type="NM"),
         "orders[0].observations[0].value"),
        (lambda d: d["orders"][0]["observations"][0].update(code=""), "orders[0].observations[0].code"),
        (lambda d: d["orders"][0]["observations"][0].update(abnormal_flag="??"),
         "orders[0].observations[0].abnormal_flag"),
        (lambda d: d["orders"][0]["observations"][0].update(status="Q"), "orders[0].observations[0].status"),
        (lambda d: d["orders"][0]["observations"][0].update(status=""), "orders[0].observations[0].status"),
        (lambda d: d["orders"][0]["observations"][0].update(value_type="SN"),
         "orders[0].observations[0].value_type"),
        (lambda d: d["orders"][0]["observations"][2].update(value_code="", value=""),
         "orders[0].observations[2].value_code"),
        (lambda d: d["orders"][0]["observations"][3].update(value="2024-12-24T10:00"),
         "orders[0].observations[3].value"),
        (lambda d: d["orders"][0]["observations"][0].update(observed_at="x"),
         "orders[0].observations[0].observed_at"),
        (lambda d: d["orders"][0]["observations"].append({"value": "1"}), "orders[0].observations[6].code"),
    ],
)
def test_bad_oru_input_names_the_field(mutate: Any, field: str) -> None:
    data = _oru()
    mutate(data)
    with pytest.raises(GenerationError) as info:
        generate_from_dict(data)
    assert info.value.field == field


def test_orm_orders_carry_no_observations() -> None:
    data = _spec("ORM^O01", orders=[{"placer_id": "1", "service_code": "X", "observations": [{"code": "A"}]}])
    with pytest.raises(GenerationError) as info:
        generate_from_dict(data)
    assert info.value.field == "orders[0].observations"


def test_top_level_must_be_an_object() -> None:
    with pytest.raises(GenerationError) as info:
        generate_from_dict(["not", "an", "object"])
    assert info.value.field == "$"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1970-04-15", "19700415"), ("2024-03-12T08:30", "202403120830"),
        ("2024-03-12 08:30:05Z", "20240312083005+0000"), ("2024-03-12T08:30:05.123-05:00", "20240312083005-0500"),
        ("20240312", "20240312"),
    ],
)
def test_hl7_datetime(value: str, expected: str) -> None:
    assert hl7_datetime(value, "x") == expected
