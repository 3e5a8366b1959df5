"""MirthAdapter against the Mirth emulator, and the emulator against what the real server does."""

from __future__ import annotations

import httpx
import pytest

from activities.engines import build_adapter
from activities.engines.base import EngineAdapter, EngineAuthError, EngineError, EngineNotFound, EngineNotSupported
from activities.engines.mirth import MirthAdapter, channel_from_status, statistics
from infra.config import Engine
from tests.emulators.mirth import REQUESTED_WITH_MESSAGE, MirthEmulator
from tests.engines.conftest import watch_states

JSON = {"X-Requested-With": "test", "Accept": "application/json"}
Mirth = tuple[MirthEmulator, str]


def engine(url: str, creds: dict[str, str], **kw: object) -> Engine:
    return Engine(name="mirth1", kind="mirth", url=f"{url}/api", **creds, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def adapter(mirth: Mirth, engine_credentials: dict[str, str]):  # type: ignore[no-untyped-def]
    a = MirthAdapter(engine(mirth[1], engine_credentials))
    yield a
    await a.close()


async def _login(client: httpx.AsyncClient, url: str) -> None:
    resp = await client.post(f"{url}/api/users/_login", data={"username": "admin", "password": "admin"}, headers=JSON)
    assert resp.status_code == 200
    assert resp.json() == {"com.mirth.connect.model.LoginStatus": {"status": "SUCCESS", "message": None}}


# -- the emulator answers as Mirth does ---------------------------------------------------------------------


async def test_emulator_rejects_requests_without_x_requested_with(mirth: Mirth) -> None:
    _, url = mirth
    async with httpx.AsyncClient() as client:
        for method, path in (("GET", "/api/channels/statuses"), ("POST", "/api/users/_login")):
            resp = await client.request(method, url + path, headers={"Accept": "application/json"})
            assert resp.status_code == 400
            assert resp.text == REQUESTED_WITH_MESSAGE == "All requests must have 'X-Requested-With' header"


async def test_emulator_auth_session_and_basic(mirth: Mirth) -> None:
    _, url = mirth
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{url}/api/channels/statuses", headers=JSON)).status_code == 401
        bad = await client.post(f"{url}/api/users/_login", data={"username": "admin", "password": "x"}, headers=JSON)
        assert bad.status_code == 401
        assert bad.json()["com.mirth.connect.model.LoginStatus"] == {
            "status": "FAIL", "message": "Incorrect username or password."}
        basic = await client.get(f"{url}/api/channels/statuses", headers=JSON, auth=("admin", "admin"))
        assert basic.status_code == 200
        await _login(client, url)
        assert "JSESSIONID" in client.cookies
        assert (await client.get(f"{url}/api/channels/statuses", headers=JSON)).status_code == 200


async def test_emulator_staxon_list_forms(mirth: Mirth) -> None:
    emu, url = mirth
    async with httpx.AsyncClient() as client:
        await _login(client, url)
        get = lambda path: client.get(url + path, headers=JSON)  # noqa: E731
        assert (await get("/api/channels/statuses")).json() == {"list": None}
        assert (await get("/api/channels/idsAndNames")).json() == {"map": None}
        one = emu.add_channel("ADT in", id="4b432aec-29f1-4855-b6df-6fa382d1e5fa")
        body = (await get("/api/channels/statuses")).json()
        status = body["list"]["dashboardStatus"]
        assert isinstance(status, dict)  # one element: an object, not an array
        assert status["channelId"] == one.id and status["state"] == "STARTED" and status["queued"] == 0
        assert status["statistics"]["@class"] == "linked-hash-map"
        assert status["statistics"]["entry"][0] == {"com.mirth.connect.donkey.model.message.Status": "RECEIVED",
                                                    "long": 0}
        assert status["deployedDate"] == {"time": 1643708252777, "timezone": "Etc/UTC"}
        assert [c["statusType"] for c in status["childStatuses"]["dashboardStatus"]] == [
            "SOURCE_CONNECTOR", "DESTINATION_CONNECTOR"]
        assert status["childStatuses"]["dashboardStatus"][0]["childStatuses"] is None  # empty element → null
        assert (await get("/api/channels/idsAndNames")).json() == {"map": {"entry": {"string": [one.id, "ADT in"]}}}
        emu.add_channel("Lab out")
        assert len((await get("/api/channels/statuses")).json()["list"]["dashboardStatus"]) == 2
        assert (await get(f"/api/channels/{one.id}/statistics")).json()["channelStatistics"]["channelId"] == one.id
        assert (await get(f"/api/channels/{one.id}/messages/count?status=ERROR")).json() == {"long": 0}
        xml = await client.get(f"{url}/api/channels/idsAndNames", headers={"X-Requested-With": "t"})
        assert xml.headers["content-type"].startswith("application/xml")
        assert f"<string>{one.id}</string>" in xml.text


async def test_emulator_return_errors_switch(mirth: Mirth) -> None:
    emu, url = mirth
    c = emu.add_channel("ADT in", state="STOPPED", start_error="Address already in use")
    emu.delay = 0.01
    async with httpx.AsyncClient() as client:
        await _login(client, url)
        silent = await client.post(f"{url}/api/channels/{c.id}/_start", headers=JSON)
        assert silent.status_code == 204 and c.state == "STOPPED"  # without returnErrors a failure is silent
        loud = await client.post(f"{url}/api/channels/{c.id}/_start?returnErrors=true", headers=JSON)
        assert loud.status_code == 500 and "Address already in use" in loud.text


# -- parsing staxon's shapes ------------------------------------------------------------------------------------


def test_statistics_accepts_object_array_and_null() -> None:
    key = "com.mirth.connect.donkey.model.message.Status"
    assert statistics({"@class": "linked-hash-map", "entry": {key: "SENT", "long": 4}}) == {"SENT": 4}
    assert statistics({"entry": [{key: "SENT", "long": "4"}, {key: "ERROR", "long": 1}]}) == {"SENT": 4, "ERROR": 1}
    assert statistics(None) == {} and statistics({"entry": None}) == {}


def test_channel_from_status_with_one_child_and_primitive_names() -> None:
    status = {"channelId": "c1", "name": 123, "state": "PAUSED", "queued": "7",
              "childStatuses": {"dashboardStatus": {"statusType": "DESTINATION_CONNECTOR", "metaDataId": 1,
                                                    "name": True, "state": "STARTED", "queued": 7}}}
    ch = channel_from_status(status)
    assert (ch.name, ch.state, ch.raw_state, ch.queued) == ("123", "paused", "PAUSED", 7)
    assert ch.detail["destination 1 true"] == "STARTED queued=7"


# -- the adapter ------------------------------------------------------------------------------------------------


async def test_list_and_status(mirth: Mirth, adapter: MirthAdapter) -> None:
    emu, _ = mirth
    assert await adapter.list_channels() == []
    a = emu.add_channel("ADT in", received=10, sent=8, error=1, filtered=1, queued=3)
    chans = await adapter.list_channels()  # one deployed channel: the object form
    assert [(c.id, c.name, c.state, c.queued, c.received, c.sent, c.errors, c.filtered) for c in chans] == [
        (a.id, "ADT in", "started", 3, 10, 8, 1, 1)]
    b = emu.add_channel("Lab out", state="PAUSED")
    emu.add_channel("Old feed", deployed=False)
    chans = {c.name: c for c in await adapter.list_channels()}
    assert chans["Lab out"].state == "paused" and chans["Lab out"].id == b.id
    assert chans["Old feed"].state == "undeployed"
    status = await adapter.channel_status(a.id)
    assert status.detail["destination 1 Destination 1"] == "STARTED queued=3"
    assert (await adapter.channel_status("Lab out")).id == b.id  # names resolve too
    assert (await adapter.channel_status("Old feed")).state == "undeployed"
    with pytest.raises(EngineNotFound):
        await adapter.channel_status("nope")


async def test_one_login_reused_and_x_requested_with_sent(mirth: Mirth, adapter: MirthAdapter) -> None:
    emu, _ = mirth
    emu.add_channel("ADT in")
    for _ in range(3):
        await adapter.list_channels()
    assert emu.logins == 1


async def test_stop_start_through_intermediate_states(mirth: Mirth, adapter: MirthAdapter) -> None:
    emu, _ = mirth
    c = emu.add_channel("ADT in")
    read = lambda: adapter.channel_status(c.id)  # noqa: E731
    assert await watch_states(read, adapter.stop(c.id)) == ["STARTED", "STOPPING", "STOPPED"]
    assert await watch_states(read, adapter.start(c.id)) == ["STOPPED", "STARTING", "STARTED"]
    assert await watch_states(read, adapter.pause(c.id)) == ["STARTED", "PAUSING", "PAUSED"]
    assert (await read()).state == "paused"
    assert await watch_states(read, adapter.resume(c.id)) == ["PAUSED", "STARTING", "STARTED"]


async def test_resume_only_from_paused_and_halt_forces_stop(mirth: Mirth, adapter: MirthAdapter) -> None:
    emu, _ = mirth
    c = emu.add_channel("ADT in")
    await adapter.resume(c.id)
    assert c.state == "STARTED"
    await adapter.halt(c.id)
    assert (await adapter.channel_status(c.id)).state == "stopped"


async def test_stuck_in_stopping_times_out_then_halt(mirth: Mirth, engine_credentials: dict[str, str]) -> None:
    emu, url = mirth
    c = emu.add_channel("ADT in", stuck_stopping=True)
    adapter = MirthAdapter(engine(url, engine_credentials, timeout=0.5))
    try:
        with pytest.raises(EngineError, match="timed out"):
            await adapter.stop(c.id)
        assert (await adapter.channel_status(c.id)).state == "stopping"
        await adapter.halt(c.id)
        assert (await adapter.channel_status(c.id)).raw_state == "STOPPED"
    finally:
        await adapter.close()


async def test_start_failure_reports_body(mirth: Mirth, adapter: MirthAdapter) -> None:
    emu, _ = mirth
    c = emu.add_channel("ADT in", state="STOPPED", start_error="Address already in use: 6661")
    with pytest.raises(EngineError, match="Address already in use: 6661"):
        await adapter.start(c.id)
    assert (await adapter.channel_status(c.id)).state == "stopped"


async def test_wrong_or_missing_password_is_an_auth_error(mirth: Mirth, engine_credentials: dict[str, str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    emu, url = mirth
    emu.password = "rotated"
    adapter = MirthAdapter(engine(url, engine_credentials))
    try:
        with pytest.raises(EngineAuthError, match="Incorrect username or password"):
            await adapter.list_channels()
        monkeypatch.delenv(engine_credentials["password_env"])
        with pytest.raises(EngineAuthError, match="not set"):
            await adapter.list_channels()
    finally:
        await adapter.close()


async def test_expired_session_logs_in_again_once(mirth: Mirth, adapter: MirthAdapter) -> None:
    emu, _ = mirth
    c = emu.add_channel("ADT in")
    await adapter.channel_status(c.id)
    emu.expire_sessions()
    assert (await adapter.channel_status(c.id)).state == "started"
    assert emu.logins == 2
    emu.expire_sessions()
    await adapter.stop(c.id)  # control calls re-login too
    assert emu.logins == 3 and c.state == "STOPPED"


async def test_503_while_starting(mirth: Mirth, adapter: MirthAdapter) -> None:
    emu, _ = mirth
    emu.add_channel("ADT in")
    emu.starting = True
    with pytest.raises(EngineError, match="starting") as info:
        await adapter.list_channels()
    assert not isinstance(info.value, EngineAuthError)
    emu.starting = False
    assert len(await adapter.list_channels()) == 1


async def test_growing_queue_and_climbing_errors(mirth: Mirth, adapter: MirthAdapter) -> None:
    emu, _ = mirth
    c = emu.add_channel("ADT in", queue_growth=5, error_growth=2)
    first, second = await adapter.channel_status(c.id), await adapter.channel_status(c.id)
    assert (second.queued - first.queued, second.errors - first.errors) == (5, 2)


async def test_capabilities_and_unsupported(mirth: Mirth, engine_credentials: dict[str, str]) -> None:
    adapter = build_adapter(engine(mirth[1], engine_credentials))
    try:
        assert isinstance(adapter, MirthAdapter) and isinstance(adapter, EngineAdapter)
        assert adapter.capabilities == {"start", "stop", "pause", "resume", "halt"}
        with pytest.raises(EngineNotSupported):
            await adapter.clear_queue("x")
    finally:
        await adapter.close()


async def test_unreachable_is_an_engine_error(engine_credentials: dict[str, str]) -> None:
    from infra.devstack import free_port

    adapter = MirthAdapter(engine(f"http://127.0.0.1:{free_port()}", engine_credentials, timeout=1))
    try:
        with pytest.raises(EngineError, match="unreachable"):
            await adapter.list_channels()
    finally:
        await adapter.close()
