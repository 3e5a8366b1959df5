"""Problem-JSON errors (RFC 9457 shape) that name the offending field, and how the OpenAPI document declares them."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_REF = "#/components/schemas/ProblemDetails"  # added to the document by `document` below


class FieldError(BaseModel):
    field: str = Field(description="where: a dotted request path (body.ids.0, query.limit) or an HL7 location")
    reason: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details: every error this API answers (4xx, and 5xx it knows about) has this body."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"type": "about:blank", "title": "Not found", "status": 404, "detail": "no message 'm-1'",
         "field": "message_id"}]})

    type: str = "about:blank"
    title: str = Field(description="the status's short text")
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="what is wrong, naming the field")
    field: str | None = Field(default=None, description="the request member at fault (parameter, body path, header,"
                                                        " HL7 segment-field); absent when the request as a whole is")
    errors: list[FieldError] | None = Field(default=None, description="422: every invalid field, not only the first")
    required_role: str | None = Field(default=None, description="403: the role the route needs")
    retry_after: int | None = Field(default=None, description="429: seconds until the rate limit admits a request")


_EXAMPLES: dict[int, dict[str, Any]] = {
    400: {"detail": "cannot decode payloads: bad base64", "field": "payloads"},
    401: {"detail": "authentication required: send 'Authorization: Bearer <token>' or 'X-API-Key'"},
    403: {"detail": "role 'operator' required", "required_role": "operator"},
    404: {"detail": "no channel named 'adt-in'", "field": "channel"},
    409: {"detail": "the configuration changed since version 3; read it again", "field": "expected_version"},
    413: {"detail": "request body larger than 16777216 bytes", "field": "body"},
    415: {"detail": "content type must be one of text/plain, application/hl7-v2", "field": "content-type"},
    422: {"detail": "query.limit: Input should be less than or equal to 500", "field": "query.limit",
          "errors": [{"field": "query.limit", "reason": "Input should be less than or equal to 500"}]},
    502: {"detail": "engine 'mirth' did not answer: timeout", "field": "engine"},
    503: {"detail": "cannot check token revocation: the store is unavailable"},
}
_HTTP_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 409: "Conflict",
                413: "Payload Too Large", 429: "Too Many Requests"}
_TITLES = {**_HTTP_TITLES, 422: "Invalid request"}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status answers a problem+json body (see ProblemDetails)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        example = {"type": "about:blank", "title": _TITLES.get(status, "Error"), "status": status,
                   **_EXAMPLES.get(status, {"detail": HTTPStatus(status).phrase})}
        out[status] = {"description": f"{HTTPStatus(status).phrase} (problem details)",
                       "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}, "example": example}}}
    return out


def document(schema: dict[str, Any]) -> dict[str, Any]:
    """Problem bodies under their real media type, and FastAPI's default 422 (which our handler never answers) as
    problem+json; a request body can always be refused with 413 by api.limits.BodyLimit, and a JSON body FastAPI
    cannot read at all (not UTF-8) with 400."""
    ref = PROBLEM_REF
    for item in schema.get("paths", {}).values():
        for op in item.values():
            responses = op.get("responses", {})
            if "requestBody" in op and "413" not in responses:
                responses["413"] = problem_responses(413)[413]
            if "application/json" in op.get("requestBody", {}).get("content", {}) and "400" not in responses:
                responses["400"] = problem_responses(400)[400]
                responses["400"]["content"][PROBLEM_MEDIA_TYPE]["example"]["detail"] = \
                    "There was an error parsing the body"
            for code, response in responses.items():
                content = response.get("content", {})
                plain = content.get("application/json", {})
                target = plain.get("schema", {}).get("$ref", "")
                if code[0] in "45" and plain and (PROBLEM_MEDIA_TYPE in content
                                                  or target.endswith(("/ProblemDetails", "/HTTPValidationError"))):
                    moved = content.pop("application/json")
                    if target.endswith("/HTTPValidationError"):
                        moved["schema"] = {"$ref": ref}
                        response["description"] = "Invalid request (problem details naming every field)"
                    content[PROBLEM_MEDIA_TYPE] = {**moved, **content.get(PROBLEM_MEDIA_TYPE, {})}
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    if "ProblemDetails" not in schemas:
        defs = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(defs.pop("$defs", {}))
        schemas["ProblemDetails"] = defs
    return schema


def merge_responses(*parts: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """`responses=` dicts merged per status: one status may answer several media types (problem JSON or HTML)."""
    out: dict[int | str, dict[str, Any]] = {}
    for part in parts:
        for status, response in part.items():
            before = out.get(status, {})
            out[status] = {**before, **response,
                           "content": {**before.get("content", {}), **response.get("content", {})}}
    return out


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
    """Answer every error as problem+json, and say so in the OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

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
            status_code=422, media_type=PROBLEM_MEDIA_TYPE,
        )

    # PostgreSQL text cannot hold NUL (and a UTF-8 database nothing unencodable): such a parameter or body member
    # reached a query as a 500 (found by Schemathesis); it is bad input.
    @app.exception_handler(asyncpg.CharacterNotInRepertoireError)
    @app.exception_handler(asyncpg.UntranslatableCharacterError)
    async def _unstorable(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(_body(422, "Invalid request", "text with a NUL byte (or a character the store cannot"
                                                          " encode) is not accepted"),
                            status_code=422, media_type=PROBLEM_MEDIA_TYPE)

    # Starlette's own (404 for no route, 405, FastAPI's 400 for an unreadable body) as well as ours.
    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        extra: dict[str, Any] = {}
        if isinstance(exc, Problem):
            extra = dict(exc.extra)
            if exc.field:
                extra["field"] = exc.field
        title = _HTTP_TITLES.get(exc.status_code, "Error")
        return JSONResponse(_body(exc.status_code, title, str(exc.detail), **extra),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None),
                            media_type=PROBLEM_MEDIA_TYPE)
