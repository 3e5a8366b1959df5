"""Problem-JSON errors (RFC 9457 shape) that name the offending field."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class Problem(HTTPException):
    """An HTTP error with a field name and extra members for the problem body."""

    def __init__(self, status: int, detail: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.field = field
        self.extra = extra


def _body(status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "reason": e.get("msg", "")}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "", "reason": "invalid request"}
        return JSONResponse(
            _body(422, "Invalid request", f"{first['field']}: {first['reason']}", field=first["field"],
                  errors=errors),
            status_code=422, media_type="application/problem+json",
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        extra: dict[str, Any] = {}
        if isinstance(exc, Problem):
            extra = dict(exc.extra)
            if exc.field:
                extra["field"] = exc.field
        title = {401: "Unauthorized", 403: "Forbidden", 404: "Not found", 409: "Conflict", 413: "Payload Too Large",
                 429: "Too Many Requests"}.get(
            exc.status_code, "Error")
        return JSONResponse(_body(exc.status_code, title, str(exc.detail), **extra),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None),
                            media_type="application/problem+json")
