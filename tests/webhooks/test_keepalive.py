"""The drainer's HTTP/1.1 sender against a scripted server: keep-alive reuse, chunked and sized answers, an idle
connection the receiver closed (sent again once on a new one), Retry-After, and a receiver that never answers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

from activities.subscriptions import KeepAlive, post_signed
from infra.ssrf import Guard

ANSWERS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n2\r\nno\r\n0\r\n\r\n",
    None,  # close the connection instead of answering the third request on it
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.0 410 Gone\r\nContent-Length: 0\r\n\r\n",
]


async def test_keep_alive_sender_reuses_reconnects_and_reads_every_answer_shape() -> None:
    requests: list[tuple[int, dict[str, str], bytes]] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        me = connections
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers["content-length"]))
                if b"/hang" in line:
                    await asyncio.sleep(3)  # never answers in time
                    return
                requests.append((me, headers, body))
                answer = ANSWERS[len(requests) - 1]
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/in?x=1"
    target = await Guard(["127.0.0.1/32"]).check(url)
    conn = KeepAlive()
    guard = Guard(["127.0.0.1/32"])
    try:
        outcomes = [await post_signed(conn, guard, url, "whsec_0123456789abcdef", {"n": i}, target=target)
                    for i in range(4)]
        never = await post_signed(KeepAlive(), guard, url, "s" * 16, {"n": 9}, timeout=0.5,
                                  target=await guard.check(f"http://127.0.0.1:{port}/hang"))
    finally:
        await conn.close()
        server.close()
    assert [(o.ok, o.status, o.error_type) for o in outcomes] == [
        (True, 200, ""), (False, 503, "WebhookFailed"), (True, 204, ""), (False, 410, "WebhookRejected")]
    assert outcomes[1].retryable and outcomes[1].retry_after_s == 7.0 and not outcomes[3].retryable
    # Requests 1-3 on the first connection; the third was not answered (closed), so it went again on a new one,
    # and the HTTP/1.0 answer to the fourth closed that one.
    assert [c for c, _, _ in requests] == [1, 1, 1, 2, 2]
    _, headers, body = requests[0]
    assert headers["host"] == f"127.0.0.1:{port}" and body == b'{"n":0}'
    expected = hmac.new(b"whsec_0123456789abcdef", headers["x-lifeline-timestamp"].encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    assert headers["x-lifeline-signature"] == f"sha256={expected}"
    assert (never.ok, never.error_type, never.retryable, never.error) == (False, "WebhookFailed", True,
                                                                          "no answer within 0.5s")
