"""Schemathesis hooks for the API run (SCHEMATHESIS_HOOKS=tests.api.schemathesis_hooks): HL7 v2 bodies go on the
wire as text, under the media types POST /api/channels/{channel}/messages declares."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.serializer("application/hl7-v2", "x-application/hl7-v2+er7")
def hl7_text(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")
