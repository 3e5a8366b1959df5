"""Code-system URIs and the v2 table → FHIR value-set maps the mapper uses."""

from __future__ import annotations

import re
from urllib.parse import quote

V2_TABLE = "http://terminology.hl7.org/CodeSystem/v2-{table}"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_MARITAL = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
V3_NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
V3_ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
UCUM = "http://unitsofmeasure.org"
SSN = "http://hl7.org/fhir/sid/us-ssn"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CONDITION_VER_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
SUBSCRIBER_RELATIONSHIP = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
COVERAGE_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class"
MOTHERS_MAIDEN_NAME = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"


def v2_table(table: str) -> str:
    """The terminology.hl7.org URI of a v2 table (``0203`` → ``.../v2-0203``)."""
    return V2_TABLE.format(table=table)


# CWE.3 / CE.3 "name of coding system" → FHIR system URI (HL7 table 0396 plus common aliases).
CODING_SYSTEMS: dict[str, str] = {
    "LN": "http://loinc.org",
    "LOINC": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "SNM": "http://snomed.info/sct",
    "SNOMED": "http://snomed.info/sct",
    "SNOMEDCT": "http://snomed.info/sct",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9CDX": "http://hl7.org/fhir/sid/icd-9-cm",
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "MVX": "http://hl7.org/fhir/sid/mvx",
    "NDC": "http://hl7.org/fhir/sid/ndc",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "RXN": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "UCUM": UCUM,
    "ISO+": UCUM,
    "C4": "http://www.ama-assn.org/go/cpt",
    "CPT": "http://www.ama-assn.org/go/cpt",
    "CPT4": "http://www.ama-assn.org/go/cpt",
    "ISO639": "urn:ietf:bcp:47",
}

_HL7_TABLE_SYSTEM = re.compile(r"^HL7(\d{4})$")
OID = re.compile(r"^[0-2](\.(0|[1-9]\d*))+$")


def coding_system(name: str, local_prefix: str) -> str:
    """FHIR system URI for a v2 coding-system name; unknown names land in the local namespace."""
    if not name:
        return ""
    upper = name.upper()
    if upper in CODING_SYSTEMS:
        return CODING_SYSTEMS[upper]
    if m := _HL7_TABLE_SYSTEM.match(upper):
        return v2_table(m.group(1))
    if OID.match(name):
        return f"urn:oid:{name}"
    if name.startswith(("http://", "https://", "urn:")) and not any(c.isspace() for c in name):
        return name
    return local_prefix + quote(name.strip(), safe="")


# Table 0001 → administrative-gender.
GENDER = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}
GENDER_V2 = {"male": "M", "female": "F", "other": "O", "unknown": "U"}

# Table 0200 → name-use; the reverse map picks the v2 code a round trip must land on.
NAME_USE = {"L": "official", "D": "usual", "M": "maiden", "N": "nickname", "A": "usual", "S": "anonymous",
            "C": "old", "T": "temp", "B": "official"}
NAME_USE_V2 = {"official": "L", "usual": "D", "maiden": "M", "nickname": "N", "anonymous": "S", "old": "C",
               "temp": "T"}

# Table 0190 → address use / type.
ADDRESS_USE = {"H": "home", "B": "work", "O": "work", "C": "temp", "BA": "old", "BDL": "old"}
ADDRESS_TYPE = {"M": "postal", "P": "physical", "SH": "postal"}
ADDRESS_USE_V2 = {"home": "H", "work": "B", "temp": "C", "old": "BA"}

# Tables 0201 (use) and 0202 (equipment) → contact-point use / system.
TELECOM_USE = {"PRN": "home", "ORN": "home", "VHN": "home", "WPN": "work", "EMR": "temp", "ASN": "temp",
               "PRS": "mobile", "BPN": "work"}
TELECOM_SYSTEM = {"PH": "phone", "CP": "phone", "FX": "fax", "BP": "pager", "INTERNET": "email",
                  "X.400": "email", "MD": "other", "TDD": "other", "TTY": "other"}

# Table 0002 → v3-MaritalStatus.
MARITAL = {"A": "L", "E": "L", "D": "D", "M": "M", "S": "S", "W": "W", "C": "C", "P": "T", "R": "T",
           "N": "A", "I": "I", "B": "U", "G": "T"}

# Table 0004 → v3-ActCode encounter class.
PATIENT_CLASS = {"E": ("EMER", "emergency"), "I": ("IMP", "inpatient encounter"),
                 "O": ("AMB", "ambulatory"), "R": ("AMB", "ambulatory"), "C": ("AMB", "ambulatory"),
                 "P": ("PRENC", "pre-admission"), "B": ("AMB", "ambulatory")}

