"""A streaming limit on request bodies: 413 problem JSON once a body grows past the limit, before it is all read."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import Problem


class BodyLimit:
    """Refuse a declared Content-Length over the limit at once; count a streamed (chunked) body as it arrives."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(limit, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Raised inside the route's body read: the problem handler answers 413.
                    raise Problem(413, f"request body larger than {limit} bytes", field="body")
            return message

        await self.app(scope, counted, send)


async def _too_large(limit: int, send: Send) -> None:
    import json

    body = json.dumps({"type": "about:blank", "title": "Payload Too Large", "status": 413,
                       "detail": f"request body larger than {limit} bytes", "field": "body"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/problem+json"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
