"""The interop exception hierarchy; every error raised by interop on bad input is one of these."""

from __future__ import annotations

# HL7 table 0357 (message error condition codes) used in ERR-3 and in findings.
SEGMENT_SEQUENCE_ERROR = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNSUPPORTED_VERSION_ID = "203"
APPLICATION_INTERNAL_ERROR = "207"

ERROR_CODE_TEXT = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    UNSUPPORTED_VERSION_ID: "Unsupported version id",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}


class InteropError(Exception):
    """Base class of every error interop raises for bad input."""


class HL7ParseError(InteropError):
    """The text is not an HL7 v2 message that can be parsed at all."""

    def __init__(
        self,
        reason: str,
        *,
        code: str = SEGMENT_SEQUENCE_ERROR,
        segment: str = "MSH",
        occurrence: int = 1,
        field: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.segment = segment
        self.occurrence = occurrence
        self.field = field


class MessageTooLarge(HL7ParseError):
    """A message has more segments, or a segment more characters, than the configured limits allow."""


class PathError(InteropError):
    """A field path such as ``PID-3[1].1`` is not well formed."""


class FramingError(InteropError):
    """MLLP framing violated (for example a frame larger than the configured maximum)."""


class MappingError(InteropError):
    """A message cannot be mapped to the requested target (FHIR, another version)."""


class FrameTooLarge(FramingError):
    """An MLLP frame exceeded the decoder's maximum size; the decoder resynchronises at the next start block."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"MLLP frame of at least {size} bytes exceeds the maximum of {limit} bytes")
        self.size = size
        self.limit = limit


class GenerationError(InteropError):
    """A message description cannot be turned into HL7 (the field path names the culprit)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
