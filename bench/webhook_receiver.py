"""A webhook receiver for the benchmark, run as its own process (uvicorn): answers 204 to every POST, counting
posts and distinct (subscription, event id, sequence) sends; GET /count returns "posts unique". Kept out of the
bench process so its CPU is not the engine's."""

from __future__ import annotations

import sys
from typing import Any

POSTS = [0]
SEEN: set[tuple[bytes, bytes, bytes]] = set()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if scope["method"] == "POST":
        POSTS[0] += 1
        headers = dict(scope["headers"])
        SEEN.add((headers.get(b"x-lifeline-subscription", b""), headers.get(b"x-lifeline-event-id", b""),
                  headers.get(b"x-lifeline-sequence", b"")))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    body = f"{POSTS[0]} {len(SEEN)}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
