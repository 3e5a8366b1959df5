"""An in-process Lifeline (listener, dispatcher, worker) against the session's real PostgreSQL and Temporal,
plus real third-party peers: python-hl7's asyncio MLLP server downstream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import hl7
import httpx
from hl7.mllp import start_hl7_server
from temporalio.client import Client
from temporalio.worker import Worker

from activities.delivery import DeliveryActivities
from activities.mllp import MllpSender
from infra.config import LifelineConfig, validate_config
from infra.crypto import Cipher
from workers.dispatcher import Dispatcher
from workers.listener import ChannelListener
from workers.worker import build_worker


@dataclass
class Peer:
    """A downstream MLLP system built on python-hl7; answers AA unless told otherwise."""

    received: list[hl7.Message] = field(default_factory=list)
    answer: str = "AA"
    server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> int:
        async def handle(reader: Any, writer: Any) -> None:
            try:
                while not writer.is_closing():
                    msg = await reader.readmessage()
                    if self.answer == "AA":
                        self.received.append(msg)
                    ack = msg.create_ack(self.answer)
                    if self.answer != "AA":
                        ack = hl7.parse(str(ack) + "\rERR|||207^Application internal error^HL70357|E||||peer says no")
                    writer.writemessage(ack)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await start_hl7_server(handle, "127.0.0.1", port)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def control_ids(self) -> list[str]:
        return [str(m.segment("MSH")[10]) for m in self.received]


def config_for(dest_port: int, *, ordering: Any = "none", retry: dict[str, Any] | None = None,
               extra_dests: list[dict[str, Any]] | None = None, routes: list[dict[str, Any]] | None = None,
               on_dead_letter: str = "block") -> LifelineConfig:
    dests = [{"name": "lab", "mllp": {"host": "127.0.0.1", "port": dest_port, "ack_timeout": "5s",
                                      "connect_timeout": "2s"},
              "ordering": ordering, "on_dead_letter": on_dead_letter,
              "retry": retry or {"initial_interval": "200ms", "backoff": 1.5, "maximum_interval": "1s",
                                 "maximum_attempts": 50}}]
    dests += extra_dests or []
    return validate_config({
        "channels": [{"name": "adt-in", "mllp": {"port": 2575}, "routes": routes or [{"to": "lab"}]}],
        "destinations": dests,
    }, "test")


@dataclass
class Engine:
    pool: asyncpg.Pool
    client: Client
    config: LifelineConfig
    store_cipher: Cipher
    task_queue: str
    db_url: str
    listener: ChannelListener | None = None
    worker: Worker | None = None
    dispatcher: Dispatcher | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _http: httpx.AsyncClient | None = None
    _mllp: MllpSender | None = None

    @property
    def mllp_port(self) -> int:
        assert self.listener is not None
        return self.listener.port

    async def start(self, *, worker: bool = True) -> Engine:
        self.listener = ChannelListener(self.config.channels[0], self.pool, self.store_cipher)
        await self.listener.start("127.0.0.1", 0)
        self.dispatcher = Dispatcher(self.pool, self.client, self.config, self.store_cipher, self.task_queue)
        self._tasks.append(asyncio.create_task(self.dispatcher.run(self.db_url, 0.5, self._stop)))
        if worker:
            await self.start_worker()
        return self

    async def start_worker(self) -> None:
        self._http = httpx.AsyncClient()
        self._mllp = MllpSender()
        acts = DeliveryActivities(self.pool, self.store_cipher, self.config, self._mllp, self._http)
        self.worker = build_worker(self.client, self.task_queue, acts)
        self._tasks.append(asyncio.create_task(self.worker.run()))

    async def stop(self) -> None:
        self._stop.set()
        if self.worker is not None:
            await self.worker.shutdown()
        if self.listener is not None:
            await self.listener.close()
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._mllp is not None:
            await self._mllp.close()
        if self._http is not None:
            await self._http.aclose()


@contextlib.asynccontextmanager
async def running(engine: Engine, **kw: Any) -> AsyncIterator[Engine]:
    await engine.start(**kw)
    try:
        yield engine
    finally:
        await engine.stop()


async def wait_for(predicate: Any, timeout: float = 60.0, interval: float = 0.1) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def adt(control_id: str, mrn: str, *, seq: int = 0, name: str = "DOE^JANE") -> str:
    return "\r".join([
        f"MSH|^~\\&|EPIC|GENHOSP|LAB|LABFAC|20260101120000||ADT^A08^ADT_A01|{control_id}|P|2.5.1",
        "EVN|A08|20260101120000",
        f"PID|1||{mrn}^^^GENHOSP^MR||{name}||19800101|F|||1 MAIN ST^^BOSTON^MA^02118",
        f"PV1|1|I|WARD^{seq}^1",
    ])
