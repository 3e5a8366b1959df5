"""An in-process Lifeline (listener, dispatcher, worker) against the session's real PostgreSQL and Temporal,
plus real third-party peers: python-hl7's asyncio MLLP server downstream."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import hl7
import httpx
from hl7.mllp import start_hl7_server
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowFailureError
from temporalio.worker import Worker

from activities.delivery import DeliveryActivities
from activities.mllp import MllpSender
from infra.config import LifelineConfig, validate_config
from infra.crypto import Cipher
from infra.db import create_pool
from infra.live import ConfigSource
from workers.dispatcher import Dispatcher
from workers.listener import ChannelListener
from workers.worker import build_worker


@dataclass
class Peer:
    """A downstream MLLP system built on python-hl7; answers AA unless told otherwise."""

    received: list[hl7.Message] = field(default_factory=list)
    answer: str = "AA"
    server: asyncio.Server | None = None
    # Per control id (MSH-10) answers that override `answer`; `seen` counts every message read, answered or not.
    answers: dict[str, str] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)

    async def start(self, port: int = 0, ssl: Any = None) -> int:
        async def handle(reader: Any, writer: Any) -> None:
            try:
                while not writer.is_closing():
                    msg = await reader.readmessage()
                    control = str(msg.segment("MSH")[10])
                    self.seen.append(control)
                    code = self.answers.get(control, self.answer)
                    if code == "AA":
                        self.received.append(msg)
                    ack = msg.create_ack(code)
                    if code != "AA":
                        ack = hl7.parse(str(ack) + "\rERR|||207^Application internal error^HL70357|E||||peer says no")
                    writer.writemessage(ack)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await start_hl7_server(handle, "127.0.0.1", port, ssl=ssl)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def control_ids(self) -> list[str]:
        return [str(m.segment("MSH")[10]) for m in self.received]


def config_for(dest_port: int, *, ordering: Any = "none", retry: dict[str, Any] | None = None,
               extra_dests: list[dict[str, Any]] | None = None, routes: list[dict[str, Any]] | None = None,
               on_dead_letter: str = "block", max_in_flight: int = 64) -> LifelineConfig:
    dests = [{"name": "lab", "mllp": {"host": "127.0.0.1", "port": dest_port, "ack_timeout": "5s",
                                      "connect_timeout": "2s"},
              "ordering": ordering, "on_dead_letter": on_dead_letter, "max_in_flight": max_in_flight,
              "retry": retry or {"initial_interval": "200ms", "backoff": 1.5, "maximum_interval": "1s",
                                 "maximum_attempts": 50}}]
    dests += extra_dests or []
    return validate_config({
        "channels": [{"name": "adt-in", "mllp": {"port": 2575}, "routes": routes or [{"to": "lab"}]}],
        "destinations": dests,
    }, "test")


@dataclass
class Engine:
    pool: asyncpg.Pool
    client: Client
    config: LifelineConfig
    store_cipher: Cipher
    task_queue: str
    db_url: str
    listener: ChannelListener | None = None
    worker: Worker | None = None
    dispatcher: Dispatcher | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _http: httpx.AsyncClient | None = None
    _mllp: MllpSender | None = None
    source: ConfigSource | None = None  # live configuration (versions in PostgreSQL); None: `config` as given
    app_pool: asyncpg.Pool | None = None
    handoff: bool = True  # False: finished deliveries wake the dispatcher instead (a dispatcher in its own process)

    @property
    def mllp_port(self) -> int:
        assert self.listener is not None
        return self.listener.port

    async def start(self, *, worker: bool = True) -> Engine:
        # The engine acts as the application role, under row-level security like a real process; the test's
        # own `pool` (a superuser) inspects the tables.
        self.app_pool = await create_pool(self.db_url, min_size=1, max_size=10, role="lifeline_app")
        self.listener = ChannelListener(self.config.channels[0], self.app_pool, self.store_cipher)
        await self.listener.start("127.0.0.1", 0)
        # As `lifeline up` runs it: the dispatcher in the worker's process, starting deliveries eagerly.
        self.dispatcher = Dispatcher(self.app_pool, self.client, self.config, self.store_cipher, self.task_queue,
                                     source=self.source, eager=True)
        self._tasks.append(asyncio.create_task(self.dispatcher.run(self.db_url, 0.5, self._stop)))
        if worker:
            await self.start_worker()
        return self

    async def start_worker(self) -> None:
        self._http = httpx.AsyncClient()
        self._mllp = MllpSender()
        assert self.app_pool is not None
        assert self.dispatcher is not None
        acts = DeliveryActivities(self.app_pool, self.store_cipher, self.config, self._mllp, self._http,
                                  source=self.source, handoff=self.dispatcher.start_next if self.handoff else None)
        self.worker = build_worker(self.client, self.task_queue, acts)
        self._tasks.append(asyncio.create_task(self.worker.run()))

    async def stop_worker(self) -> None:
        """Take the worker down (a worker outage); start_worker() brings a new one up."""
        if self.worker is not None:
            await self.worker.shutdown()
            self.worker = None
        if self._mllp is not None:
            await self._mllp.close()
            self._mllp = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def stop(self) -> None:
        self._stop.set()
        if self.worker is not None:
            await self.worker.shutdown()
        if self.listener is not None:
            await self.listener.close()
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._mllp is not None:
            await self._mllp.close()
        if self._http is not None:
            await self._http.aclose()
        if self.app_pool is not None:
            await self.app_pool.close()


@contextlib.asynccontextmanager
async def running(engine: Engine, **kw: Any) -> AsyncIterator[Engine]:
    await engine.start(**kw)
    try:
        yield engine
    finally:
        await engine.stop()


async def wait_for(predicate: Any, timeout: float = 60.0, interval: float = 0.1) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def adt(control_id: str, mrn: str, *, seq: int = 0, name: str = "DOE^JANE") -> str:
    return "\r".join([
        f"MSH|^~\\&|EPIC|GENHOSP|LAB|LABFAC|20260101120000||ADT^A08^ADT_A01|{control_id}|P|2.5.1",
        "EVN|A08|20260101120000",
        f"PID|1||{mrn}^^^GENHOSP^MR||{name}||19800101|F|||1 MAIN ST^^BOSTON^MA^02118",
        f"PV1|1|I|WARD^{seq}^1",
    ])


async def send_mllp(port: int, texts: list[str]) -> list[str]:
    """Send messages in order over one python-hl7 MLLP connection; return the ACK codes."""
    from hl7.mllp import open_hl7_connection

    codes: list[str] = []
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    try:
        for text in texts:
            writer.writemessage(hl7.parse(text))
            await writer.drain()
            ack = await asyncio.wait_for(reader.readmessage(), 30)
            codes.append(str(ack.segment("MSA")[1]))
    finally:
        writer.close()
    return codes


@dataclass
class HttpHit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


Responder = Callable[[HttpHit, int], tuple[int, dict[str, str], bytes]]


class HttpPeer:
    """A tiny downstream HTTP server (stdlib, in a thread, 127.0.0.1:free port). `respond(hit, n)` answers the
    n-th (0-based) request to hit.path with (status, headers, body); every request is kept in `hits`."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.hits: list[HttpHit] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> int:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hit = HttpHit(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
                with peer._lock:
                    n = sum(1 for h in peer.hits if h.path == hit.path)
                    peer.hits.append(hit)
                status, headers, out = peer.respond(hit, n)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def on(self, path: str) -> list[HttpHit]:
        return [h for h in self.hits if h.path == path]


