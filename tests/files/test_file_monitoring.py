"""Watching file channels: the snapshot carries file/SFTP sources, detectors for a failing source, a silent one and
a growing error/ folder, a diagnosis with safe actions (reconnect, re-poll now), the action reaching the poller,
verification, and /api/flow and the dashboard listing file sources and destinations."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.diagnostics import DiagnosticsActivities
from activities.metrics import MetricsActivities
from activities.remediation import RemediationActivities
from infra.config import validate_config
from infra.crypto import Cipher
from tests.delivery.harness import api_client, bearer, wait_for
from tests.files.common import batch_bytes
from tests.files.sftp_server import SftpServer
from workers.poller import FilePoller, LocalDir, SftpDir
from workflows.contract import (
    ACTION_SAFETY,
    ActionInput,
    DiagnoseInput,
    FileSourceMetrics,
    MeasureInput,
    MonitorThresholds,
    SnapshotInput,
)
from workflows.contract import Snapshot as Snap
from workflows.detectors import detect
from workflows.remediation import verify

T = MonitorThresholds()
AT = "2026-01-05T10:00:00+00:00"


def snap(**kw: object) -> Snap:
    src = FileSourceMetrics(channel="reflab", kind="sftp", location="sftp://lab@h:22/out", last_poll_age_s=2,
                            silent_s=1800, usual_gap_s=3600, gap_samples=20)
    return Snap(observed_at=AT, window_s=300, file_sources=[dataclasses.replace(src, **kw)])  # type: ignore[arg-type]


def kinds(s: Snap) -> list[str]:
    return [e.kind for e in detect(s, T, [])]


def test_file_detectors_fire_on_their_signal_and_stay_quiet_when_healthy() -> None:
    assert kinds(snap()) == []
    failing = detect(snap(consecutive_failures=3, last_error_class="auth"), T, [])
    assert [(e.kind, e.subject, e.signature) for e in failing] == [
        ("file_source_failing", "channel:reflab", "file_source:auth")]
    assert "3 failed polls" in failing[0].summary and "sftp://lab@h:22/out" in failing[0].summary
    assert kinds(snap(consecutive_failures=2)) == []
    # Silent: beyond factor x the usual gap and beyond min_silence, only once the usual gap is learned.
    assert kinds(snap(silent_s=3 * 3600 + 1)) == ["file_source_silent"]
    assert kinds(snap(silent_s=3 * 3600 - 1)) == []
    assert kinds(snap(silent_s=10 * 3600, gap_samples=4)) == []
    assert kinds(snap(silent_s=1900, usual_gap_s=60)) == []  # 3 x 1 min, but under the 1 h minimum
    # A failing source is the cause; its silence is the symptom and opens no case of its own.
    assert kinds(snap(silent_s=10 * 3600, consecutive_failures=5, last_error_class="refused")) == [
        "file_source_failing"]
    assert kinds(snap(errors_added=2, error_files=7)) == ["file_errors_growing"]
    off = dataclasses.replace(T, disabled=["file_errors_growing"])
    assert detect(snap(errors_added=2), off, []) == []


def test_file_case_verification() -> None:
    from workflows.contract import Measurement

    a = Measurement(AT, {})
    assert verify("file_source_failing", "channel:x", a, Measurement(AT, {"source_failures": 0,
                                                                        "source_polled_ok": 1}))[0]
    assert not verify("file_source_failing", "channel:x", a, Measurement(AT, {"source_failures": 2,
                                                                            "source_polled_ok": 0}))[0]
    assert verify("file_source_silent", "channel:x", a, Measurement(AT, {"source_files": 1}))[0]
    assert not verify("file_errors_growing", "channel:x", a, Measurement(AT, {"source_error_files": 1}))[0]


async def test_sftp_login_failure_is_seen_diagnosed_remediated_with_a_safe_reconnect_and_verified(
        tmp_path: Path, pool: asyncpg.Pool, store_cipher: Cipher, db_url: str, temporal_env: WorkflowEnvironment,
        task_queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    server = SftpServer(tmp_path / "root")
    await server.start()
    (server.root / "out").mkdir()
    monkeypatch.setenv("REFLAB_PW", "rotated-by-someone")
    config = validate_config({
        "channels": [{"name": "reflab", "sftp": {
            "host": "127.0.0.1", "port": server.port, "username": "lab", "password_env": "REFLAB_PW",
            "known_hosts": str(server.known_hosts(tmp_path / "kh")), "dir": "out", "min_age": "500ms"}}],
        "destinations": [{"name": "drop", "file": {"dir": str(tmp_path / "drop"), "batch": {"max_messages": 5}}}],
    }, "t")
    channel = config.channels[0]
    assert channel.sftp is not None
    poller = FilePoller(channel, pool, store_cipher, SftpDir(channel.sftp, tmp_path / "spool"))
    listener = await asyncpg.connect(db_url)
    notes: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("lifeline_files", lambda *a: notes.put_nowait(str(a[3])))
    try:
        for _ in range(3):
            await poller.poll_once()
        snapshot = await MetricsActivities(pool, config).snapshot(SnapshotInput(window_s=300))
        (src,) = snapshot.file_sources
        assert (src.channel, src.kind, src.consecutive_failures, src.last_error_class) == ("reflab", "sftp", 3, "auth")
        evidence = detect(snapshot, T, [])
        assert [(e.kind, e.signature) for e in evidence] == [("file_source_failing", "file_source:auth")]

        diag = await DiagnosticsActivities(pool, config).diagnose(
            DiagnoseInput("file_source_failing", "channel:reflab", "default", evidence))
        assert [a.action for a in diag.actions][:2] == ["reconnect_source", "repoll_source"]
        assert all(ACTION_SAFETY[a.action] == "safe" for a in diag.actions)

        async def provider() -> Client:
            return temporal_env.client

        rem = RemediationActivities(pool, provider, config)
        since = datetime.now(UTC) - timedelta(seconds=1)
        result = await rem.run_action(ActionInput("case:default:file_source_failing:channel:reflab", "default",
                                                  "reconnect_source", "channel:reflab"))
        assert result.ok
        assert await asyncio.wait_for(notes.get(), 10) == "default:reflab:reconnect"
        # The password is fixed; the poller (woken by the notification in production) logs in again.
        monkeypatch.setenv("REFLAB_PW", "s3cret-pass")
        (server.root / "out" / "r.hl7").write_bytes(batch_bytes(3))
        await poller.source.reset()

        async def ingested() -> bool:
            # Polls until the file has held still for min_age and was read and moved: a fixed number of polls
            # was a race against min_age (it passed only while polls were slow).
            await poller.poll_once()
            return not (server.root / "out" / "r.hl7").exists()

        await wait_for(ingested, timeout=60, interval=0.2)
        m = await rem.measure(MeasureInput("file_source_failing", "channel:reflab", "default", since.isoformat()))
        assert m.values["source_failures"] == 0 and m.values["source_polled_ok"] == 1 and m.values["source_files"] == 1
        assert verify("file_source_failing", "channel:reflab", m, m)[0]

        async with api_client(db_url, temporal_env.client.service_client.config.target_host, task_queue,
                              config) as api:
            r = await api.get("/api/flow", headers=bearer("viewer"))
            assert r.status_code == 200, r.text
            files = r.json()["files"]
            (s,) = files["sources"]
            assert s["channel"] == "reflab" and s["kind"] == "sftp" and s["state"] == "ok" and s["files_total"] == 1
            assert s["location"] == f"sftp://lab@127.0.0.1:{server.port}/out"
            assert files["destinations"] == [{"destination": "drop", "kind": "file", "location": str(tmp_path / "drop"),
                                              "batched": True, "open_batch_messages": 0, "open_batch_since": None}]
        from api.routes.dashboard import compose_snapshot
        from tests.conftest import make_settings

        dash = await compose_snapshot(pool, make_settings(), config, "default")
        assert [s["channel"] for s in dash["files"]["sources"]] == ["reflab"]
        assert dash["files"]["destinations"][0]["destination"] == "drop"
    finally:
        await listener.close()
        await poller.source.reset()
        await server.stop()


async def test_a_local_directory_that_disappears_is_a_failing_source(
        tmp_path: Path, pool: asyncpg.Pool, store_cipher: Cipher) -> None:
    inbox = tmp_path / "in"
    channel = validate_config({"channels": [{"name": "lab-files", "file": {"dir": str(inbox)}}]}, "t").channels[0]
    assert channel.file is not None
    poller = FilePoller(channel, pool, store_cipher, LocalDir(channel.file))
    for _ in range(3):
        await poller.poll_once()
    row = await pool.fetchrow("select consecutive_failures, last_error_class, last_error from file_sources")
    assert row["consecutive_failures"] == 3 and row["last_error_class"] == "io"
    assert "FileNotFoundError" in row["last_error"]
