"""Infor Cloverleaf through its command-line tools, run on the engine host (locally or over SSH).

Channels are threads, named `<process>/<thread>`. Status: `hcicmd -p hcimonitord -t d -c "statusrpt [thread]"`
answers a Tcl keyed list (PSTATUS up/down, MSGSIN, MSGSOUT, OBDATAQD, ERRORCNT, PLASTERRTEXT, ...); processes:
`hciprocstatus`; control: `hcicmd -p <process> -c "<thread> pstart|pstop|prestart"`. Every command runs with
HCISITE (and HCIROOT when configured) set through `env`, so the same argv works locally and over SSH.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from typing import Protocol

from activities.engines._common import checked_id, short, watched
from activities.engines.base import EngineChannel, EngineError, EngineNotFound, EngineNotSupported, State
from infra.config import CloverleafOptions, Engine

STATES: dict[str, State] = {
    "up": "started", "down": "stopped", "dead": "stopped", "opening": "starting", "starting": "starting",
    "stopping": "stopping", "error": "error",
}


class CommandRunner(Protocol):
    async def run(self, argv: list[str]) -> tuple[int, str, str]: ...


class LocalRunner:
    """Runs the command on this host."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout

    async def run(self, argv: list[str]) -> tuple[int, str, str]:
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise EngineError(f"cannot run {argv[0]}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise EngineError(f"{shlex.join(argv)[:200]} timed out after {self.timeout:g}s") from exc
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


class SshRunner(LocalRunner):
    """Runs the command on the engine host: `ssh -o BatchMode=yes user@host -- '<quoted argv>'`."""

    def __init__(self, host: str, user: str | None = None, timeout: float = 30.0, ssh: str = "ssh") -> None:
        super().__init__(timeout)
        self.target = f"{user}@{host}" if user else host
        self.ssh = ssh

    async def run(self, argv: list[str]) -> tuple[int, str, str]:
        code, out, err = await super().run([self.ssh, "-o", "BatchMode=yes", self.target, "--", shlex.join(argv)])
        if code == 255:  # ssh's own failure (unreachable host, refused key), not the remote command's
            raise EngineError(f"ssh {self.target} failed: {short(err)}")
        return code, out, err


# -- Tcl lists -----------------------------------------------------------------------------------------------

def tcl_list(text: str) -> list[str]:
    """Split a Tcl list: whitespace-separated words, {braced} (nested, verbatim) or "quoted" with backslashes."""
    words: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return words
        if text[i] == "{":
            depth, j = 1, i + 1
            while j < n and depth:
                if text[j] == "\\":
                    j += 2
                    continue
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            if depth:
                raise ValueError("unbalanced braces in Tcl list")
            words.append(text[i + 1 : j - 1])
            i = j
        else:
            quoted = text[i] == '"'
            j = i + 1 if quoted else i
            word: list[str] = []
            while j < n and (text[j] != '"' if quoted else not text[j].isspace()):
                if text[j] == "\\" and j + 1 < n:
                    word.append({"n": "\n", "t": "\t"}.get(text[j + 1], text[j + 1]))
                    j += 2
                    continue
                word.append(text[j])
                j += 1
            if quoted and j >= n:
                raise ValueError("unterminated quote in Tcl list")
            words.append("".join(word))
            i = j + 1 if quoted else j


def keyed_list(text: str) -> dict[str, str]:
    """A TclX keyed list `{KEY value} {KEY2 {a value}}` → {KEY: value}; values stay strings (nest on demand)."""
    out: dict[str, str] = {}
    for element in tcl_list(text):
        parts = tcl_list(element)
        if not parts:
            continue
        out[parts[0]] = parts[1] if len(parts) == 2 else " ".join(parts[1:])
    return out


def _is_keyed(text: str) -> bool:
    try:
        items = tcl_list(text)
        return bool(items) and all(len(tcl_list(item)) >= 2 for item in items)
    except ValueError:
        return False


def thread_reports(text: str) -> dict[str, dict[str, str]]:
    """statusrpt output → {thread: keyed list}. Accepts one bare report or `{thread {report}}` per thread."""
    top = keyed_list(text)
    if "PSTATUS" in top or "NAME" in top:
        return {top.get("NAME", ""): top}
    return {name: keyed_list(value) for name, value in top.items() if _is_keyed(value)}


def process_status(text: str) -> dict[str, str]:
    """hciprocstatus output → {process: running|dead|...}; header and separator lines are skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        words = line.split()
        for state in ("running", "dead", "stopped", "down", "up"):
            if len(words) >= 2 and state in (w.lower().strip("():,") for w in words[1:3]):
                out[words[0]] = state
                break
    return out


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class CloverleafAdapter:
    kind = "cloverleaf"
    capabilities = frozenset({"start", "stop", "restart"})

    def __init__(self, engine: Engine, runner: CommandRunner | None = None) -> None:
        assert engine.cloverleaf, "a cloverleaf engine needs cloverleaf options"
        self.engine = engine
        self.options: CloverleafOptions = engine.cloverleaf
        timeout = engine.timeout.total_seconds()
        if runner is None:
            if self.options.runner == "ssh":
                if not self.options.host:
                    raise EngineError(f"cloverleaf engine {engine.name}: runner ssh needs host")
                runner = SshRunner(self.options.host, self.options.ssh_user, timeout)
            else:
                runner = LocalRunner(timeout)
        self.runner = runner

    # -- commands ---------------------------------------------------------------------------------------------

    def _argv(self, tool: str, *args: str) -> list[str]:
        env = [f"HCISITE={self.options.site}"]
        if self.options.hci_root:
            env.insert(0, f"HCIROOT={self.options.hci_root}")
        path = os.path.join(self.options.command_dir, tool) if self.options.command_dir else tool
        return ["env", *env, path, *args]

    async def _run(self, tool: str, *args: str) -> str:
        code, out, err = await self.runner.run(self._argv(tool, *args))
        if code != 0:
            text = short(err or out)
            if "unknown thread" in text.lower() or "no such thread" in text.lower():
                raise EngineNotFound(f"cloverleaf {self.engine.name}: {tool} {' '.join(args)}: {text}")
            raise EngineError(f"cloverleaf {self.engine.name}: {tool} exited {code}: {text}")
        return out

    def _split(self, channel_id: str) -> tuple[str, str]:
        process, sep, thread = channel_id.rpartition("/")
        if not sep:
            if not self.options.process:
                raise EngineNotFound(f"cloverleaf {self.engine.name}: {channel_id!r} names no process "
                                     "(use <process>/<thread> or set cloverleaf.process)")
            process = self.options.process
        # The thread name becomes part of an hcicmd command line: nothing but a plain name may get there.
        return checked_id(self.engine, process, "process name"), checked_id(self.engine, thread, "thread name")

    async def processes(self) -> dict[str, str]:
        return process_status(await self._run("hciprocstatus"))

    async def _statusrpt(self, thread: str = "") -> dict[str, dict[str, str]]:
        out = await self._run("hcicmd", "-p", "hcimonitord", "-t", "d", "-c", f"statusrpt {thread}".strip())
        try:
            return thread_reports(out)
        except ValueError as exc:
            raise EngineError(f"cloverleaf {self.engine.name}: unreadable statusrpt output: {exc}") from exc

    def _channel(self, process: str, thread: str, report: dict[str, str], proc_state: str | None) -> EngineChannel:
        raw = report.get("PSTATUS", "unknown")
        state = STATES.get(raw.lower(), "unknown")
        if proc_state and proc_state != "running":
            state, raw = "stopped", f"{raw} (process {proc_state})"
        detail = {k: report[k] for k in ("ALIVE", "PLASTREAD", "PLASTWRITE", "PLASTERROR", "PLASTERRTEXT")
                  if report.get(k)}
        if proc_state:
            detail["process"] = proc_state
        return EngineChannel(
            id=f"{process}/{thread}", name=thread, state=state, raw_state=raw,
            queued=_int(report.get("OBDATAQD")) + _int(report.get("IBDATAQD")),
            received=_int(report.get("MSGSIN")), sent=_int(report.get("MSGSOUT")),
            errors=_int(report.get("ERRORCNT")), detail=detail,
        )

    # -- reads ------------------------------------------------------------------------------------------------

    async def list_channels(self) -> list[EngineChannel]:
        procs = await self.processes()
        reports = await self._statusrpt()
        channels = []
        for thread, report in reports.items():
            process = report.get("PROCESS") or self.options.process or ""
            channels.append(self._channel(process, thread, report, procs.get(process)))
        return watched(self.engine, channels)

    async def channel_status(self, channel_id: str) -> EngineChannel:
        process, thread = self._split(channel_id)
        reports = await self._statusrpt(thread)
        report = reports.get(thread) or (next(iter(reports.values())) if len(reports) == 1 else None)
        if report is None:
            raise EngineNotFound(f"cloverleaf {self.engine.name}: no thread {thread!r}")
        procs = await self.processes()
        return self._channel(process, thread, report, procs.get(process))

    # -- control ----------------------------------------------------------------------------------------------

    async def _thread_command(self, channel_id: str, command: str) -> None:
        process, thread = self._split(channel_id)
        await self._run("hcicmd", "-p", process, "-c", f"{thread} {command}")

    async def start(self, channel_id: str) -> None:
        await self._thread_command(channel_id, "pstart")

    async def stop(self, channel_id: str) -> None:
        await self._thread_command(channel_id, "pstop")

    async def restart(self, channel_id: str, delay: int = 0) -> None:
        """Cloverleaf's `prestart` (documented): stop then start the thread after `delay` seconds."""
        await self._thread_command(channel_id, f"prestart {delay}")

    async def pause(self, channel_id: str) -> None:
        raise EngineNotSupported("Cloverleaf threads have no pause: stop the thread instead")

    async def resume(self, channel_id: str) -> None:
        raise EngineNotSupported("Cloverleaf threads have no pause/resume: start the thread instead")

    async def halt(self, channel_id: str) -> None:
        raise EngineNotSupported("Cloverleaf has no forced halt of one thread (hcienginestop stops a whole process)")

    async def clear_queue(self, channel_id: str) -> int:
        raise EngineNotSupported("Cloverleaf queue purging (hcidbdump/hcirecovery) is not automated by Lifeline")

    async def close(self) -> None:
        return None