@contextlib.asynccontextmanager
async def api_client(db_url: str, temporal_address: str, task_queue: str,
                     config: LifelineConfig) -> AsyncIterator[httpx.AsyncClient]:
    """The REST API over the same store and Temporal as the in-process engine."""
    from api.app import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(database_url=db_url, temporal_address=temporal_address, task_queue=task_queue),
                     config)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            yield c


def bearer(*roles: str, org: str = "default") -> dict[str, str]:
    from api.auth import mint_token
    from tests.conftest import TEST_JWT_SECRET

    return {"Authorization": f"Bearer {mint_token(TEST_JWT_SECRET, subject='tester', org=org, roles=roles)}"}


async def closed_workflow(client: Client, workflow_id: str, timeout: float = 20) -> WorkflowExecutionDescription:
    """Wait until a workflow has closed (store rows are written before it closes), then describe it."""
    handle = client.get_workflow_handle(workflow_id)
    with contextlib.suppress(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), timeout)
    return await handle.describe()


class Hl7apyPeer:
    """hl7apy's threaded MLLPServer downstream: one message per connection, closed right after the ACK."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self._lock = threading.Lock()
        self._server: Any = None

    def start(self) -> int:
        from hl7apy.mllp import AbstractHandler, MLLPServer

        peer = self

        class AckHandler(AbstractHandler):  # type: ignore[misc]
            def reply(self) -> str:
                msg = hl7.parse(self.incoming_message)
                with peer._lock:
                    peer.received.append(str(msg.segment("MSH")[10]))
                return "\x0b" + str(msg.create_ack("AA")) + "\x1c\r"

        self._server = MLLPServer("127.0.0.1", 0, {"ADT^A08^ADT_A01": (AckHandler,)})
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(directory: Path) -> Pki:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("Lifeline Test CA")).issuer_name(name("Lifeline Test CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]) -> tuple[x509.Certificate, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server_cert, server_key = leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH,
                                   [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_cert, client_key = leaf("ehr-sender", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return Pki(ca=write_cert(ca_cert, directory / "ca.pem"),
               server_cert=write_cert(server_cert, directory / "server.pem"),
               server_key=write_key(server_key, directory / "server.key"),
               client_cert=write_cert(client_cert, directory / "client.pem"),
               client_key=write_key(client_key, directory / "client.key"))
