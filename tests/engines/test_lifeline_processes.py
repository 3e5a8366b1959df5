"""Lifeline's own processes as channels of the `lifeline` engine: a crash loop (from the supervisor's status file)
or a stalled dispatcher (from the store) is an engine channel in error, and the monitor opens a case for it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import asyncpg
import pytest

from activities.engines import build_adapter
from activities.engines.base import EngineNotFound, EngineNotSupported
from activities.engines.lifeline import LifelineAdapter
from activities.store import accept
from infra.config import Engine, validate_config
from infra.crypto import Cipher
from tests.delivery.harness import adt
from workflows.contract import EngineChannelMetrics, MonitorThresholds, Snapshot
from workflows.detectors import detect

CONFIG = validate_config({"channels": [{"name": "adt-in", "routes": [{"to": "lab"}]}],
                          "destinations": [{"name": "lab", "mllp": {"host": "127.0.0.1", "port": 2600}}]}, "test")


def write_status(data_dir: Path, processes: list[dict[str, object]], pid: int | None = None) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "status.json").write_text(json.dumps({
        "supervisor_pid": pid or os.getpid(), "updated_at": time.time(), "stopping": False,
        "processes": processes}))


def proc(name: str, state: str = "running", health: str = "ok", restarts: int = 0, **kw: object) -> dict[str, object]:
    return {"name": name, "pid": 4242, "state": state, "health": health, "restarts": restarts, "uptime_s": 12.0,
            "last_exit": kw.get("last_exit"), "tail": kw.get("tail", []), "log": f"/x/{name}.log"}


def metrics(chans: list[object]) -> list[EngineChannelMetrics]:
    return [EngineChannelMetrics(engine="self", channel_id=c.id, name=c.name, state=str(c.state),  # type: ignore[attr-defined]
                                 raw_state=c.raw_state, queued=c.queued, errors=c.errors)  # type: ignore[attr-defined]
            for c in chans]


async def test_crash_loop_is_a_channel_in_error_and_opens_a_case(pool: asyncpg.Pool, tmp_path: Path) -> None:
    write_status(tmp_path, [
        proc("postgres"), proc("temporal"),
        proc("worker", "crash-loop", "down", 5, last_exit="code 1", tail=["Traceback ...", "KeyError: 'x'"]),
        proc("dispatcher"), proc("api", "restarting", "down", 1, last_exit="killed by SIGKILL"), proc("listener")])
    adapter = LifelineAdapter(pool, CONFIG, org="default", processes=True, data_dir=tmp_path)
    chans = {c.id: c for c in await adapter.list_channels()}
    assert set(chans) == {"lab", "process:listener", "process:dispatcher", "process:worker", "process:api"}
    worker = chans["process:worker"]
    assert (worker.state, worker.raw_state, worker.errors) == ("error", "crash-loop", 5)
    assert worker.detail["error"] == "Traceback ... | KeyError: 'x'" and worker.detail["last_exit"] == "code 1"
    assert (chans["process:api"].state, chans["process:api"].raw_state) == ("error", "restarting")
    assert chans["process:listener"].state == "started" and chans["process:dispatcher"].state == "started"
    assert (await adapter.channel_status("process:worker")).raw_state == "crash-loop"
    with pytest.raises(EngineNotSupported):
        await adapter.start("process:worker")
    with pytest.raises(EngineNotFound):
        await adapter.channel_status("process:nope")

    snap = Snapshot(observed_at="2026-01-05T10:00:00+00:00", engine_channels=metrics(list(chans.values())))
    found = {(e.kind, e.subject) for e in detect(snap, MonitorThresholds())}
    assert ("engine_channel_stopped", "engine:self:process:worker") in found
    assert ("engine_channel_stopped", "engine:self:process:api") in found
    assert not any("listener" in s or "dispatcher" in s for _, s in found)


async def test_stalled_dispatcher_from_the_store(pool: asyncpg.Pool, store_cipher: Cipher, tmp_path: Path) -> None:
    write_status(tmp_path, [proc("dispatcher"), proc("worker")])
    adapter = LifelineAdapter(pool, CONFIG, processes=True, data_dir=tmp_path, channels=["process:dispatcher"])
    [fresh] = await adapter.list_channels()
    assert (fresh.id, fresh.state, fresh.queued) == ("process:dispatcher", "started", 0)
    mid = (await accept(pool, store_cipher, CONFIG.channels[0], adt("STALL1", "MRN1"))).message_id
    [waiting] = await adapter.list_channels()
    assert waiting.state == "started" and waiting.queued == 1  # just accepted: not a stall yet
    await pool.execute("update messages set received_at = now() - interval '2 minutes' where id = $1", mid)
    [stalled] = await adapter.list_channels()
    assert (stalled.state, stalled.raw_state, stalled.queued) == ("error", "stalled", 1)
    assert "not routed" in stalled.detail["error"]


async def test_without_a_supervisor_processes_are_unknown_and_build_adapter_lists_them(
        pool: asyncpg.Pool, tmp_path: Path) -> None:
    write_status(tmp_path / "gone", [proc("worker")], pid=2**22 + 12345)  # no such process: supervisor gone
    adapter = LifelineAdapter(pool, CONFIG, processes=True, data_dir=tmp_path / "gone")
    procs = [c for c in await adapter.list_channels() if c.id.startswith("process:")]
    assert {c.state for c in procs} == {"unknown"} and {c.raw_state for c in procs} == {"not supervised"}
    built = build_adapter(Engine(name="self", kind="lifeline"), pool=pool, config=CONFIG)
    assert isinstance(built, LifelineAdapter) and built.processes
    assert not LifelineAdapter(pool, CONFIG).processes  # destinations only unless asked


async def test_dispatcher_inside_the_worker_follows_the_worker(pool: asyncpg.Pool, tmp_path: Path) -> None:
    """`lifeline up` runs the dispatcher in the worker: no status row of its own, so it shares the worker's fate."""
    write_status(tmp_path, [proc("worker", "crash-loop", "down", 5, last_exit="code 1"), proc("api")])
    adapter = LifelineAdapter(pool, CONFIG, processes=True, data_dir=tmp_path, channels=["process:dispatcher"])
    [dispatcher] = await adapter.list_channels()
    assert (dispatcher.state, dispatcher.raw_state, dispatcher.detail["in"]) == ("error", "crash-loop", "worker")
    write_status(tmp_path, [proc("worker"), proc("api")])
    [dispatcher] = await adapter.list_channels()
    assert (dispatcher.state, dispatcher.raw_state) == ("started", "running")
