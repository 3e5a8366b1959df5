"""Remote payload codec for the Temporal Web UI and CLI (`--ui-codec-endpoint`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from api.deps import guarded
from api.problems import Problem
from infra.crypto import payloads_from_json, payloads_to_json

router = APIRouter(prefix="/api/codec", tags=["codec"])


class PayloadsBody(BaseModel):
    payloads: list[dict[str, Any]]


@router.post("/decode", **guarded("operator"))
async def decode(body: PayloadsBody, request: Request) -> dict[str, Any]:
    """Decrypt payloads for an authorised operator."""
    try:
        payloads = await request.app.state.codec.decode(payloads_from_json(body.payloads))
    except (ValueError, TypeError) as exc:
        raise Problem(400, f"cannot decode payloads: {exc}", field="payloads") from None
    except Exception:  # noqa: BLE001 - a bad tag / wrong key must not be a 500
        raise Problem(400, "cannot decrypt payloads (wrong key or tampered data)", field="payloads") from None
    return {"payloads": payloads_to_json(payloads)}


@router.post("/encode", **guarded("operator"))
async def encode(body: PayloadsBody, request: Request) -> dict[str, Any]:
    """Encrypt payloads (used when the Web UI sends a signal or starts a workflow)."""
    try:
        payloads = await request.app.state.codec.encode(payloads_from_json(body.payloads))
    except (ValueError, TypeError) as exc:
        raise Problem(400, f"cannot encode payloads: {exc}", field="payloads") from None
    return {"payloads": payloads_to_json(payloads)}
