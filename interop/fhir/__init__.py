"""HL7 v2 ↔ FHIR R4 mapping (v2 → transaction Bundle; Patient, Encounter, DiagnosticReport → v2)."""

from interop.fhir.datatypes import DEFAULT_CODE_PREFIX, DEFAULT_ID_PREFIX, MappingConfig
from interop.fhir.mapping import (
    KEY_SYSTEM,
    NAMESPACE,
    SUPPORTED_TYPES,
    MappingIssue,
    MappingResult,
    supports,
    to_fhir_bundle,
)
from interop.fhir.reverse import encounter_to_adt, patient_to_adt, report_to_oru, request_to_order
from interop.fhir.validation import FHIR_RELEASE, validate_bundle, validate_resource

__all__ = [
    "DEFAULT_CODE_PREFIX",
    "DEFAULT_ID_PREFIX",
    "FHIR_RELEASE",
    "KEY_SYSTEM",
    "NAMESPACE",
    "SUPPORTED_TYPES",
    "MappingConfig",
    "MappingIssue",
    "MappingResult",
    "encounter_to_adt",
    "patient_to_adt",
    "report_to_oru",
    "request_to_order",
    "supports",
    "to_fhir_bundle",
    "validate_bundle",
    "validate_resource",
]
