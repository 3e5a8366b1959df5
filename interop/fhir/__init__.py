"""HL7 v2 ↔ FHIR R4 mapping (v2 → transaction Bundle, Patient → ADT^A28/A31)."""

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
from interop.fhir.reverse import patient_to_adt
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
    "patient_to_adt",
    "supports",
    "to_fhir_bundle",
    "validate_bundle",
    "validate_resource",
]
