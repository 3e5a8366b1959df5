"""Fake Cloverleaf command-line tools (`hcicmd`, `hciprocstatus`) keeping site state in a JSON file.

The file is named by $FAKE_HCI_STATE; commands check $HCISITE against the file's site as the real tools need it
set. Stdlib only, so the executables also run under a bare python3 (e.g. through the fake ssh in tests).

- `hcicmd -p hcimonitord -t d -c "statusrpt [thread]"`: a Tcl keyed list per thread (one thread: the bare keyed
  list with NAME; none: `{thread {keyed list}} ...`). Keys: NAME PROCESS PSTATUS ALIVE MSGSIN MSGSOUT IBDATAQD
  OBDATAQD ERRORCNT PLASTREAD PLASTWRITE PLASTERROR PLASTERRTEXT.
- `hcicmd -p <process> -c "<thread>[,<thread>] pstart|pstop|prestart [delay]"`: PSTATUS opening → up, stopping →
  down, each step `delay` seconds (state file); fails with exit 1 when the process is not running.
- `hciprocstatus [-p process]`: a table with running/dead per process.
PSTATUS "stopping" and the exact output layouts are this emulator's choice (the docs do not show them).

Fault switches per thread (`FakeCloverleaf.fault(thread, ...)`): stuck_stopping, start_error (thread goes
opening → error with PLASTERRTEXT), queue_growth / error_growth (added to OBDATAQD / ERRORCNT per statusrpt read).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATE_ENV = "FAKE_HCI_STATE"
HERE = Path(__file__).resolve().parent


def _tcl(value: object) -> str:
    text = str(value)
    if text == "" or any(c.isspace() or c in '{}"\\;$[]' for c in text):
        return "{" + text.replace("{", "\\{").replace("}", "\\}") + "}"
    return text


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[dict[str, Any]]:
    with open(str(path) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(path.read_text())
        yield state
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(path)


def _settle(thread: dict[str, Any], now: float) -> None:
    steps = thread.get("pending") or []
    while steps and now >= steps[0][1]:
        thread["status"] = steps.pop(0)[0]
        if thread["status"] == "error":
            thread["errorcnt"] += 1
            thread["plasterror"] = int(now)
    thread["pending"] = steps


class FakeCloverleaf:
    """Test-side handle: creates the state file, sets faults, reads state and the command log."""

    def __init__(self, path: Path, site: str = "site1", delay: float = 0.2) -> None:
        self.path = path
        self.site = site
        path.write_text(json.dumps({"site": site, "delay": delay, "processes": {}, "threads": {}, "calls": []}))

    @property
    def env(self) -> dict[str, str]:
        return {STATE_ENV: str(self.path)}

    def add_process(self, name: str, threads: dict[str, dict[str, Any]], running: bool = True) -> None:
        with _locked(self.path) as state:
            state["processes"][name] = {"running": running, "pid": 4000 + len(state["processes"])}
            for thread, values in threads.items():
                state["threads"][thread] = {
                    "process": name, "status": "up", "pending": [], "msgsin": 0, "msgsout": 0, "ibdataqd": 0,
                    "obdataqd": 0, "errorcnt": 0, "plastread": 0, "plastwrite": 0, "plasterror": 0,
                    "plasterrtext": "", "stuck_stopping": False, "start_error": None, "queue_growth": 0,
                    "error_growth": 0,
                } | values

    def fault(self, thread: str, **values: Any) -> None:
        with _locked(self.path) as state:
            state["threads"][thread].update(values)

    def set_process(self, name: str, running: bool) -> None:
        with _locked(self.path) as state:
            state["processes"][name]["running"] = running

    def thread(self, name: str) -> dict[str, Any]:
        with _locked(self.path) as state:
            _settle(state["threads"][name], time.time())
            return dict(state["threads"][name])

    @property
    def calls(self) -> list[list[str]]:
        return list(json.loads(self.path.read_text())["calls"])


def install(bin_dir: Path, python: str = sys.executable) -> Path:
    """Write `hcicmd` and `hciprocstatus` into bin_dir with a shebang of this interpreter; returns bin_dir."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("hcicmd", "hciprocstatus"):
        script = bin_dir / tool
        script.write_text(f"#!{python}\nimport sys\nsys.path.insert(0, {str(HERE)!r})\nfrom hci import main\n"
                          f"sys.exit(main({tool!r}, sys.argv[1:]))\n")
        script.chmod(0o755)
    return bin_dir


def _options(args: list[str]) -> dict[str, str]:
    opts: dict[str, str] = {}
    i = 0
    while i < len(args):
        if args[i].startswith("-") and i + 1 < len(args):
            opts[args[i]] = args[i + 1]
            i += 2
        else:
            i += 1
    return opts


