"""Validate mapped resources with the fhir.resources R4B models (R4-compatible for what we emit)."""

from __future__ import annotations

import json
import threading
from functools import cache
from typing import Any

from pydantic import ValidationError

from interop.errors import MappingError

FHIR_RELEASE = "R4B"


@cache
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError) as exc:
        raise MappingError(f"{resource_type}: not a FHIR {FHIR_RELEASE} resource type") from exc


def _describe(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__") or "(resource)"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def validate_resource(resource: dict[str, Any]) -> None:
    """Construct the fhir.resources model; a failure is a MappingError naming resource and field."""
    rt = resource.get("resourceType")
    if not isinstance(rt, str):
        raise MappingError("resource without resourceType")
    try:
        _model(rt).model_validate(resource)
    except ValidationError as exc:
        raise MappingError(f"{rt} failed FHIR {FHIR_RELEASE} validation: {_describe(exc)}") from exc


# Reference data repeats message after message (the same facility, wards, doctors, payers, drugs): an
# identical resource validated once need not be validated again. Patient-level resources always are.
CACHED_TYPES = frozenset({"Organization", "Location", "Practitioner", "PractitionerRole", "Medication"})
_CACHE_SIZE = 4096
_valid: dict[str, None] = {}
_valid_lock = threading.Lock()  # the API maps in worker threads: eviction must not race
# Stands in for each entry's resource when the Bundle envelope (fullUrl, request, type) is validated.
_PLACEHOLDER = {"resourceType": "Basic", "code": {"text": "validated on its own"}}


def _entry_error(bundle: dict[str, Any], index: int, exc: ValidationError) -> MappingError:
    entry = bundle["entry"][index]
    rt = entry.get("resource", {}).get("resourceType", "resource")
    err = exc.errors()[0]
    loc = [p for p in err.get("loc", ()) if p != "__root__"]
    field = ".".join(str(p) for p in loc) or "(resource)"
    return MappingError(f"{rt} failed FHIR {FHIR_RELEASE} validation: {field}: {err.get('msg', 'invalid')}"
                        f" (entry {index}, {entry.get('fullUrl', '')})")


def validate_bundle(bundle: dict[str, Any]) -> None:
    """Validate every entry's resource (identical reference-data resources once per process) and the
    Bundle envelope; a failure is a MappingError naming resource type, field and entry."""
    entries = bundle.get("entry", [])
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            continue  # the envelope check below reports it
        rt = resource["resourceType"]
        key = json.dumps(resource, sort_keys=True) if rt in CACHED_TYPES else ""
        if key and key in _valid:
            continue
        try:
            _model(rt).model_validate(resource)
        except ValidationError as exc:
            raise _entry_error(bundle, index, exc) from exc
        if key:
            with _valid_lock:
                if len(_valid) >= _CACHE_SIZE:
                    _valid.pop(next(iter(_valid)))
                _valid[key] = None
    envelope = {**bundle, "entry": [
        {**e, "resource": _PLACEHOLDER} if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        and isinstance(e["resource"].get("resourceType"), str) else e for e in entries]}
    try:
        _model("Bundle").model_validate(envelope)
    except ValidationError as exc:
        raise MappingError(f"Bundle failed FHIR {FHIR_RELEASE} validation: {_describe(exc)}") from exc
