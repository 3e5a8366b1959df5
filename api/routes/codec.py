"""Remote payload codec for the Temporal Web UI and CLI (`--ui-codec-endpoint`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from api.deps import guarded
from api.models import Public
from api.problems import Problem
from infra.crypto import payloads_from_json, payloads_to_json

router = APIRouter(prefix="/api/codec", tags=["codec"])


class Payload(BaseModel):
    """A Temporal payload in the remote-codec JSON shape."""

    metadata: dict[str, str] = Field(default_factory=dict, description="values base64")
    data: str = Field(default="", description="base64")


class PayloadsBody(BaseModel):
    # Loose on purpose: a malformed payload is the codec's 400 naming `payloads`, as the Temporal Web UI expects.
    payloads: list[dict[str, Any]] = Field(description="payloads in the shape of Payload (metadata, data: base64)")


class Payloads(Public):
    payloads: list[Payload]


async def _code(body: PayloadsBody, request: Request, *, encode: bool) -> Payloads:
    codec = request.app.state.codec
    try:
        given = payloads_from_json(body.payloads)
        payloads = await (codec.encode(given) if encode else codec.decode(given))
    except (ValueError, TypeError) as exc:
        raise Problem(400, f"cannot {'encode' if encode else 'decode'} payloads: {exc}", field="payloads") from None
    except Exception:  # noqa: BLE001 - a bad tag / wrong key must not be a 500
        if encode:
            raise
        raise Problem(400, "cannot decrypt payloads (wrong key or tampered data)", field="payloads") from None
    return Payloads(payloads=[Payload(**p) for p in payloads_to_json(payloads)])  # type: ignore[arg-type]


@router.post("/decode", **guarded("operator", 400))
async def decode(body: PayloadsBody, request: Request) -> Payloads:
    """Decrypt payloads for an authorised operator."""
    return await _code(body, request, encode=False)


@router.post("/encode", **guarded("operator", 400))
async def encode(body: PayloadsBody, request: Request) -> Payloads:
    """Encrypt payloads (used when the Web UI sends a signal or starts a workflow)."""
    return await _code(body, request, encode=True)
