"""`lifeline up` heals its own servers: kill -9 of the embedded PostgreSQL and of the Temporal dev server; each
comes back by itself, what was ACKed before the kill is delivered, and messages sent after recovery are delivered."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
from hl7.mllp import open_hl7_connection, start_hl7_server

from tests.stack.test_up import Stack


class ThreadPeer:
    """A python-hl7 MLLP server downstream, on its own loop in a thread (the test itself blocks on subprocesses)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while not writer.is_closing():
                    msg = await reader.readmessage()  # type: ignore[attr-defined]
                    self.received.append(str(msg.segment("MSH")[10]))
                    writer.writemessage(msg.create_ack("AA"))  # type: ignore[attr-defined]
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        async def main() -> None:
            server = await start_hl7_server(handle, "127.0.0.1", self.port)
            self.ready.set()
            async with server:
                await asyncio.Event().wait()

        self.loop.run_until_complete(main())

    def start(self) -> ThreadPeer:
        self.thread.start()
        assert self.ready.wait(10)
        return self


def adt(control_id: str) -> str:
    return (f"MSH|^~\\&|EPIC|HOSP|LAB|LABF|20260101||ADT^A01|{control_id}|P|2.5.1\r"
            "PID|1||123^^^H^MR||DOE^J\r")


def send(port: int, control_ids: list[str]) -> dict[str, str]:
    """Send each message once over python-hl7's MLLP client; control id -> ACK code (or 'no answer')."""
    async def go() -> dict[str, str]:
        out: dict[str, str] = {}
        for cid in control_ids:
            try:
                reader, writer = await asyncio.wait_for(open_hl7_connection("127.0.0.1", port), 10)
                writer.writemessage(hl7.parse(adt(cid)))
                await writer.drain()
                ack = await asyncio.wait_for(reader.readmessage(), 30)
                out[cid] = str(ack.segment("MSA")[1])
                writer.close()
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                out[cid] = f"no answer ({type(exc).__name__})"
        return out

    return asyncio.run(go())


def status(root: Path) -> dict[str, dict[str, object]]:
    data = json.loads((root / ".lifeline" / "status.json").read_text())
    return {p["name"]: p for p in data["processes"]}


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    yield s
    if s.proc is not None and s.proc.poll() is None:
        for p in s.descendants():
            p.kill()
        s.proc.kill()


@pytest.mark.parametrize("victim", ["postgres", "temporal"])
def test_killed_server_comes_back_and_nothing_acked_is_lost(stack: Stack, victim: str) -> None:
    stack.start()
    peer = ThreadPeer(stack.peer_port).start()
    before = [f"PRE{victim[:2].upper()}{i:03d}" for i in range(20)]
    answers = send(stack.mllp_port, before)
    assert set(answers.values()) == {"AA"}, answers
    old_pid = status(stack.root)[victim]["pid"]
    assert isinstance(old_pid, int)

    os.kill(old_pid, signal.SIGKILL)
    # While it is down (or coming back), every message is answered: AA when stored, else AE "not stored; resend".
    during = [f"DUR{victim[:2].upper()}{i:03d}" for i in range(10)]
    during_answers = send(stack.mllp_port, during)
    assert set(during_answers.values()) <= {"AA", "AE"}, during_answers

    def back() -> bool:
        p = status(stack.root)[victim]
        return p["state"] == "running" and p["health"] == "ok" and p["pid"] not in (None, old_pid)

    wait_until(back, 90, f"{victim} to be restarted by lifeline up")
    assert status(stack.root)[victim]["restarts"] == 1
    shown = subprocess.run([sys.executable, "-m", "workers.cli", "status"], cwd=stack.root, env=stack.env(),
                           capture_output=True, text=True, timeout=30)
    assert victim in shown.stdout and str(status(stack.root)[victim]["pid"]) in shown.stdout, shown.stdout

    after = [f"POST{victim[:2].upper()}{i:03d}" for i in range(20)]
    deadline = time.monotonic() + 60
    after_answers = send(stack.mllp_port, after)
    while set(after_answers.values()) != {"AA"} and time.monotonic() < deadline:
        # the processes reconnect by themselves; a message refused with AE is resent, as a sender would
        time.sleep(1)
        after_answers.update(send(stack.mllp_port, [c for c, a in after_answers.items() if a != "AA"]))
    assert set(after_answers.values()) == {"AA"}, after_answers

    acked = set(before) | {c for c, a in during_answers.items() if a == "AA"} | set(after)
    wait_until(lambda: acked <= set(peer.received), 120,
               f"every ACKed message delivered (missing {sorted(acked - set(peer.received))[:5]})")
    others = {n: p for n, p in status(stack.root).items() if n != victim}
    assert all(p["state"] == "running" for p in others.values()), others
    assert stack.stop(signal.SIGINT) == 0
