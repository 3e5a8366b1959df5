"""Every command of the README's "Send a first message" block, run as written against a `lifeline up` stack.

Only the ports change (the test's stack runs on free ports) and `.venv/bin/` points at this interpreter's venv.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.stack.test_up import Stack, stack  # noqa: F401  (the fixture)

README = Path(__file__).resolve().parents[2] / "README.md"


def quickstart_commands() -> list[str]:
    """The shell commands of the README's quick start, continuation lines joined, comments dropped."""
    text = README.read_text()
    section = text.split("## Send a first message", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the quick start has no sh block"
    commands: list[str] = []
    pending = ""
    for raw in block.group(1).splitlines():
        line = raw.rstrip()
        if not pending and (not line or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.append(pending + line)
        pending = ""
    return commands


def localise(command: str, where: Stack) -> str:
    bindir = str(Path(sys.executable).parent) + "/"
    command = command.replace(".venv/bin/", bindir)
    command = command.replace("localhost:8000", f"localhost:{where.api_port}")
    command = command.replace("localhost:2575", f"localhost:{where.mllp_port}")
    command = command.replace("--port 2575", f"--port {where.mllp_port}")
    if " demo" in command:  # its downstream receiver stands where the configuration's `lab` destination points
        command += f" --port {where.peer_port} --report-every 2"
    return command


def test_readme_quick_start_commands_all_work(stack: Stack) -> None:  # noqa: F811
    commands = quickstart_commands()
    kinds = [c.split()[0] for c in commands]
    assert any("mllp_send --loose --file adt.hl7" in c for c in commands), commands
    assert sum(k == "curl" for k in kinds) == 2 and any(" demo" in c for c in commands), commands
    stack.start()
    steps = [localise(c, stack) for c in commands if " demo" not in c]
    demo = next(localise(c, stack) for c in commands if " demo" in c)

    # One bash runs the steps in order (TOKEN carries over); each step's output lands in its own file.
    script = ["set -e"]
    for i, cmd in enumerate(steps):
        script.append(f"{{ {cmd}\n}} > step{i}.out 2>&1" if not cmd.startswith("TOKEN=") else cmd)
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=stack.root, env=stack.env(), capture_output=True,
                          text=True, timeout=120)
    outputs = {steps[i]: (stack.root / f"step{i}.out").read_text() for i in range(len(steps))
               if (stack.root / f"step{i}.out").exists()}
    assert done.returncode == 0, (done.stderr, outputs)

    by_tool = {cmd.split()[0].rsplit("/", 1)[-1] + (" list" if "api/messages?" in cmd else ""): out
               for cmd, out in outputs.items()}
    posted = json.loads(by_tool["curl"])
    assert posted["ack_code"] == "AA", posted
    assert "AA" in by_tool["lifeline"], by_tool["lifeline"]
    assert "MSA|AA" in by_tool["mllp_send"], by_tool["mllp_send"]
    listed = json.loads(by_tool["curl list"])
    # REST, `lifeline send` and mllp_send sent the same MSH-10: one stored message, the resends ACKed (idempotent)
    assert [m["control_id"] for m in listed["items"]] == ["MSG0001"], listed

    proc = subprocess.Popen(["bash", "-c", f"exec {demo}"], cwd=stack.root, env=stack.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 90
        received = 0
        while time.monotonic() < deadline and received < 5:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            m = re.search(r"downstream received (\d+)", line)
            received = int(m.group(1)) if m else received
        assert received >= 5, "".join(seen)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # The demo's receiver is the `lab` peer, so the first message of the quick start got delivered too.
    token = stack.token
    r = httpx.get(f"http://127.0.0.1:{stack.api_port}/api/messages/{posted['message_id']}", headers=token)
    assert r.status_code == 200
    assert stack.stop(signal.SIGINT) == 0
