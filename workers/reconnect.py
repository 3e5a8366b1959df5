"""Start-up that waits for its servers: a process started while PostgreSQL or Temporal is down (or restarting
under `lifeline up`) retries with backoff instead of exiting, so a server outage never turns into a crash loop
of the processes that use it. Once connected, asyncpg pools and the Temporal client reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from temporalio.service import RPCError

log = logging.getLogger("lifeline.reconnect")

T = TypeVar("T")

# What a server that is down or restarting raises: connection refused/reset, PostgreSQL starting up or shutting
# down, a closed connection, a Temporal RPC that could not reach the frontend.
TRANSIENT: tuple[type[BaseException], ...] = (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                                              asyncpg.CannotConnectNowError, asyncpg.InterfaceError, RPCError,
                                              RuntimeError)


async def until_up(what: str, connect: Callable[[], Awaitable[T]], *, timeout: float = 300.0,
                   first_delay: float = 0.5, max_delay: float = 5.0) -> T:
    """Call connect() until it succeeds (or timeout passes, then re-raise), logging each failure once per try."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = first_delay
    while True:
        try:
            return await connect()
        except TRANSIENT as exc:
            if loop.time() + delay > deadline:
                raise
            log.warning("%s not reachable (%s); retrying in %.1fs", what, type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(max_delay, delay * 2)