def _report(name: str, t: dict[str, Any], process_running: bool) -> str:
    status = t["status"] if process_running else "down"
    pairs = [("NAME", name), ("PROCESS", t["process"]), ("PSTATUS", status), ("ALIVE", int(status == "up")),
             ("MSGSIN", t["msgsin"]), ("MSGSOUT", t["msgsout"]), ("IBDATAQD", t["ibdataqd"]),
             ("OBDATAQD", t["obdataqd"]), ("ERRORCNT", t["errorcnt"]), ("PLASTREAD", t["plastread"]),
             ("PLASTWRITE", t["plastwrite"]), ("PLASTERROR", t["plasterror"]), ("PLASTERRTEXT", t["plasterrtext"])]
    return " ".join("{" + f"{k} {_tcl(v)}" + "}" for k, v in pairs)


def _hcicmd(state: dict[str, Any], args: list[str], now: float) -> tuple[int, str, str]:
    opts = _options(args)
    process, command = opts.get("-p", ""), opts.get("-c", "")
    if not process or not command:
        return 1, "", "usage: hcicmd -p <process> [-t <type>] -c <command>\n"
    words = command.split()
    if process == "hcimonitord":
        if not words or words[0] != "statusrpt":
            return 1, "", f"hcicmd: unknown monitor command '{command}'\n"
        names = words[1:] or list(state["threads"])
        reports = []
        for name in names:
            t = state["threads"].get(name)
            if t is None:
                return 1, "", f"hcicmd: unknown thread '{name}'\n"
            _settle(t, now)
            t["obdataqd"] += t["queue_growth"]
            t["errorcnt"] += t["error_growth"]
            running = state["processes"][t["process"]]["running"]
            reports.append((name, _report(name, t, running)))
        if words[1:] and len(reports) == 1:
            return 0, reports[0][1] + "\n", ""
        return 0, " ".join("{" + f"{n} {{{r}}}" + "}" for n, r in reports) + "\n", ""
    proc = state["processes"].get(process)
    if proc is None:
        return 1, "", f"hcicmd: no such process '{process}' in site {state['site']}\n"
    if not proc["running"]:
        return 1, "", f"hcicmd: process '{process}' is not running (cannot connect to its command port)\n"
    if words and words[0] == ".":
        return 0, f"{command}: ok\n", ""
    if len(words) < 2 or words[1] not in ("pstart", "pstop", "prestart"):
        return 1, "", f"hcicmd: unknown command '{command}'\n"
    verb, delay = words[1], state["delay"]
    for name in words[0].split(","):
        t = state["threads"].get(name)
        if t is None or t["process"] != process:
            return 1, "", f"hcicmd: unknown thread '{name}' in process '{process}'\n"
        _settle(t, now)
        start = [["error", now + 2 * delay]] if t["start_error"] else [["up", now + 2 * delay]]
        if verb == "pstart" and t["status"] not in ("up", "opening"):
            t["status"], t["pending"] = "opening", start
            if t["start_error"]:
                t["plasterrtext"] = t["start_error"]
        elif verb == "prestart" and t["status"] in ("down", "error"):
            t["status"], t["pending"] = "opening", start
        elif verb in ("pstop", "prestart") and t["status"] not in ("down", "stopping"):
            t["status"] = "stopping"
            if t["stuck_stopping"]:
                t["pending"] = []
            elif verb == "pstop":
                t["pending"] = [["down", now + delay]]
            else:
                t["pending"] = [["opening", now + delay], *start]
    return 0, f"{command}: command sent\n", ""


def _hciprocstatus(state: dict[str, Any], args: list[str]) -> tuple[int, str, str]:
    only = _options(args).get("-p")
    if only and only not in state["processes"]:
        return 1, "", f"hciprocstatus: no such process '{only}'\n"
    lines = ["Process              Status     PID", "-------------------- ---------- -----"]
    for name, proc in state["processes"].items():
        if not only or name == only:
            status = "running" if proc["running"] else "dead"
            lines.append(f"{name:<20} {status:<10} {proc['pid'] if proc['running'] else '-'}")
    return 0, "\n".join(lines) + "\n", ""


def main(tool: str, args: list[str]) -> int:
    path = os.environ.get(STATE_ENV)
    if not path:
        sys.stderr.write(f"{tool}: ${STATE_ENV} is not set\n")
        return 2
    with _locked(Path(path)) as state:
        state["calls"].append([tool, *args, f"HCISITE={os.environ.get('HCISITE', '')}"])
        site = os.environ.get("HCISITE")
        if site != state["site"]:
            code, out, err = 1, "", f"{tool}: HCISITE is {shlex.quote(site or '')}, site does not exist here\n"
        elif tool == "hcicmd":
            code, out, err = _hcicmd(state, args, time.time())
        else:
            code, out, err = _hciprocstatus(state, args)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code
