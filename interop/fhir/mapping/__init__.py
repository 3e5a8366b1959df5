"""HL7 v2 → FHIR R4 transaction Bundle, following the HL7 V2-to-FHIR IG segment maps.

``core`` holds field access, dates, keys, entries and the Bundle; ``entities`` the resources every family
shares (Patient, Encounter, Practitioner, Organization, Location, ...); one module per message family maps
its own segments, and ``walk`` dispatches each segment to its handler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from interop.errors import InteropError, MappingError
from interop.fhir.datatypes import MappingConfig
from interop.fhir.mapping import (
    adt,
    documents,
    financial,
    immunization,
    orders,
    pharmacy,
    referrals,
    results,
    scheduling,
)
from interop.fhir.mapping.core import KEY_SYSTEM, NAMESPACE, Mapper, MappingIssue, MappingResult
from interop.fhir.mapping.entities import provenance
from interop.message import Message

# Message code → the family that maps it; every trigger of a known code maps (an unknown trigger of a
# known family still maps its segments).
FAMILIES: dict[str, Callable[[Mapper], None]] = {
    "ADT": adt.run, "BAR": financial.run, "DFT": financial.run,
    "ORM": orders.run, "OML": orders.run, "OMG": orders.run, "OMB": orders.run, "OMI": orders.run,
    "ORU": results.run, "OUL": results.run,
    "RDE": pharmacy.run, "RDS": pharmacy.run, "RGV": pharmacy.run, "RAS": pharmacy.run, "OMP": pharmacy.run,
    "VXU": immunization.run,
    "SIU": scheduling.run,
    "MDM": documents.run,
    "REF": referrals.run, "RRI": referrals.run, "PPR": referrals.run_problems,
}

# The message types documented and tested (README, docs/decisions/fhir.md); other triggers of these
# codes map too.
SUPPORTED_TYPES: dict[str, frozenset[str]] = {
    "ADT": frozenset({"A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A09", "A10", "A11", "A12",
                      "A13", "A14", "A15", "A16", "A21", "A22", "A25", "A26", "A27", "A28", "A29", "A31",
                      "A38", "A40", "A41", "A45", "A47", "A60"}),
    "BAR": frozenset({"P01", "P02", "P12"}),
    "DFT": frozenset({"P03", "P11"}),
    "MDM": frozenset({"T01", "T02", "T03", "T04", "T05", "T06", "T07", "T08", "T09", "T10", "T11"}),
    "OMG": frozenset({"O19"}),
    "OML": frozenset({"O21"}),
    "ORM": frozenset({"O01"}),
    "ORU": frozenset({"R01"}),
    "OUL": frozenset({"R22", "R23", "R24"}),
    "RDE": frozenset({"O11", "O25"}),
    "RDS": frozenset({"O13"}),
    "REF": frozenset({"I12", "I14"}),
    "SIU": frozenset({"S12", "S13", "S14", "S15", "S16", "S17", "S26"}),
    "VXU": frozenset({"V04"}),
    "PPR": frozenset({"PC1", "PC2", "PC3"}),
}


def supports(message: Message) -> bool:
    """True when the message's code has a FHIR mapping (any trigger of a mapped family)."""
    return message.message_code in FAMILIES


def to_fhir_bundle(message: Message, *, base_ids: Mapping[str, str] | None = None,
                   config: MappingConfig | None = None) -> MappingResult:
    """Map a v2 message to an idempotent FHIR R4 transaction Bundle; raise MappingError when it cannot."""
    cfg = config or MappingConfig()
    if base_ids:
        cfg = replace(cfg, systems={**cfg.systems, **base_ids})
    family = FAMILIES.get(message.message_code)
    if family is None:
        raise MappingError(f"no FHIR mapping for message type {message.message_type or '(none)'}")
    mapper = Mapper(message, cfg)
    try:
        family(mapper)
        provenance(mapper)
        return mapper.result()
    except InteropError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError) as exc:
        # A shape of input the mapping did not foresee must not become a 500: it is a typed,
        # reported MappingError (and a bug to fix, which the message says).
        raise MappingError(f"{message.message_type}: mapping failed on unexpected content "
                           f"({type(exc).__name__}: {exc})") from exc


__all__ = ["KEY_SYSTEM", "NAMESPACE", "SUPPORTED_TYPES", "MappingIssue", "MappingResult", "supports",
           "to_fhir_bundle"]
