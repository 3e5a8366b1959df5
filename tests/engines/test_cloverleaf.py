"""CloverleafAdapter against fake hcicmd/hciprocstatus executables; keyed-list parsing; the runners."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from activities.engines import build_adapter
from activities.engines.base import EngineAdapter, EngineError, EngineNotFound, EngineNotSupported
from activities.engines.cloverleaf import (
    CloverleafAdapter,
    LocalRunner,
    SshRunner,
    keyed_list,
    process_status,
    tcl_list,
    thread_reports,
)
from infra.config import Engine
from tests.emulators.cloverleaf.hci import FakeCloverleaf, install
from tests.engines.conftest import wait_state, watch_states


@pytest.fixture
def hci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCloverleaf:
    fake = FakeCloverleaf(tmp_path / "hci-state.json", site="site1", delay=0.8)
    fake.add_process("adt", {"ib_adt": {"msgsin": 120, "msgsout": 118, "obdataqd": 2},
                             "ob_adt": {"status": "down", "plasterrtext": "connection refused by 10.0.0.5:6661"}})
    fake.add_process("lab", {"ob_lab": {}}, running=False)
    for key, value in fake.env.items():
        monkeypatch.setenv(key, value)
    return fake


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    return install(tmp_path / "bin")


def engine(bin_dir: Path, **options: object) -> Engine:
    clover = {"site": "site1", "command_dir": str(bin_dir), "hci_root": "/opt/cloverleaf/cis2022.09/integrator"}
    return Engine.model_validate({"name": "clover1", "kind": "cloverleaf", "timeout": 5,
                                  "cloverleaf": clover | options})


# -- parsing --------------------------------------------------------------------------------------------------


def test_tcl_list_and_keyed_list() -> None:
    assert tcl_list('a {b c} "d e" {x {nested y}} f\\ g {}') == ["a", "b c", "d e", "x {nested y}", "f g", ""]
    kl = keyed_list("{PSTATUS up} {MSGSIN 12} {PLASTERRTEXT {refused by peer}} {EMPTY {}}")
    assert kl == {"PSTATUS": "up", "MSGSIN": "12", "PLASTERRTEXT": "refused by peer", "EMPTY": ""}
    with pytest.raises(ValueError):
        tcl_list("{unbalanced")


def test_thread_reports_bare_and_wrapped() -> None:
    bare = "{NAME ib_adt} {PSTATUS up} {OBDATAQD 4}\n"
    assert thread_reports(bare) == {"ib_adt": {"NAME": "ib_adt", "PSTATUS": "up", "OBDATAQD": "4"}}
    wrapped = "{ib_adt {{PSTATUS up} {OBDATAQD 4}}} {ob_lab {{PSTATUS down} {PLASTERRTEXT {no route}}}}"
    reports = thread_reports(wrapped)
    assert reports["ob_lab"] == {"PSTATUS": "down", "PLASTERRTEXT": "no route"}
    assert reports["ib_adt"]["OBDATAQD"] == "4"


def test_process_status_table() -> None:
    text = "Process   Status   PID\n-------   ------   ---\nadt       running  4001\nlab       dead     -\n"
    assert process_status(text) == {"adt": "running", "lab": "dead"}


# -- the fake tools ---------------------------------------------------------------------------------------------


async def test_fake_tools_need_hcisite_and_a_running_process(hci: FakeCloverleaf, bin_dir: Path) -> None:
    runner = LocalRunner()
    code, _, err = await runner.run([str(bin_dir / "hciprocstatus")])
    assert code == 1 and "site does not exist" in err  # HCISITE unset
    code, out, _ = await runner.run(["env", "HCISITE=site1", str(bin_dir / "hciprocstatus")])
    assert code == 0 and process_status(out) == {"adt": "running", "lab": "dead"}
    code, _, err = await runner.run(["env", "HCISITE=site1", str(bin_dir / "hcicmd"), "-p", "lab", "-c",
                                     "ob_lab pstart"])
    assert code == 1 and "not running" in err


# -- the adapter ------------------------------------------------------------------------------------------------


async def test_list_and_status(hci: FakeCloverleaf, bin_dir: Path) -> None:
    adapter = CloverleafAdapter(engine(bin_dir))
    chans = {c.id: c for c in await adapter.list_channels()}
    assert set(chans) == {"adt/ib_adt", "adt/ob_adt", "lab/ob_lab"}
    ib = chans["adt/ib_adt"]
    assert (ib.name, ib.state, ib.raw_state, ib.received, ib.sent, ib.queued) == ("ib_adt", "started", "up", 120,
                                                                                  118, 2)
    assert chans["adt/ob_adt"].state == "stopped"
    assert chans["adt/ob_adt"].detail["PLASTERRTEXT"] == "connection refused by 10.0.0.5:6661"
    lab = chans["lab/ob_lab"]
    assert lab.state == "stopped" and lab.detail["process"] == "dead"
    status = await adapter.channel_status("adt/ib_adt")
    assert status.received == 120
    assert all("HCISITE=site1" in call for call in hci.calls)
    with pytest.raises(EngineNotFound):
        await adapter.channel_status("adt/nope")
    with pytest.raises(EngineNotFound):
        await adapter.channel_status("ib_adt")  # no process given and no default process
    assert (await CloverleafAdapter(engine(bin_dir, process="adt")).channel_status("ib_adt")).id == "adt/ib_adt"


async def test_watch_only_configured_channels(hci: FakeCloverleaf, bin_dir: Path) -> None:
    eng = Engine.model_validate(engine(bin_dir).model_dump() | {"channels": ["adt/ib_adt"]})
    assert [c.id for c in await CloverleafAdapter(eng).list_channels()] == ["adt/ib_adt"]


async def test_stop_start_restart_through_intermediate_states(hci: FakeCloverleaf, bin_dir: Path) -> None:
    adapter = build_adapter(engine(bin_dir))
    assert isinstance(adapter, CloverleafAdapter) and isinstance(adapter, EngineAdapter)
    read = lambda: adapter.channel_status("adt/ib_adt")  # noqa: E731
    assert (await watch_states(read, adapter.stop("adt/ib_adt"), until="down"))[-2:] == ["stopping", "down"]
    assert (await watch_states(read, adapter.start("adt/ib_adt"), until="up"))[-2:] == ["opening", "up"]
    seen = await watch_states(read, adapter.restart("adt/ib_adt"), until="up")
    assert seen[-3:] == ["stopping", "opening", "up"]
    assert any("ib_adt prestart 0" in call for call in hci.calls)
    for op in (adapter.pause, adapter.resume, adapter.halt, adapter.clear_queue):
        with pytest.raises(EngineNotSupported):
            await op("adt/ib_adt")


async def test_faults(hci: FakeCloverleaf, bin_dir: Path) -> None:
    adapter = CloverleafAdapter(engine(bin_dir))
    hci.fault("ib_adt", stuck_stopping=True, queue_growth=10, error_growth=1)
    await adapter.stop("adt/ib_adt")
    first = await wait_state(lambda: adapter.channel_status("adt/ib_adt"), "stopping")
    second = await adapter.channel_status("adt/ib_adt")
    assert second.state == "stopping"
    assert (second.queued - first.queued, second.errors - first.errors) == (10, 1)
    hci.fault("ob_adt", start_error="connect: no route to host")
    await adapter.start("adt/ob_adt")  # pstart only sends the command; the thread then fails
    failed = await wait_state(lambda: adapter.channel_status("adt/ob_adt"), "error")
    assert failed.detail["PLASTERRTEXT"] == "connect: no route to host"
    with pytest.raises(EngineError, match="not running"):
        await adapter.start("lab/ob_lab")


async def test_ssh_runner_quotes_the_remote_command(hci: FakeCloverleaf, bin_dir: Path, tmp_path: Path) -> None:
    # A fake ssh that records its argv and runs the remote command with sh, as sshd would.
    fake_ssh = tmp_path / "ssh"
    log = tmp_path / "ssh.log"
    fake_ssh.write_text(f"#!{sys.executable}\nimport subprocess, sys\n"
                        f"open({str(log)!r}, 'a').write(repr(sys.argv[1:]) + '\\n')\n"
                        "assert sys.argv[1:3] == ['-o', 'BatchMode=yes'] and sys.argv[4] == '--'\n"
                        "sys.exit(subprocess.call(['sh', '-c', sys.argv[5]]))\n")
    fake_ssh.chmod(0o755)
    eng = engine(bin_dir, runner="ssh", host="engine-host", ssh_user="hci")
    adapter = CloverleafAdapter(eng, runner=SshRunner("engine-host", "hci", ssh=str(fake_ssh)))
    status = await adapter.channel_status("adt/ob_adt")
    assert status.detail["PLASTERRTEXT"] == "connection refused by 10.0.0.5:6661"
    argv = log.read_text().splitlines()[0]
    assert "'hci@engine-host', '--'" in argv and "'statusrpt ob_adt'" in argv  # quoted as one remote word
    assert isinstance(CloverleafAdapter(eng).runner, SshRunner)


async def test_runner_errors(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="cannot run"):
        await LocalRunner().run([str(tmp_path / "missing")])
    with pytest.raises(EngineError, match="timed out"):
        await LocalRunner(timeout=0.2).run(["sleep", "5"])
    failing_ssh = tmp_path / "ssh"
    failing_ssh.write_text("#!/bin/sh\necho 'ssh: connect to host x port 22: Connection refused' >&2\nexit 255\n")
    failing_ssh.chmod(0o755)
    with pytest.raises(EngineError, match="Connection refused"):
        await SshRunner("x", ssh=str(failing_ssh)).run(["true"])
    assert os.access(Path(__file__).parents[1] / "emulators" / "cloverleaf" / "hcicmd", os.X_OK)
