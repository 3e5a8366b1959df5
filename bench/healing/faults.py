"""The faults of the scorecard. Each scenario injects its fault at t0, says when the fault became fixable (for a
peer that must come back by itself, when it came back), and which case it expects (kind, subject, signature)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hl7
from hl7.mllp import start_hl7_server

from tests.delivery.harness import adt, send_mllp
from tests.emulators.cloverleaf.hci import FakeCloverleaf, install
from tests.emulators.mirth import MirthEmulator
from tests.emulators.rhapsody import RhapsodyEmulator
from tests.emulators.server import ServerThread
from tests.healing.e2e import EngineTraffic, Lifeline

ENGINE_ENV = {"username_env": "LIFELINE_SCORE_ENGINE_USER", "password_env": "LIFELINE_SCORE_ENGINE_PASSWORD"}


class Peer:
    """A python-hl7 MLLP server downstream: AA (or `answer`) after `delay` seconds; can go down and up."""

    def __init__(self, port: int, answer: str = "AA", delay: float = 0.0) -> None:
        self.port, self.answer, self.delay = port, answer, delay
        self.received: list[str] = []
        self.server: asyncio.AbstractServer | None = None
        self.conns: set[Any] = set()

    async def start(self) -> None:
        async def handle(reader: Any, writer: Any) -> None:
            self.conns.add(writer)
            try:
                while not writer.is_closing():
                    msg = await reader.readmessage()
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    control = str(msg.segment("MSH")[10])
                    if self.answer == "AA":
                        self.received.append(control)
                        writer.writemessage(msg.create_ack("AA"))
                    else:
                        writer.writemessage(hl7.parse(
                            str(msg.create_ack(self.answer)) + "\rERR|||207^Application internal error^HL70357|E"))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                self.conns.discard(writer)
                writer.close()

        self.server = await start_hl7_server(handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self.conns):
                w.close()
            self.server = None


@dataclass
class Run:
    """What a scenario reports back to the scorecard."""

    case_kind: str
    subject: str
    expect_signature: Callable[[str], bool]
    safe_fix: bool  # a safe action can repair it once it is fixable
    fixable_at: float | None = None  # time.time() when the fault became fixable (None: from the injection)
    acked: list[str] = field(default_factory=list)
    peer: Peer | None = None
    breach_at: float | None = None  # backlog surge: when the backlog age actually passed its limit
    # When the fault itself began, for scenarios that run normally first (the surge's 5x phase, the flapping peer's
    # first outage); None: at the scenario's start. Detection is measured from here.
    injected_at: float | None = None
    notes: list[str] = field(default_factory=list)


async def _send(ll: Lifeline, texts: list[str], run: Run) -> None:
    codes = await send_mllp(ll.mllp_port, texts)
    for text, code in zip(texts, codes, strict=True):
        if code == "AA":
            run.acked.append(text.split("|")[9])


async def _wait_diagnosed(ll: Lifeline, case_id: str, timeout: float = 120.0) -> None:
    await ll.wait_case(case_id, lambda s: s.diagnosis is not None, timeout=timeout, interval=0.2)


# -- destination faults ----------------------------------------------------------------------------------------

async def destination_down(ll: Lifeline, run: Run, port: int, case_id: str) -> None:
    run.peer = Peer(port)
    await _send(ll, [adt(f"DOWN{i}", f"MRN{i}") for i in range(5)], run)
    await _wait_diagnosed(ll, case_id)
    await run.peer.start()  # the peer's owner brings it back
    run.fixable_at = time.time()


async def destination_slow(ll: Lifeline, run: Run, port: int, case_id: str) -> None:
    run.peer = Peer(port, delay=5.0)
    await run.peer.start()
    for i in range(6):
        await _send(ll, [adt(f"SLOW{i}{j}", f"MRN{j}") for j in range(5)], run)
        await asyncio.sleep(1.0)
    with contextlib.suppress(AssertionError):
        await _wait_diagnosed(ll, case_id, timeout=90)
    run.peer.delay = 0.0  # the peer gets fast again
    run.fixable_at = time.time()


async def destination_rejecting(ll: Lifeline, run: Run, port: int, case_id: str) -> None:
    run.peer = Peer(port, answer="AR")
    await run.peer.start()
    await _send(ll, [adt(f"REJ{i}", f"MRN{i}") for i in range(10)], run)
    await _wait_diagnosed(ll, case_id)
    run.peer.answer = "AA"  # the peer's rules are fixed; the dead letters can be replayed
    run.fixable_at = time.time()


async def backlog_surge(ll: Lifeline, run: Run, port: int, case_id: str) -> None:
    run.peer = Peer(port, delay=0.25)
    await run.peer.start()
    limit = 20.0
    stop = asyncio.Event()

    async def watch_breach() -> None:
        while not stop.is_set():
            age = await ll.pool.fetchval(
                "select coalesce(extract(epoch from now() - min(created_at)), 0)::float8 from deliveries"
                " where status in ('pending', 'started')")
            if age > limit and run.breach_at is None:
                run.breach_at = time.time()
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch_breach())
    try:
        n = 0
        for _ in range(10):  # normal: 1/s
            await _send(ll, [adt(f"SURGE{n:04d}", "MRN1", seq=n)], run)
            n += 1
            await asyncio.sleep(1.0)
        began = run.injected_at = time.time()
        while time.time() - began < 60 and run.breach_at is None:  # 5x normal
            await _send(ll, [adt(f"SURGE{n + i:04d}", "MRN1", seq=n + i) for i in range(5)], run)
            n += 5
            await asyncio.sleep(1.0)
        with contextlib.suppress(AssertionError):
            await _wait_diagnosed(ll, case_id, timeout=30)
        run.fixable_at = time.time()  # the surge is over
    finally:
        stop.set()
        await watcher


async def flapping(ll: Lifeline, run: Run, port: int, case_id: str) -> None:
    run.peer = Peer(port)
    up = False
    for i in range(6):  # 2 minutes: down 20 s, up 20 s, ...
        if up:
            await run.peer.stop()
            run.injected_at = run.injected_at or time.time()  # the first outage is the fault's start
        else:
            await run.peer.start()
        up = not up
        for j in range(4):
            await _send(ll, [adt(f"FLAP{i}{j}", f"MRN{j}")], run)
            await asyncio.sleep(5.0)
    if not up:
        await run.peer.start()
    run.fixable_at = time.time()


async def malformed_burst(ll: Lifeline, run: Run, port: int, case_id: str) -> None:
    run.peer = Peer(port)
    await run.peer.start()
    bad = [adt(f"BAD{i}", "MRN1").replace("ADT^A08^ADT_A01", "") for i in range(25)]
    await send_mllp(ll.mllp_port, bad)  # answered AR, stored as rejected
    await _send(ll, [adt(f"GOOD{i}", f"MRN{i}") for i in range(5)], run)
    with contextlib.suppress(AssertionError):
        await _wait_diagnosed(ll, case_id, timeout=60)


# -- engine faults ---------------------------------------------------------------------------------------------

def _env() -> None:
    os.environ[ENGINE_ENV["username_env"]] = "admin"
    os.environ[ENGINE_ENV["password_env"]] = "admin"


@contextlib.asynccontextmanager
async def mirth_ctx(tmp: Path, state: str, stuck: bool = False) -> AsyncIterator[dict[str, Any]]:
    _env()
    emu = MirthEmulator(delay=0.2)
    ch = emu.add_channel("ADT out", id=str(uuid.uuid4()), state=state, queued=5, received=40, sent=35,
                         stuck_stopping=stuck)
    emu.add_channel("Healthy", id=str(uuid.uuid4()))
    with ServerThread(emu.app) as url:
        async with EngineTraffic(mirth=emu):
            yield {"engines": [{"name": "mirth1", "kind": "mirth", "url": f"{url}/api", **ENGINE_ENV}],
                   "channel": ch.id, "emu": emu}


@contextlib.asynccontextmanager
async def rhapsody_ctx(tmp: Path) -> AsyncIterator[dict[str, Any]]:
    _env()
    emu = RhapsodyEmulator(delay=0.2)
    emu.add("ADT to LIS", id=7, state="ERROR", out_queue=4, received=50, sent=46, failed=2)
    with ServerThread(emu.app) as url:
        async with EngineTraffic(rhapsody=emu):
            yield {"engines": [{"name": "rhap1", "kind": "rhapsody", "url": f"{url}/api", **ENGINE_ENV}],
                   "channel": "7", "emu": emu}


@contextlib.asynccontextmanager
async def cloverleaf_ctx(tmp: Path) -> AsyncIterator[dict[str, Any]]:
    hci = FakeCloverleaf(tmp / "hci-state.json", site="site1", delay=0.2)
    hci.add_process("adt", {"ib_adt": {"msgsin": 120, "msgsout": 120},
                            "ob_adt": {"status": "down", "msgsin": 80, "msgsout": 74, "obdataqd": 6,
                                       "plasterrtext": "connection refused by 10.0.0.5:6661"}})
    os.environ.update(hci.env)
    bin_dir = install(tmp / "bin")
    async with EngineTraffic(cloverleaf=hci, threads=["ob_adt"]):
        yield {"engines": [{"name": "clover1", "kind": "cloverleaf", "timeout": "5s",
                            "cloverleaf": {"site": "site1", "command_dir": str(bin_dir)}}],
               "channel": "adt/ob_adt", "emu": hci}


async def engine_fault(ll: Lifeline, run: Run, port: int, case_id: str) -> None:
    await _wait_diagnosed(ll, case_id, timeout=60)

