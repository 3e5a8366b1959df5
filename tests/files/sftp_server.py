"""A real SFTP server for the tests: asyncssh's SSH server with its SFTPServer, chrooted to a temp directory,
password and/or public-key login, a generated host key and the matching known_hosts file."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh


@dataclass
class SftpServer:
    root: Path
    username: str = "lab"
    password: str | None = "s3cret-pass"
    client_key: asyncssh.SSHKey | None = None  # its public half may log in
    host_key: asyncssh.SSHKey = field(default_factory=lambda: asyncssh.generate_private_key("ssh-ed25519"))
    port: int = 0
    logins: list[str] = field(default_factory=list)
    failed_logins: int = 0
    _server: asyncssh.SSHAcceptor | None = None
    _conns: list[asyncssh.SSHServerConnection] = field(default_factory=list)

    async def start(self) -> int:
        outer = self

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                outer._conns.append(conn)

            def begin_auth(self, username: str) -> bool:
                return True

            def password_auth_supported(self) -> bool:
                return outer.password is not None

            def validate_password(self, username: str, password: str) -> bool:
                ok = username == outer.username and password == outer.password
                outer.logins.append("password") if ok else None
                outer.failed_logins += 0 if ok else 1
                return ok

            def public_key_auth_supported(self) -> bool:
                return outer.client_key is not None

            def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
                assert outer.client_key is not None
                ok = username == outer.username and (key.export_public_key() ==
                                                     outer.client_key.export_public_key())
                outer.logins.append("publickey") if ok else None
                return ok

        self.root.mkdir(parents=True, exist_ok=True)
        self._server = await asyncssh.listen(
            "127.0.0.1", self.port, server_host_keys=[self.host_key], server_factory=Server,
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(self.root).encode()),
            allow_scp=False, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def known_hosts(self, path: Path, key: asyncssh.SSHKey | None = None) -> Path:
        """A known_hosts file trusting this server's host key (or another key, to test a mismatch)."""
        public = (key or self.host_key).export_public_key().decode().strip()
        path.write_text(f"[127.0.0.1]:{self.port} {public}\n")
        return path

    async def stop(self) -> None:
        """Go down hard: stop listening and cut every open connection (a server outage)."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        for conn in self._conns:
            conn.abort()
        self._conns.clear()
