"""SFTP client side (asyncssh): log in with a password or a private key from the environment or a file, check the
host key against known_hosts (on by default), and name the host in every error."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path
from typing import Any

import asyncssh

from infra.config import SftpIn, SftpOut

log = logging.getLogger("lifeline.sftp")

SshConfig = SftpIn | SftpOut


class SftpError(Exception):
    """An SFTP failure with a diagnosable class: auth | hostkey | refused | timeout | dns | connection | sftp."""

    def __init__(self, error_class: str, text: str, *, permanent: bool = False) -> None:
        super().__init__(text)
        self.error_class = error_class
        self.text = text
        self.permanent = permanent


def where(cfg: SshConfig) -> str:
    """user@host:port/dir, for logs and errors (no secret)."""
    return f"sftp://{cfg.username}@{cfg.host}:{cfg.port}/{cfg.dir.lstrip('/')}"


def _secret_env(name: str, what: str, cfg: SshConfig) -> str:
    value = os.environ.get(name)
    if not value:
        raise SftpError("auth", f"environment variable {name} ({what} for {cfg.username}@{cfg.host}) is not set",
                        permanent=True)
    return value


def _read(path: Path, what: str, cfg: SshConfig) -> str:
    try:
        return path.read_text().strip("\r\n")
    except OSError as exc:
        raise SftpError("auth", f"cannot read {what} file {path} for {cfg.username}@{cfg.host}: {exc.strerror}",
                        permanent=True) from None


def credentials(cfg: SshConfig) -> dict[str, Any]:
    """asyncssh.connect keyword arguments for the configured login (password and/or private key)."""
    kw: dict[str, Any] = {"username": cfg.username, "agent_path": None, "client_keys": []}
    if cfg.password_env:
        kw["password"] = _secret_env(cfg.password_env, "password", cfg)
    elif cfg.password_file:
        kw["password"] = _read(cfg.password_file, "password", cfg)
    passphrase = _secret_env(cfg.passphrase_env, "key passphrase", cfg) if cfg.passphrase_env else None
    key_text: str | None = None
    if cfg.private_key_env:
        key_text = _secret_env(cfg.private_key_env, "private key", cfg)
    elif cfg.private_key_file:
        key_text = _read(cfg.private_key_file, "private key", cfg)
    if key_text is not None:
        try:
            kw["client_keys"] = [asyncssh.import_private_key(key_text.encode(), passphrase)]
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise SftpError("auth", f"private key for {cfg.username}@{cfg.host} cannot be loaded: {exc}",
                            permanent=True) from None
    return kw


def known_hosts(cfg: SshConfig) -> str | None:
    """The known_hosts file to check the server's host key against; None only when checking is turned off."""
    if not cfg.check_host_key:
        return None
    path = cfg.known_hosts or Path("~/.ssh/known_hosts").expanduser()
    if not path.is_file():
        raise SftpError("hostkey", f"cannot check the host key of {cfg.host}:{cfg.port}: known_hosts file {path}"
                        " does not exist (add the server's key, or set known_hosts:)", permanent=True)
    return str(path)


async def connect(cfg: SshConfig) -> asyncssh.SSHClientConnection:
    """Open an SSH connection; every failure is an SftpError whose text names the host."""
    target = f"{cfg.host}:{cfg.port}"
    kw = credentials(cfg)
    hosts = known_hosts(cfg)
    try:
        return await asyncio.wait_for(
            asyncssh.connect(cfg.host, cfg.port, known_hosts=hosts, **kw),
            cfg.connect_timeout.total_seconds())
    except asyncssh.HostKeyNotVerifiable as exc:
        raise SftpError("hostkey", f"host key of {target} not accepted (checked against {hosts}): {exc.reason}",
                        permanent=True) from None
    except asyncssh.PermissionDenied:
        raise SftpError("auth", f"authentication failed for {cfg.username}@{target}") from None
    except ConnectionRefusedError:
        raise SftpError("refused", f"connection to {target} refused") from None
    except TimeoutError:
        raise SftpError("timeout", f"connection to {target} timed out") from None
    except socket.gaierror as exc:
        raise SftpError("dns", f"cannot resolve {cfg.host}: {exc.strerror}") from None
    except (OSError, asyncssh.Error) as exc:
        raise SftpError("connection", f"connection to {target} failed: {exc}") from None


def classify(exc: BaseException, cfg: SshConfig) -> SftpError:
    """Any error met while talking SFTP, as an SftpError naming the host."""
    if isinstance(exc, SftpError):
        return exc
    target = f"{cfg.host}:{cfg.port}"
    if isinstance(exc, asyncssh.SFTPError):
        return SftpError("sftp", f"SFTP error on {target}: {exc.reason}")
    if isinstance(exc, TimeoutError):
        return SftpError("timeout", f"SFTP operation on {target} timed out")
    return SftpError("connection", f"connection to {target} lost: {type(exc).__name__}: {exc}")


class SftpSession:
    """One SSH connection with its SFTP channel, opened on first use and again after a failure."""

    def __init__(self, cfg: SshConfig) -> None:
        self.cfg = cfg
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> asyncssh.SFTPClient:
        async with self._lock:
            if self._sftp is None:
                conn = await connect(self.cfg)
                try:
                    self._sftp = await conn.start_sftp_client()
                except (OSError, asyncssh.Error) as exc:
                    conn.close()
                    raise classify(exc, self.cfg) from None
                self._conn = conn
            return self._sftp

    async def reset(self) -> None:
        """Drop the connection (after a failure, or to reconnect on request)."""
        async with self._lock:
            if self._sftp is not None:
                self._sftp.exit()
            if self._conn is not None:
                self._conn.close()
            self._conn, self._sftp = None, None

    async def close(self) -> None:
        await self.reset()


def remote_join(*parts: str) -> str:
    out = parts[0].rstrip("/") or "/"
    for p in parts[1:]:
        out = p if p.startswith("/") else (out.rstrip("/") + "/" + p if out else p)
    return out


async def makedirs(sftp: asyncssh.SFTPClient, path: str) -> None:
    if not await sftp.exists(path):
        await sftp.makedirs(path, exist_ok=True)


async def atomic_put(sftp: asyncssh.SFTPClient, directory: str, name: str, chunks: list[bytes]) -> None:
    """Write to a hidden temporary name, then rename over the final one: a reader never sees half a file."""
    temp = remote_join(directory, f".{name}.part")
    final = remote_join(directory, name)
    async with sftp.open(temp, "wb") as f:
        for chunk in chunks:
            await f.write(chunk)
    try:
        await sftp.posix_rename(temp, final)
    except asyncssh.SFTPOpUnsupported:
        if await sftp.exists(final):
            await sftp.remove(final)
        await sftp.rename(temp, final)
