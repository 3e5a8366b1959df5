"""Emulators served on free ports and the Engine configs that point adapters at them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest

from activities.engines.base import EngineChannel
from tests.emulators.mirth import MirthEmulator
from tests.emulators.rhapsody import RhapsodyEmulator
from tests.emulators.server import ServerThread

USER_ENV, PASS_ENV = "LIFELINE_TEST_ENGINE_USER", "LIFELINE_TEST_ENGINE_PASSWORD"


@pytest.fixture
def engine_credentials(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv(USER_ENV, "admin")
    monkeypatch.setenv(PASS_ENV, "admin")
    return {"username_env": USER_ENV, "password_env": PASS_ENV}


@pytest.fixture
def mirth() -> Iterator[tuple[MirthEmulator, str]]:
    emu = MirthEmulator(delay=0.3)
    with ServerThread(emu.app) as url:
        yield emu, url


@pytest.fixture
def rhapsody() -> Iterator[tuple[RhapsodyEmulator, str]]:
    emu = RhapsodyEmulator(delay=0.3)
    with ServerThread(emu.app) as url:
        yield emu, url


async def watch_states(read: Callable[[], Awaitable[EngineChannel]], action: Awaitable[None],
                       until: str | None = None, timeout: float = 5.0) -> list[str]:
    """Run `action` while polling `read` (until it is done and, if given, the raw state is `until`);
    the distinct raw states seen, in order."""
    seen: list[str] = []
    task = asyncio.ensure_future(action)
    try:
        async with asyncio.timeout(timeout):
            while True:
                done = task.done()  # only a read started after the action finished can end the watch
                state = (await read()).raw_state
                if not seen or seen[-1] != state:
                    seen.append(state)
                if done and (until is None or state == until):
                    break
                await asyncio.sleep(0.03)
        await task
    finally:
        task.cancel()
    return seen


async def wait_state(read: Callable[[], Awaitable[EngineChannel]], state: str, timeout: float = 5.0) -> EngineChannel:
    async with asyncio.timeout(timeout):
        while True:
            channel = await read()
            if channel.state == state:
                return channel
            await asyncio.sleep(0.03)
