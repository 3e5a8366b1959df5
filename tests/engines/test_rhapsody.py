"""RhapsodyAdapter against the Rhapsody emulator, and the emulator against what the real server does."""

from __future__ import annotations

import httpx
import pytest

from activities.engines import build_adapter
from activities.engines.base import EngineAdapter, EngineAuthError, EngineError, EngineNotFound, EngineNotSupported
from activities.engines.rhapsody import RhapsodyAdapter, components
from infra.config import Engine
from tests.emulators.rhapsody import CSRF_MESSAGE, RhapsodyEmulator
from tests.engines.conftest import wait_state, watch_states

JSON = {"Accept": "application/json"}
Rhapsody = tuple[RhapsodyEmulator, str]


def engine(url: str, creds: dict[str, str], **kw: object) -> Engine:
    return Engine(name="rh1", kind="rhapsody", url=f"{url}/api", **creds, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def adapter(rhapsody: Rhapsody, engine_credentials: dict[str, str]):  # type: ignore[no-untyped-def]
    a = RhapsodyAdapter(engine(rhapsody[1], engine_credentials))
    yield a
    await a.close()


# -- the emulator answers as Rhapsody does ----------------------------------------------------------------------


async def test_emulator_csrf_required_on_put_after_first_request(rhapsody: Rhapsody) -> None:
    emu, url = rhapsody
    cp = emu.add("ADT out", state="STOPPED")
    async with httpx.AsyncClient() as client:
        first = await client.get(f"{url}/api/info", headers=JSON, auth=("admin", "admin"))
        assert first.status_code == 200 and first.json()["error"] is None
        token = first.headers["X-CSRF-Token"]
        put = f"{url}/api/commpoint/{cp.id}/state"
        plain = {"Content-Type": "text/plain"}
        no_token = await client.put(put, content="START", headers=JSON | plain)
        assert no_token.status_code == 400
        assert no_token.json() == {"data": None, "error": {"code": 400, "messages": [CSRF_MESSAGE],
                                                           "errorFields": [], "invalidFields": []}}
        wrong = await client.put(put, content="START", headers=JSON | plain | {"X-CSRF-Token": "nope"})
        assert wrong.status_code == 400
        ok = await client.put(put, content="START", headers=JSON | plain | {"X-CSRF-Token": token})
        assert ok.status_code == 204
        await client.put(put, content="STOP", params={"CSRFToken": token}, headers=plain)  # query form works too
        bad = await client.put(put, content="JUMP", headers=JSON | plain | {"X-CSRF-Token": token})
        assert bad.status_code == 400 and "Invalid state" in bad.json()["error"]["messages"][0]


async def test_emulator_html_by_default_401_and_rate_limit(rhapsody: Rhapsody) -> None:
    emu, url = rhapsody
    async with httpx.AsyncClient() as client:
        html = await client.get(f"{url}/api/info", auth=("admin", "admin"))
        assert html.headers["content-type"].startswith("text/html")
        assert (await client.get(f"{url}/api/info", headers=JSON)).status_code == 200  # the session cookie
        client.cookies.clear()
        assert (await client.get(f"{url}/api/info", headers=JSON)).status_code == 401
        bad = await client.get(f"{url}/api/info", headers=JSON, auth=("admin", "x"))
        assert bad.status_code == 401 and bad.headers["WWW-Authenticate"].startswith("Basic")
        for _ in range(3):
            assert (await client.get(f"{url}/api/info", headers=JSON, auth=("admin", "admin"))).status_code == 200
        limited = await client.get(f"{url}/api/info", headers=JSON, auth=("admin", "admin"))
        assert limited.status_code == 429  # the 6th login within a minute
        assert emu.logins == 5


# -- the adapter ------------------------------------------------------------------------------------------------


def test_components_walks_any_nesting() -> None:
    tree = {"childFolders": [{"childFolders": [{"childComponents": [{"id": 3, "type": "ROUTE"}]}],
                              "childComponents": [{"id": 1, "type": "COMMUNICATION_POINT"}, {"id": 9, "type": "X"}]}]}
    assert sorted(c["id"] for c in components(tree)) == [1, 3]


async def test_list_and_status(rhapsody: Rhapsody, adapter: RhapsodyAdapter) -> None:
    emu, _ = rhapsody
    emu.add("ADT in", mode="INPUT", in_queue=2, received=11, sent=0, failed=1, failed_queue=1)
    emu.add("Lab out", folder="Lab", state="STOPPED", out_queue=5)
    emu.add("ADT route", type="ROUTE", in_queue=1, out_queue=2, sent=40)
    chans = {c.name: c for c in await adapter.list_channels()}
    assert set(chans) == {"ADT in", "Lab out", "ADT route"}
    adt = chans["ADT in"]
    assert (adt.id, adt.state, adt.raw_state, adt.queued, adt.received, adt.errors) == ("1", "started", "RUNNING",
                                                                                        2, 11, 1)
    assert adt.detail["mode"] == "INPUT" and adt.detail["failedQueueSize"] == "1"
    assert (chans["Lab out"].state, chans["Lab out"].queued) == ("stopped", 5)
    route = chans["ADT route"]
    assert (route.id, route.queued, route.sent) == ("route:3", 3, 40)
    assert (await adapter.channel_status("route:3")).detail["type"] == "ROUTE"
    with pytest.raises(EngineNotFound):
        await adapter.channel_status("99")
    assert emu.logins == 1  # one session for all of it


async def test_control_through_intermediate_states(rhapsody: Rhapsody, adapter: RhapsodyAdapter) -> None:
    emu, _ = rhapsody
    cp = emu.add("ADT out")
    read = lambda: adapter.channel_status("1")  # noqa: E731
    # The PUT returns at once (204) and the change runs on: the polls see the intermediate state.
    assert (await watch_states(read, adapter.stop("1"), until="STOPPED"))[-2:] == ["STOPPING", "STOPPED"]
    assert (await watch_states(read, adapter.start("1"), until="RUNNING"))[-2:] == ["STARTING", "RUNNING"]
    seen = await watch_states(read, adapter.restart("1"), until="RUNNING")
    assert seen[-3:] == ["STOPPING", "STARTING", "RUNNING"]
    assert cp.state == "RUNNING"
    for op in (adapter.pause, adapter.resume, adapter.halt, adapter.clear_queue):
        with pytest.raises(EngineNotSupported):
            await op("1")


async def test_lost_csrf_token_is_recovered(rhapsody: Rhapsody, adapter: RhapsodyAdapter) -> None:
    emu, _ = rhapsody
    emu.add("ADT out", state="STOPPED")
    await adapter.channel_status("1")
    emu.rotate_csrf()  # the adapter's token is now stale: the first PUT gets 400 and a fresh token
    await adapter.start("1")
    puts = [status for method, _, status in emu.requests if method == "PUT"]
    assert puts == [400, 204]
    await wait_state(lambda: adapter.channel_status("1"), "started")


async def test_stuck_stopping_and_start_failure(rhapsody: Rhapsody, adapter: RhapsodyAdapter) -> None:
    emu, _ = rhapsody
    stuck = emu.add("ADT out", stuck_stopping=True)
    await adapter.stop("1")
    emu.delay = 0.05
    assert (await wait_state(lambda: adapter.channel_status("1"), "stopping")).raw_state == "STOPPING"
    with pytest.raises(EngineError, match="could not be changed"):
        await adapter.start("1")
    stuck.state, stuck.stuck_stopping = "STOPPED", False
    emu.add("Lab out", state="STOPPED", start_error="port 7001 in use")
    with pytest.raises(EngineError, match="port 7001 in use"):
        await adapter.start("2")
    assert (await adapter.channel_status("2")).state == "stopped"


async def test_expired_session_relogs_and_rate_limit_is_an_engine_error(rhapsody: Rhapsody,
                                                                         adapter: RhapsodyAdapter) -> None:
    emu, _ = rhapsody
    emu.add("ADT out", queue_growth=3, error_growth=1)
    first = await adapter.channel_status("1")
    emu.expire_sessions()
    second = await adapter.channel_status("1")
    assert emu.logins == 2
    assert (second.queued - first.queued, second.errors - first.errors) == (3, 1)
    emu.expire_sessions()
    emu.force_429 = True
    with pytest.raises(EngineError, match="429") as info:
        await adapter.channel_status("1")
    assert not isinstance(info.value, EngineAuthError)


async def test_wrong_password_is_an_auth_error(rhapsody: Rhapsody, engine_credentials: dict[str, str]) -> None:
    emu, url = rhapsody
    emu.password = "rotated"
    adapter = build_adapter(engine(url, engine_credentials))
    try:
        assert isinstance(adapter, RhapsodyAdapter) and isinstance(adapter, EngineAdapter)
        with pytest.raises(EngineAuthError, match="Invalid username or password"):
            await adapter.list_channels()
    finally:
        await adapter.close()