# ADT trigger → Encounter.status; None means "decide from PV1 (discharged or not)".
ENCOUNTER_STATUS: dict[str, str | None] = {
    "A01": "in-progress", "A02": "in-progress", "A03": "finished", "A04": "in-progress",
    "A05": "planned", "A06": "in-progress", "A07": "in-progress", "A08": None, "A11": "entered-in-error",
    "A12": "in-progress", "A13": "in-progress", "A14": "planned", "A21": "onleave", "A22": "in-progress",
    "A27": "cancelled", "A28": None, "A31": None, "A38": "cancelled",
}

# Table 0078 codes that exist unchanged in v3-ObservationInterpretation.
INTERPRETATION_V3 = frozenset({
    "L", "H", "LL", "HH", "N", "A", "AA", "<", ">", "S", "R", "I", "MS", "VS", "U", "D", "B", "W", "IND",
    "NEG", "POS", "NR", "HU", "LU", "DET", "ND", "E", "EX", "EXP", "HX", "LX", "CAR", "RR", "SDD", "SYN-R",
    "SYN-S", "NCL", "QCF", "TOX", "UNE", "WR", "IE", "H>", "L<",
})

# Table 0085 → Observation.status.
OBSERVATION_STATUS = {"F": "final", "C": "corrected", "P": "preliminary", "R": "preliminary",
                      "S": "preliminary", "I": "registered", "O": "registered", "X": "cancelled",
                      "D": "entered-in-error", "W": "entered-in-error", "U": "final", "A": "amended"}

# Table 0123 → DiagnosticReport.status.
REPORT_STATUS = {"F": "final", "C": "corrected", "P": "preliminary", "R": "preliminary", "S": "partial",
                 "A": "partial", "I": "registered", "O": "registered", "X": "cancelled", "Y": "registered",
                 "Z": "registered", "M": "corrected"}

# Table 0119 (ORC-1 order control) / 0038 (ORC-5 order status) → request status.
ORDER_CONTROL_STATUS = {"NW": "active", "XO": "active", "RP": "active", "SN": "active", "OK": "active",
                        "CA": "revoked", "DC": "revoked", "OC": "revoked", "CR": "revoked", "OD": "revoked",
                        "HD": "on-hold", "OH": "on-hold", "RL": "active", "SC": "active", "RE": "completed",
                        "CH": "active", "PA": "active", "RO": "active", "UA": "active", "NA": "active",
                        "DE": "entered-in-error", "OF": "active", "OR": "active", "CN": "active"}
ORDER_STATUS = {"A": "active", "IP": "active", "SC": "active", "CM": "completed", "CA": "revoked",
                "DC": "revoked", "HD": "on-hold", "ER": "entered-in-error", "RP": "revoked"}
# MedicationRequest uses its own status vocabulary.
MEDREQ_STATUS = {"active": "active", "revoked": "cancelled", "on-hold": "on-hold", "completed": "completed",
                 "entered-in-error": "entered-in-error"}
PRIORITY = {"S": "stat", "A": "asap", "R": "routine", "P": "urgent", "T": "urgent", "C": "urgent"}

# Table 0127 → AllergyIntolerance.category / 0128 → criticality + reaction severity.
ALLERGY_CATEGORY = {"DA": "medication", "FA": "food", "EA": "environment", "AA": "environment",
                    "PA": "environment", "LA": "environment", "MA": None, "MC": None}
ALLERGY_CRITICALITY = {"SV": "high", "MO": "low", "MI": "low", "U": "unable-to-assess"}
ALLERGY_SEVERITY = {"SV": "severe", "MO": "moderate", "MI": "mild"}

# Table 0052 → Condition.verificationStatus.
DIAGNOSIS_VERIFICATION = {"A": "provisional", "W": "provisional", "F": "confirmed"}

# Table 0063 → v3-RoleCode (personal relationships) for NK1-3.
RELATIONSHIP = {"SPO": "SPS", "MTH": "MTH", "FTH": "FTH", "CHD": "CHILD", "SIB": "SIB", "BRO": "BRO",
                "SIS": "SIS", "DOM": "DOMPART", "FND": "FRND", "GRD": "GUARD", "PAR": "PRN", "GRP": "GRPRN",
                "SON": "SONC", "DAU": "DAUC", "NCH": "NCHILD", "STP": "STPPRN", "WRD": "WARD"}
# Table 0063 (IN1-17) → subscriber-relationship.
SUBSCRIBER = {"SEL": "self", "SPO": "spouse", "CHD": "child", "PAR": "parent", "MTH": "parent",
              "FTH": "parent", "DOM": "common", "EME": "injured", "OTH": "other"}

# Table 0322 (RXA-20 completion status) → Immunization.status.
IMMUNIZATION_STATUS = {"CP": "completed", "PA": "completed", "RE": "not-done", "NA": "not-done"}

