"""Mapping cost is linear in repeated segments, and absurd values become typed, reported outcomes."""

from __future__ import annotations

from typing import Any

import pytest

from interop.fhir import to_fhir_bundle
from interop.fhir.mapping import core
from interop.message import parse
from tests.fixtures import load

ADT_HEAD = ("MSH|^~\\&|ADT|HOSP|LIFELINE|HUB|20240601083000+0200||ADT^A08^ADT_A01|LIM-1|P|2.5.1\r"
            "PID|1||L-1^^^HOSP^MR||DOE^JANE||19800101|F\r")


def _allergies(n: int, *, distinct: bool) -> str:
    lines = [f"AL1|{i}|DA|{(str(i) if distinct else '7980')}^Penicillin^RXNORM|MO" for i in range(1, n + 1)]
    return ADT_HEAD + "\r".join(lines)


def _count_key_derivations(monkeypatch: pytest.MonkeyPatch, text: str) -> int:
    calls = 0
    original = core.Mapper.derived_key

    def counting(self: core.Mapper, resource_type: str, *parts: str) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return original(self, resource_type, *parts)

    monkeypatch.setattr(core.Mapper, "derived_key", counting)
    monkeypatch.setattr(core, "validate_bundle", lambda bundle: None)  # the cost under test is the keying
    result = to_fhir_bundle(parse(text))
    assert len(result.resources("AllergyIntolerance")) == text.count("\rAL1|")
    return calls


@pytest.mark.parametrize("distinct", [False, True])
def test_unique_key_work_is_linear_in_repeated_segments(monkeypatch: pytest.MonkeyPatch, distinct: bool) -> None:
    # 1,600 identical AL1 used to cost 1.3 million key derivations (n²/2); now each costs a constant few.
    small = _count_key_derivations(monkeypatch, _allergies(160, distinct=distinct))
    large = _count_key_derivations(monkeypatch, _allergies(1600, distinct=distinct))
    assert large <= 10 * small + 50, (small, large)
    assert large <= 4 * 1600 + 50


def test_repeated_identical_segments_still_get_distinct_stable_keys() -> None:
    first = to_fhir_bundle(parse(_allergies(5, distinct=False)))
    again = to_fhir_bundle(parse(_allergies(5, distinct=False)))
    keys = [a["identifier"][0]["value"] for a in first.resources("AllergyIntolerance")]
    assert len(set(keys)) == 5
    assert keys == [a["identifier"][0]["value"] for a in again.resources("AllergyIntolerance")]


@pytest.mark.parametrize(("duration", "start"), [
    ("99999999999999999", "202404150930"),   # minutes beyond any calendar: was an OverflowError
    ("120", "99991231233000"),               # start + duration past year 9999: was an OverflowError
    ("1e308", "202404150930"),               # not a number at all
])
def test_siu_absurd_duration_is_reported_not_raised(duration: str, start: str) -> None:
    text = load("map_siu_s12_tz").replace("|45|min^minutes^ISO+|^^45^202404150930|",
                                          f"|{duration}|min^minutes^ISO+|^^{duration}^{start}-0700|")
    text = text.replace("|202404150930|||45|min", f"|{start}-0700|||{duration}|min")
    result = to_fhir_bundle(parse(text))
    appointment = result.resources("Appointment")[0]
    assert "end" not in appointment or appointment["end"] > appointment["start"]
    assert appointment.get("minutesDuration", 0) < 10 * 366 * 24 * 60
    if duration != "1e308":
        assert any(i.severity == "error" and i.location.startswith("SCH") for i in result.issues)


def test_real_feed_oddities_still_make_a_valid_bundle() -> None:
    # Codes with doubled spaces, a local coding system with a space, ranks and birth orders beyond 2^31,
    # an unknown patient class with spaces: each used to fail R4B validation (a 422 for the whole message).
    text = load("map_adt_a01_full")
    text = text.replace("I21.9^Acute myocardial infarction, unspecified^I10",
                        "I21  9^Acute myocardial infarction^LOCAL CODES")
    text = text.replace("|1|1001^HOUSE^GREGORY", "|99999999999|1001^HOUSE^GREGORY")
    text = text.replace("PV1|1|I|", "PV1|1|X  Y|")
    result = to_fhir_bundle(parse(text))
    condition = result.resources("Condition")[0]
    assert condition["code"]["coding"][0] == {"system": "urn:lifeline:cs:LOCAL%20CODES", "code": "I21 9",
                                              "display": "Acute myocardial infarction"}
    encounter = result.resources("Encounter")[0]
    assert "rank" not in encounter["diagnosis"][0]
    assert encounter["class"]["code"] == "X Y"


def test_validation_cache_never_lets_an_invalid_resource_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from interop.errors import MappingError
    from interop.fhir import validation

    monkeypatch.setattr(validation, "_CACHE_SIZE", 2)
    monkeypatch.setattr(validation, "_valid", {})

    def bundle_with(org: dict[str, Any]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "transaction", "entry": [{
            "fullUrl": "urn:uuid:0b7e4a52-9f55-4d8b-8e0b-1a2b3c4d5e6f", "resource": org,
            "request": {"method": "POST", "url": "Organization"}}]}

    for name in ("A", "B", "C", "A"):
        validation.validate_bundle(bundle_with({"resourceType": "Organization", "name": name}))
    assert len(validation._valid) == 2  # bounded
    with pytest.raises(MappingError, match=r"Organization .*active"):
        validation.validate_bundle(bundle_with({"resourceType": "Organization", "name": "A", "active": "maybe"}))
    with pytest.raises(MappingError, match="Bundle"):
        validation.validate_bundle({**bundle_with({"resourceType": "Organization", "name": "A"}), "total": "many"})
