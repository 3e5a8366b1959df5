"""`lifeline up`: the whole embedded stack from one command; clean stop leaves no process; data survives."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from infra.devstack import free_port

MSG = "MSH|^~\\&|EPIC|HOSP|LAB|LABF|20260101||ADT^A01|UPTEST1|P|2.5.1\rPID|1||123^^^H^MR||DOE^J\r"


class Stack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.api_port, self.temporal_port, self.ui_port = free_port(), free_port(), free_port()
        self.pg_port, self.mllp_port, self.peer_port = free_port(), free_port(), free_port()
        (root / "lifeline.yaml").write_text(
            f"channels:\n  - name: adt-in\n    mllp: {{port: {self.mllp_port}, host: 127.0.0.1}}\n"
            f"    routes: [{{to: lab}}]\n"
            f"destinations:\n  - name: lab\n    mllp: {{host: 127.0.0.1, port: {self.peer_port}}}\n")
        self.proc: subprocess.Popen[str] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
        env.update({"LIFELINE_API_PORT": str(self.api_port), "LIFELINE_EMBEDDED_PG_PORT": str(self.pg_port),
                    "LIFELINE_PUBLIC_URL": f"http://localhost:{self.api_port}",
                    "LIFELINE_TEMPORAL_UI_URL": f"http://localhost:{self.ui_port}"})
        return env

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "workers.cli", "up", "--temporal-port", str(self.temporal_port),
                "--ui-port", str(self.ui_port)]

    def start(self, timeout: float = 90) -> None:
        self.proc = subprocess.Popen(self.argv(), cwd=self.root, env=self.env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            seen.append(line)
            if line.startswith("Lifeline is up."):
                return
        raise AssertionError("lifeline up did not come up:\n" + "".join(seen))

    @property
    def token(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + (self.root / ".lifeline" / "dev-token").read_text().strip()}

    def descendants(self) -> list[psutil.Process]:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).children(recursive=True)

    def stop(self, sig: int = signal.SIGINT) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(60)
        return code


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    yield s
    if s.proc is not None and s.proc.poll() is None:
        for p in s.descendants():
            p.kill()
        s.proc.kill()


def test_up_serves_everything_stops_clean_and_keeps_data(stack: Stack) -> None:
    stack.start()
    api = f"http://127.0.0.1:{stack.api_port}"
    assert httpx.get(f"{api}/readyz", headers=stack.token).json()["status"] == "ready"
    assert httpx.get(f"http://127.0.0.1:{stack.ui_port}/").status_code == 200
    with socket.create_connection(("127.0.0.1", stack.mllp_port), timeout=5):
        pass
    r = httpx.post(f"{api}/api/channels/adt-in/messages", content=MSG,
                   headers={**stack.token, "Content-Type": "text/plain"})
    assert r.status_code == 202 and r.json()["ack_code"] == "AA", r.text
    message_id = r.json()["message_id"]
    children = stack.descendants()
    names = " ".join(" ".join(p.cmdline()) for p in children)
    for part in ("temporal", "postgres", "worker", "dispatcher", "listener", " api"):
        assert part in names, f"{part} is not running under lifeline up"
    assert stack.stop(signal.SIGINT) == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left behind: {[p.pid for p in alive]}"

    stack.start()  # the second run finds the earlier data
    r = httpx.get(f"{api}/api/messages/{message_id}", headers=stack.token)
    assert r.status_code == 200 and r.json()["control_id"] == "UPTEST1"
    children = stack.descendants()
    assert stack.stop(signal.SIGTERM) == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


def test_killed_supervisor_takes_its_children_along(stack: Stack) -> None:
    stack.start()
    children = stack.descendants()
    stack.stop(signal.SIGKILL)
    gone, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"orphans after kill -9: {[(p.pid, p.name()) for p in alive]}"


def test_port_in_use_is_one_clear_line(stack: Stack) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", stack.api_port))
        busy.listen()
        result = subprocess.run(stack.argv(), cwd=stack.root, env=stack.env(), capture_output=True, text=True,
                                timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == [f"lifeline: port {stack.api_port} (Lifeline API) is already in use: "
                     "stop whatever listens there or change the port"], result.stderr
    assert not (stack.root / ".lifeline" / "pg").exists()  # nothing was started


def test_bad_config_is_one_clear_line(stack: Stack) -> None:
    (stack.root / "lifeline.yaml").write_text("channels:\n  - name: adt-in\n    mllp: {port: 99999}\n")
    result = subprocess.run(stack.argv(), cwd=stack.root, env=stack.env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lifeline: configuration error: lifeline.yaml: channels[0].mllp.port: "
        "Input should be less than or equal to 65535"]