# Table 0278 (SCH-25 filler status) → Appointment.status.
APPOINTMENT_STATUS = {"PENDING": "pending", "WAITLIST": "waitlist", "BOOKED": "booked", "STARTED": "arrived",
                      "COMPLETE": "fulfilled", "CANCELLED": "cancelled", "DC": "cancelled",
                      "DELETED": "entered-in-error", "BLOCKED": "booked", "OVERBOOK": "booked",
                      "NOSHOW": "noshow"}
APPOINTMENT_TRIGGER_STATUS = {"S12": "booked", "S13": "booked", "S14": "booked", "S15": "cancelled",
                              "S17": "entered-in-error", "S26": "noshow"}

# Table 0271 (TXA-17) → DocumentReference.docStatus; 0273 (TXA-19) → status.
DOC_STATUS = {"DO": "final", "AU": "final", "LA": "final", "IP": "preliminary", "IN": "preliminary",
              "DI": "preliminary", "PA": "preliminary"}
DOC_AVAILABILITY = {"AV": "current", "OB": "superseded", "CA": "entered-in-error", "UN": "current"}

# OBX-6 unit codes that are valid UCUM as written (senders rarely say "UCUM" in OBX-6.3).
UCUM_UNITS = frozenset({
    "%", "/uL", "/mL", "/L", "10*3/uL", "10*6/uL", "10*9/L", "10*12/L", "U/L", "[IU]/L", "[IU]/mL", "mU/L",
    "g", "mg", "ug", "ng", "pg", "kg", "g/dL", "g/L", "mg/dL", "mg/L", "ug/L", "ug/dL", "ng/mL", "ng/dL",
    "pg/mL", "mmol/L", "umol/L", "nmol/L", "pmol/L", "mol/L", "meq/L", "mEq/L", "mosm/kg", "fL",
    "mm[Hg]", "cm", "m", "mm", "[in_i]", "[lb_av]", "Cel", "[degF]", "s", "min", "h", "d", "wk", "mo", "a",
    "/min", "mL", "L", "dL", "mL/min", "mL/min/{1.73_m2}", "kg/m2", "m2", "1", "{ratio}", "{score}",
    "mm/h", "[pH]", "mg/(24.h)", "g/(24.h)", "U/mL", "mIU/mL", "uIU/mL", "ng/L", "mmol/mol",
})

# US Core and core extensions the Patient mapping uses.
US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
CDC_RACE_ETHNICITY = "urn:oid:2.16.840.1.113883.6.238"
RELIGION = "http://hl7.org/fhir/StructureDefinition/patient-religion"
BIRTH_PLACE = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
CITIZENSHIP = "http://hl7.org/fhir/StructureDefinition/patient-citizenship"
NATIONALITY = "http://hl7.org/fhir/StructureDefinition/patient-nationality"
BIRTH_TIME = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
V3_RELIGION = "http://terminology.hl7.org/CodeSystem/v3-ReligiousAffiliation"
LOCATION_PHYSICAL_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"
PROVENANCE_AGENT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
V3_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
V3_ACT_PRIORITY = "http://terminology.hl7.org/CodeSystem/v3-ActPriority"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_CATEGORY = "http://loinc.org"
MEDICARE = "http://hl7.org/fhir/sid/us-medicare"
MEDICAID = "http://hl7.org/fhir/sid/us-medicaid"

# Table 0005 race codes that are CDC Race & Ethnicity OMB categories (code system 2.16.840.1.113883.6.238).
OMB_RACE = {"1002-5", "2028-9", "2054-5", "2076-8", "2106-3"}
OMB_ETHNICITY = {"2135-2", "2186-5"}
# Common local letters for table 0189 (ethnic group) → CDC codes.
ETHNICITY_LETTERS = {"H": ("2135-2", "Hispanic or Latino"), "N": ("2186-5", "Not Hispanic or Latino")}

# Table 0217 (PV2-25 visit priority) → v3-ActPriority.
VISIT_PRIORITY = {"1": "EM", "2": "UR", "3": "EL"}

# ADT trigger → Encounter.status for triggers ENCOUNTER_STATUS does not name.
ENCOUNTER_STATUS_MORE: dict[str, str | None] = {
    "A09": "in-progress", "A10": "in-progress", "A15": "planned", "A16": "in-progress",
    "A25": "in-progress", "A26": "in-progress", "A29": None, "A32": "in-progress", "A33": "in-progress",
    "A45": None, "A60": None,
}

# Table 0206 (segment action code) / problem life cycle → Condition clinical status.
PROBLEM_STATUS = {"A": "active", "I": "inactive", "R": "resolved", "C": "resolved"}
