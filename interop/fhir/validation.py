"""Validate mapped resources with the fhir.resources R4B models (R4-compatible for what we emit)."""

from __future__ import annotations

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


def validate_bundle(bundle: dict[str, Any]) -> None:
    """Validate the Bundle and, through it, every entry's resource (one pass: the model recurses)."""
    try:
        _model("Bundle").model_validate(bundle)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [p for p in err.get("loc", ()) if p != "__root__"]
        if len(loc) >= 3 and loc[0] == "entry" and isinstance(loc[1], int) and loc[2] == "resource":
            entry = bundle["entry"][loc[1]]
            rt = entry.get("resource", {}).get("resourceType", "resource")
            field = ".".join(str(p) for p in loc[3:]) or "(resource)"
            raise MappingError(
                f"{rt} failed FHIR {FHIR_RELEASE} validation: {field}: {err.get('msg', 'invalid')}"
                f" (entry {loc[1]}, {entry.get('fullUrl', '')})"
            ) from exc
        raise MappingError(f"Bundle failed FHIR {FHIR_RELEASE} validation: {_describe(exc)}") from exc
