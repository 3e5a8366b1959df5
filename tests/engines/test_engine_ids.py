"""Finding 8 (engine ids in URLs): ids are allow-listed and every path segment is quoted, so a crafted channel id
such as ``../../admin/shutdown`` reaches nothing on Mirth or Rhapsody (emulators record every request)."""

from __future__ import annotations

import pytest

from activities.engines.base import EngineNotFound
from activities.engines.cloverleaf import CloverleafAdapter, LocalRunner
from activities.engines.mirth import MirthAdapter
from activities.engines.rhapsody import RhapsodyAdapter
from infra.config import Engine
from tests.emulators.mirth import MirthEmulator
from tests.emulators.rhapsody import RhapsodyEmulator

EVIL = ["../../admin/shutdown", "..", "a/../../b", "x%2F..%2Fadmin", "1?x=1", "1#frag", "a\x00b", "ü/.."]


def _paths(requests: list[tuple[str, ...]]) -> list[str]:
    return [r[1] for r in requests]


@pytest.mark.parametrize("evil", EVIL)
async def test_mirth_channel_id_cannot_leave_its_channel(mirth: tuple[MirthEmulator, str], evil: str,
                                                         engine_credentials: dict[str, str]) -> None:
    emu, url = mirth
    emu.add_channel("ADT in", id="4b432aec-29f1-4855-b6df-6fa382d1e5fa")
    adapter = MirthAdapter(Engine(name="m1", kind="mirth", url=f"{url}/api", **engine_credentials))  # type: ignore[arg-type]
    try:
        for call in (adapter.channel_status, adapter.start, adapter.stop, adapter.halt):
            with pytest.raises(EngineNotFound):
                await call(evil)
        # A display name (with a space) still resolves to the engine's own id.
        assert (await adapter.channel_status("ADT in")).id == "4b432aec-29f1-4855-b6df-6fa382d1e5fa"
    finally:
        await adapter.close()
    allowed = ("/api/users/", "/api/channels/idsAndNames", "/api/channels/4b432aec-29f1-4855-b6df-6fa382d1e5fa/",
               "/api/channels/ADT%20in/", "/api/channels/ADT in/")
    strays = [p for p in _paths(emu.requests) if not p.startswith(allowed)]
    assert strays == [], strays


@pytest.mark.parametrize("evil", [*EVIL, "route:../../admin/shutdown"])
async def test_rhapsody_component_id_cannot_leave_its_component(rhapsody: tuple[RhapsodyEmulator, str], evil: str,
                                                                engine_credentials: dict[str, str]) -> None:
    emu, url = rhapsody
    adapter = RhapsodyAdapter(Engine(name="r1", kind="rhapsody", url=f"{url}/api",  # type: ignore[arg-type]
                                     **engine_credentials))
    try:
        for call in (adapter.channel_status, adapter.start, adapter.stop, adapter.restart):
            with pytest.raises(EngineNotFound):
                await call(evil)
    finally:
        await adapter.close()
    assert _paths(emu.requests) == [], emu.requests


@pytest.mark.parametrize("evil", ["proc/thr pstop; hcienginestop", "proc/../x", "proc/t h\nhcisitectl"])
async def test_cloverleaf_thread_name_cannot_add_commands(evil: str) -> None:
    ran: list[list[str]] = []

    class Recorder(LocalRunner):
        async def run(self, argv: list[str]) -> tuple[int, str, str]:
            ran.append(argv)
            return 0, "", ""

    engine = Engine.model_validate({"name": "c1", "kind": "cloverleaf", "cloverleaf": {"site": "s", "process": "p"}})
    adapter = CloverleafAdapter(engine, runner=Recorder(5.0))
    with pytest.raises(EngineNotFound, match="not a valid"):
        await adapter.start(evil)
    assert ran == []
