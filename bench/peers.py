"""Downstream MLLP peers for benchmarks and tests: one recording server (python-hl7's asyncio MLLP server) and
hl7apy's closing server, re-exported from the test harness."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from hl7.mllp import start_hl7_server

from tests.delivery.harness import Hl7apyPeer as ClosingPeer

__all__ = ["ClosingPeer", "RecordingPeer"]


@dataclass
class RecordingPeer:
    """Answers AA (after `delay` seconds), keeping every arrival in order as (control id, PID-3.1) and when each
    control id first arrived; a control id that arrives again is a duplicate. `peak` is the most messages it held
    unanswered at once."""

    delay: float = 0.0
    arrivals: list[tuple[str, str]] = field(default_factory=list)
    at: dict[str, float] = field(default_factory=dict)  # control id -> monotonic time of its first arrival
    server: asyncio.Server | None = None
    holding: int = 0
    peak: int = 0

    @property
    def controls(self) -> list[str]:
        """Control ids in arrival order, repeats included."""
        return [c for c, _ in self.arrivals]

    @property
    def duplicates(self) -> int:
        return len(self.arrivals) - len(self.at)

    async def start(self) -> int:
        async def handle(reader: Any, writer: Any) -> None:
            try:
                while not writer.is_closing():
                    msg = await reader.readmessage()
                    self.holding += 1
                    self.peak = max(self.peak, self.holding)
                    try:
                        if self.delay:
                            await asyncio.sleep(self.delay)
                    finally:
                        self.holding -= 1
                    control = str(msg.segment("MSH")[10])
                    self.arrivals.append((control, str(msg.segment("PID")[3][0][0])))
                    self.at.setdefault(control, time.monotonic())
                    writer.writemessage(msg.create_ack("AA"))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await start_hl7_server(handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)
