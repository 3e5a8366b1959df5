"""Operator tools of the `lifeline` command beyond the processes (send, demo)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import ssl
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from interop.ack import build_ack, build_nak_for_unparseable, parse_ack
from interop.errors import FramingError, HL7ParseError, InteropError
from interop.generate import MessageSpec, Observation, Order, Patient, Visit, generate
from interop.message import normalize, parse
from interop.mllp import SB, FrameDecoder, read_frame, write_frame

Command = tuple[Callable[[argparse.Namespace], int], str, Callable[[argparse.ArgumentParser], None]]
COMMANDS: dict[str, Command] = {}

_ENVELOPE = frozenset({"FHS", "BHS", "BTS", "FTS"})


class ConnectionFailed(Exception):
    """The peer cannot be reached or dropped the connection; the text is the one line shown to the user."""


def host_port(value: str) -> tuple[str, int]:
    """``host:port`` / ``[::1]:port`` for argparse."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not host:port")
    return host, int(port)


# -- reading message files ---------------------------------------------------------------------------
def split_messages(text: str) -> list[str]:
    """Messages of a text: one per MSH, batch envelopes (FHS/BHS/BTS/FTS) dropped, blank lines ignored."""
    messages: list[list[str]] = []
    for line in normalize(text).split("\r"):
        if not line.strip() or line[:3] in _ENVELOPE:
            continue
        if line.startswith("MSH") or not messages:
            messages.append([])
        messages[-1].append(line)
    return ["\r".join(m) for m in messages]


def read_messages(data: bytes) -> tuple[list[str], str]:
    """Messages in a file's bytes (MLLP frames, a batch, or messages one after another) and the encoding."""
    try:
        data.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        encoding = "latin-1"  # byte-transparent: what is read is sent unchanged
    chunks = FrameDecoder(max_frame_size=max(len(data), 1)).feed(data) if bytes([SB]) in data else [data]
    return [m for chunk in chunks for m in split_messages(chunk.decode(encoding))], encoding


# -- sending over MLLP --------------------------------------------------------------------------------
@dataclass
class SendOutcome:
    """What the peer answered to one message."""

    control_id: str
    code: str = ""  # MSA-1, '' when there was no usable ACK
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.code in ("AA", "CA")

    def line(self) -> str:
        text = f"{self.control_id or '(no MSH-10)'}  {self.code or '--'}"
        return text + (f"  {'; '.join(self.errors)}" if self.errors else "")


def _control_id(message: str) -> str:
    try:
        return parse(message).control_id
    except InteropError:
        return ""


class MllpClient:
    """One MLLP connection that reconnects when the peer closed it, sending a message and reading its ACK."""

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None = None, timeout: float = 30.0,
                 encoding: str = "utf-8") -> None:
        self.host, self.port, self.tls, self.timeout, self.encoding = host, port, tls, timeout, encoding
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = FrameDecoder()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def connect(self) -> None:
        await self.close()
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.tls), self.timeout)
        except TimeoutError:
            raise ConnectionFailed(f"cannot connect to {self.address}: no answer within {self.timeout:g}s") from None
        except ssl.SSLError as exc:
            raise ConnectionFailed(f"cannot connect to {self.address}: TLS failed: {exc.reason or exc}") from None
        except ConnectionRefusedError:
            raise ConnectionFailed(f"cannot connect to {self.address}: connection refused") from None
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect to {self.address}: {exc.strerror or exc}") from None
        self._decoder = FrameDecoder()

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def send(self, message: str) -> SendOutcome:
        """Send one message and read its ACK; raise :class:`ConnectionFailed` when the link fails."""
        outcome = SendOutcome(_control_id(message))
        try:
            payload = message.encode(self.encoding)
        except UnicodeEncodeError as exc:
            outcome.errors.append(f"cannot encode the message as {self.encoding}: {exc.reason}")
            return outcome
        if self._writer is None or self._reader is None or self._reader.at_eof():
            await self.connect()
        assert self._reader is not None and self._writer is not None
        try:
            await write_frame(self._writer, payload)
            frame = await asyncio.wait_for(read_frame(self._reader, self._decoder), self.timeout)
        except FramingError as exc:
            outcome.errors.append(str(exc))
            return outcome
        except TimeoutError:
            # A late ACK would answer the next message: start that one on a fresh connection.
            await self.close()
            outcome.errors.append(f"no ACK within {self.timeout:g}s")
            return outcome
        except (OSError, ssl.SSLError) as exc:
            await self.close()
            raise ConnectionFailed(f"connection to {self.address} failed: {exc.strerror or exc}") from None
        if frame is None:
            await self.close()
            raise ConnectionFailed(f"{self.address} closed the connection without acknowledging "
                                   f"{outcome.control_id or 'the message'}")
        try:
            ack = parse_ack(frame.decode(self.encoding, errors="replace"))
        except HL7ParseError as exc:
            outcome.errors.append(f"unreadable ACK: {exc.reason}")
            return outcome
        outcome.code = ack.code
        outcome.errors.extend(ack.error_texts)
        if outcome.control_id and ack.control_id != outcome.control_id:
            outcome.errors.append(f"ACK is for control id {ack.control_id!r}")
            outcome.code = outcome.code if not outcome.ok else "??"
        return outcome


def tls_context(enabled: bool, ca: Path | None) -> ssl.SSLContext | None:
    if not enabled and ca is None:
        return None
    return ssl.create_default_context(cafile=str(ca) if ca else None)


async def send_all(messages: Iterable[tuple[str, str]], host: str, port: int, *, tls: ssl.SSLContext | None,
                   timeout: float, out: TextIO) -> list[SendOutcome]:
    """Send (message, encoding) pairs in order, printing one line per message as its ACK arrives."""
    outcomes: list[SendOutcome] = []
    client: MllpClient | None = None
    try:
        for message, encoding in messages:
            if client is None or client.encoding != encoding:
                if client is not None:
                    await client.close()
                client = MllpClient(host, port, tls=tls, timeout=timeout, encoding=encoding)
            outcome = await client.send(message)
            outcomes.append(outcome)
            print(outcome.line(), file=out, flush=True)
    finally:
        if client is not None:
            await client.close()
    return outcomes


def cmd_send(args: argparse.Namespace) -> int:
    batches: list[tuple[str, str]] = []
    for path in args.files:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            print(f"lifeline send: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        found, encoding = read_messages(data)
        if not found:
            print(f"lifeline send: {path}: no HL7 message found", file=sys.stderr)
            return 2
        batches += [(m, encoding) for m in found]
    host, port = args.to
    try:
        outcomes = asyncio.run(send_all(batches, host, port, tls=tls_context(args.tls, args.ca),
                                        timeout=args.timeout, out=sys.stdout))
    except ConnectionFailed as exc:
        print(f"lifeline send: {exc}", file=sys.stderr)
        return 2
    failed = sum(1 for o in outcomes if not o.ok)
    print(f"lifeline send: {len(outcomes)} sent, {len(outcomes) - failed} accepted, {failed} not accepted",
          file=sys.stderr)
    return 1 if failed else 0


def _configure_send(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="files of HL7 messages: one after another, MLLP frames or an FHS/BHS batch")
    p.add_argument("--to", required=True, type=host_port, metavar="HOST:PORT", help="the MLLP listener")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system trust store)")
    p.add_argument("--ca", type=Path, help="CA certificate to trust for --tls (implies --tls)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each ACK (default 30)")


COMMANDS["send"] = (cmd_send, "send HL7 files over MLLP and print each message's ACK", _configure_send)


# -- demo: a downstream receiver and a realistic stream -----------------------------------------------
_FAMILIES = ["GARCIA", "SMITH", "NGUYEN", "JOHNSON", "OKAFOR", "MULLER", "ROSSI", "TANAKA", "COHEN", "SILVA",
             "KOWALSKI", "OBRIEN", "DUBOIS", "HANSEN", "PATEL", "KIM", "ADEYEMI", "LARSEN", "MORENO", "WEBER"]
_GIVEN = {"F": ["ANNA", "MARIA", "LINH", "CHLOE", "AMARA", "SOFIA", "GRACE", "ELENA", "MEI", "RUTH"],
          "M": ["JAMES", "ARJUN", "LUCA", "OMAR", "KENJI", "DAVID", "TOMAS", "SAMUEL", "NOAH", "FELIX"]}
_CITIES = [("SPRINGFIELD", "IL", "62704"), ("BOSTON", "MA", "02118"), ("AUSTIN", "TX", "78701"),
           ("PORTLAND", "OR", "97205"), ("MADISON", "WI", "53703")]
_WARDS = ["4WEST", "5EAST", "ICU", "ER", "MATERNITY", "ONC"]
_DOCTORS = [("1234", "WELBY", "MARCUS"), ("5566", "CHEN", "ANNA"), ("7781", "HOUSE", "GREGORY"),
            ("9012", "GREY", "MEREDITH")]
# (LOINC code, text, units, low, high, decimals)
_LABS = [("2345-7", "Glucose", "mg/dL", 70, 99, 0), ("2951-2", "Sodium", "mmol/L", 136, 145, 0),
         ("2823-3", "Potassium", "mmol/L", 3.5, 5.1, 1), ("718-7", "Hemoglobin", "g/dL", 12.0, 17.5, 1),
         ("2160-0", "Creatinine", "mg/dL", 0.6, 1.3, 2), ("6690-2", "Leukocytes", "10*3/uL", 4.5, 11.0, 1)]
_ORDERABLES = [("24323-8", "Comprehensive metabolic panel"), ("58410-2", "CBC panel"),
               ("30746-2", "Chest X-ray 2 views"), ("24558-9", "CT head without contrast")]
# Type mix of a typical hospital feed: many updates and results, fewer admissions and orders.
DEMO_MIX: list[tuple[str, int]] = [("ADT^A08", 25), ("ORU^R01", 30), ("ADT^A01", 15), ("ADT^A04", 10),
                                   ("ADT^A03", 10), ("ORM^O01", 10)]


def demo_patients(n: int = 50, rng: random.Random | None = None) -> list[Patient]:
    """Synthetic patients (MRN DEMO100000...); one in ten has an MRN ending in 7."""
    rng = rng or random.Random(7)
    patients = []
    for i in range(n):
        sex = rng.choice("FM")
        city, state, postal = rng.choice(_CITIES)
        birth = datetime(1935, 1, 1) + timedelta(days=rng.randrange(0, 365 * 85))
        patients.append(Patient(
            id=f"DEMO{100000 + i}", family=rng.choice(_FAMILIES), given=rng.choice(_GIVEN[sex]),
            id_authority="DEMOHOSP", birth_date=birth.strftime("%Y-%m-%d"), sex=sex,
            street=f"{rng.randrange(1, 999)} {rng.choice(['MAPLE', 'OAK', 'ELM', 'PINE'])} ST",
            city=city, state=state, postal_code=postal, country="USA",
            phone=f"555{rng.randrange(1000000, 9999999)}", account_number=f"ACC{900000 + i}"))
    return patients


class DemoStream:
    """An endless, realistic mix of generated ADT / ORU / ORM messages about a fixed set of patients."""

    def __init__(self, patients: int = 50, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.patients = demo_patients(patients, random.Random(seed))
        self.seq = 0
        self._types = [t for t, _ in DEMO_MIX]
        self._weights = [w for _, w in DEMO_MIX]

    def next(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        self.seq += 1
        rng = self.rng
        mtype = rng.choices(self._types, self._weights)[0]
        patient = rng.choice(self.patients)
        doc = rng.choice(_DOCTORS)
        visit = Visit(patient_class="E" if mtype == "ADT^A04" else rng.choice("IIO"),
                      location=f"{rng.choice(_WARDS)}^{rng.randrange(100, 499)}^{rng.choice('AB')}^DEMOHOSP",
                      attending_id=doc[0], attending_family=doc[1], attending_given=doc[2],
                      visit_number=f"V{patient.id[4:]}{now:%m%d}",
                      admit_time=(now - timedelta(hours=rng.randrange(1, 96))).strftime("%Y%m%d%H%M"),
                      discharge_time=now.strftime("%Y%m%d%H%M") if mtype == "ADT^A03" else "")
        orders: list[Order] = []
        if mtype == "ORU^R01":
            observations = []
            for code, text, units, low, high, decimals in rng.sample(_LABS, rng.randrange(1, 4)):
                value = rng.uniform(low * 0.8, high * 1.2)
                flag = "H" if value > high else "L" if value < low else "N"
                observations.append(Observation(code=code, text=text, value=f"{value:.{decimals}f}", units=units,
                                                reference_range=f"{low}-{high}", abnormal_flag=flag))
            orders.append(Order(placer_id=f"P{self.seq:07d}", filler_id=f"F{self.seq:07d}",
                                service_code="24323-8", service_text="Comprehensive metabolic panel",
                                observations=observations))
        elif mtype == "ORM^O01":
            code, text = rng.choice(_ORDERABLES)
            orders.append(Order(placer_id=f"P{self.seq:07d}", service_code=code, service_text=text))
        spec = MessageSpec(message_type=mtype, patient=patient, sending_application="DEMO-EHR",
                           sending_facility="DEMOHOSP", receiving_application="LIFELINE", receiving_facility="HUB",
                           control_id=f"DEMO{now:%H%M%S}{self.seq:06d}", visit=visit, orders=orders)
        return generate(spec, now=now)


class DemoReceiver:
    """A downstream MLLP system: answers AA and counts per type; the first delivery of a message whose
    PID-3.1 ends in 7 gets AE, so the engine's retries show."""

    def __init__(self) -> None:
        self.by_type: Counter[str] = Counter()
        self.errors_given = 0
        self._failed_once: set[str] = set()
        self.server: asyncio.Server | None = None

    @property
    def received(self) -> int:
        return sum(self.by_type.values())

    async def start(self, host: str = "127.0.0.1", port: int = 2600) -> int:
        self.server = await asyncio.start_server(self._handle, host, port)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def answer(self, frame: bytes) -> str:
        text = frame.decode("utf-8", errors="replace")
        try:
            msg = parse(text)
        except HL7ParseError as exc:
            return build_nak_for_unparseable(text, exc)
        key = f"{msg.sending_application}|{msg.control_id}"
        if msg.get("PID-3.1").endswith("7") and key not in self._failed_once:
            self._failed_once.add(key)
            self.errors_given += 1
            return build_ack(msg, code="AE", text="demo receiver: simulated outage, a retry will succeed")
        self.by_type[msg.message_type] += 1
        return build_ack(msg, code="AA")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        try:
            while (frame := await read_frame(reader, decoder)) is not None:
                await write_frame(writer, self.answer(frame))
        except (OSError, FramingError):
            pass
        finally:
            writer.close()


@dataclass
class DemoStats:
    sent: int = 0
    acks: Counter[str] = field(default_factory=Counter)
    connection_errors: int = 0

    def line(self, receiver: DemoReceiver, elapsed: float) -> str:
        acks = " ".join(f"{k} {v}" for k, v in sorted(self.acks.items())) or "none"
        types = ", ".join(f"{k} {v}" for k, v in sorted(receiver.by_type.items())) or "nothing yet"
        return (f"demo {elapsed:6.0f}s: sent {self.sent} (acks: {acks}"
                + (f", connection errors {self.connection_errors}" if self.connection_errors else "")
                + f") | downstream received {receiver.received}: {types}; AE given {receiver.errors_given}")


async def run_demo(target: tuple[str, int], receiver: DemoReceiver, stats: DemoStats, *, rate: float,
                   count: int, report_every: float = 10.0, drain: float = 10.0, out: TextIO | None = None,
                   stream: DemoStream | None = None, stop: asyncio.Event | None = None) -> None:
    """Send ``count`` messages (0: until cancelled or ``stop`` is set) at ``rate`` per second to the channel at
    ``target``."""
    out = out or sys.stdout
    stream = stream or DemoStream()
    client = MllpClient(*target, timeout=30.0)
    loop = asyncio.get_running_loop()
    start = last_report = loop.time()
    next_at = start
    stop = stop or asyncio.Event()
    try:
        while (count == 0 or stats.sent < count) and not stop.is_set():
            now = loop.time()
            if now - last_report >= report_every:
                print(stats.line(receiver, now - start), file=out, flush=True)
                last_report = now
            if next_at > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), next_at - now)
                if stop.is_set():
                    break
            next_at = max(next_at + 1.0 / rate, loop.time() - 1.0)  # no burst after a stall
            try:
                outcome = await client.send(stream.next())
            except ConnectionFailed as exc:
                stats.connection_errors += 1
                if stats.connection_errors == 1 or stats.connection_errors % 10 == 0:
                    print(f"demo: {exc}; retrying", file=out, flush=True)
                await asyncio.sleep(1.0)
                continue
            stats.sent += 1
            stats.acks[outcome.code or "no-ack"] += 1
        # Give the engine time to deliver what was accepted before the final summary.
        deadline = loop.time() + (0.0 if stop.is_set() else drain)
        while receiver.received < stats.acks["AA"] + stats.acks["CA"] and loop.time() < deadline:
            await asyncio.sleep(0.2)
    finally:
        await client.close()
        print(stats.line(receiver, loop.time() - start), file=out, flush=True)


def _channel_target(args: argparse.Namespace) -> tuple[str, int]:
    if args.to:
        target: tuple[str, int] = args.to
        return target
    from workers.cli import _config, _settings

    config = _config(_settings(args))
    channels = [c for c in config.channels if c.mllp is not None and (not args.channel or c.name == args.channel)]
    if not channels or channels[0].mllp is None:
        which = f"channel {args.channel!r}" if args.channel else "channel"
        raise ConnectionFailed(f"the configuration has no {which} with an mllp listener (or use --to HOST:PORT)")
    host = channels[0].mllp.host
    return ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host), channels[0].mllp.port


def cmd_demo(args: argparse.Namespace) -> int:
    if args.rate <= 0:
        print("lifeline demo: --rate must be positive", file=sys.stderr)
        return 2
    try:
        target = _channel_target(args)
    except ConnectionFailed as exc:
        print(f"lifeline demo: {exc}", file=sys.stderr)
        return 2
    receiver = DemoReceiver()
    stats = DemoStats()

    async def main() -> int:
        try:
            port = await receiver.start("127.0.0.1", args.port)
        except OSError as exc:
            print(f"lifeline demo: cannot listen on port {args.port}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"demo: downstream receiver on 127.0.0.1:{port}; sending {args.rate:g} msg/s to "
              f"{target[0]}:{target[1]}" + (f", {args.count} messages" if args.count else ", Ctrl-C to stop"),
              flush=True)
        # Ctrl-C sets an event the send loop checks, rather than cancelling the task: on Python 3.11 a cancel that
        # lands while asyncio.wait_for's inner future completes can be swallowed, and the demo then never stops.
        loop = asyncio.get_running_loop()
        handled = True
        try:
            loop.add_signal_handler(signal.SIGINT, stop.set)
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread: Ctrl-C stays the default
            handled = False
        try:
            await run_demo(target, receiver, stats, rate=args.rate, count=args.count, drain=args.drain,
                           report_every=args.report_every, stream=DemoStream(seed=args.seed), stop=stop)
        finally:
            if handled:
                loop.remove_signal_handler(signal.SIGINT)
            await receiver.close()
        if stop.is_set():
            print(f"demo stopped after {time.monotonic() - started:.0f}s", flush=True)
        return 0

    started = time.monotonic()
    stop = asyncio.Event()
    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        print(f"demo stopped after {time.monotonic() - started:.0f}s", flush=True)
        return 0


def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=5.0, help="messages per second (default 5)")
    p.add_argument("--count", type=int, default=0, help="messages to send; 0 (default) until Ctrl-C")
    p.add_argument("--port", type=int, default=2600, help="port of the demo downstream receiver (default 2600)")
    p.add_argument("--to", type=host_port, metavar="HOST:PORT",
                   help="send here instead of the configured channel's MLLP port")
    p.add_argument("--channel", help="the channel to feed (default: the first with an mllp listener)")
    p.add_argument("--drain", type=float, default=10.0,
                   help="with --count, seconds to wait for deliveries before the final summary (default 10)")
    p.add_argument("--report-every", type=float, default=10.0, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)


COMMANDS["demo"] = (cmd_demo, "run a demo receiver and feed a channel a realistic stream of messages",
                    _configure_demo)


# -- commands against the database ------------------------------------------------------------------------------
def _with_database(args: argparse.Namespace, prog: str,
                   body: Callable[[Any], Awaitable[int]]) -> int:
    """Connect (jsonb codecs registered), run body(conn), close; a connection failure is one line and exit 2."""
    import asyncpg

    from infra.db import init_connection
    from workers.cli import _settings

    url = args.database_url or _settings(args).database_url

    async def run() -> int:
        try:
            conn = await asyncpg.connect(url)
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"{prog}: cannot connect to the database: {exc}", file=sys.stderr)
            return 2
        try:
            await init_connection(conn)
            return await body(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


# -- lifeline audit verify ----------------------------------------------------------------------------------------
def cmd_audit(args: argparse.Namespace) -> int:
    """Recompute the audit log's keyed chain: 'ok: N rows' (exit 0) or the first bad row (exit 1)."""
    from infra.store.audit import current_keys, parse_head, verify_chain

    try:
        heads = [parse_head(h) for h in args.head or []]
        keys = current_keys()
    except (ValueError, RuntimeError) as exc:
        print(f"lifeline audit verify: {exc}", file=sys.stderr)
        return 2

    async def body(conn: Any) -> int:
        result = await verify_chain(conn, args.org, keys=keys, heads=heads)
        print(result.line())
        return 0 if result.ok else 1

    return _with_database(args, "lifeline audit verify", body)


def _configure_audit(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    verify = sub.add_parser("verify", help="recompute the keyed chain and report the first bad row",
                            description="recompute the keyed chain (LIFELINE_AUDIT_KEY, or the store key it is "
                                        "derived from) and report the first bad row")
    verify.add_argument("--org", help="only this org's chain (default: every org)")
    verify.add_argument("--head", action="append", metavar="ORG:SEQ:HASH",
                        help="a head from an 'audit head:' log line the chain must still contain (repeatable): "
                             "catches a deleted tail")
    verify.add_argument("--database-url", help="PostgreSQL URL (default LIFELINE_DATABASE_URL)")


COMMANDS["audit"] = (cmd_audit, "audit log tools: `lifeline audit verify [--org ORG] [--head ORG:SEQ:HASH]`",
                     _configure_audit)


def cmd_apikey(args: argparse.Namespace) -> int:
    """Create, list or revoke API keys of EHR senders; a new key is printed once and stored only as a hash."""
    from api.auth import hash_api_key, new_api_key
    from infra.store import api_keys
    from infra.store.audit import append as audit

    async def body(conn: Any) -> int:
        if args.apikey_command == "create":
            key = new_api_key()
            await api_keys.create(conn, args.org, args.name, hash_api_key(key), args.role)
            await audit(conn, org_id=args.org, actor="cli", action="api_key.create", subject=args.name,
                        detail={"role": args.role})
            print(key)
        elif args.apikey_command == "revoke":
            if not await api_keys.revoke(conn, args.org, args.name):
                print(f"lifeline apikey: no active key named {args.name!r} in org {args.org!r}", file=sys.stderr)
                return 1
            await audit(conn, org_id=args.org, actor="cli", action="api_key.revoke", subject=args.name)
            print(f"revoked {args.name}")
        else:
            for r in await api_keys.list_keys(conn, args.org):
                state = f"revoked {r['revoked_at']:%Y-%m-%d}" if r["revoked_at"] else "active"
                print(f"{r['name']}\t{r['role']}\t{r['created_at']:%Y-%m-%d}\t{state}")
        return 0

    return _with_database(args, "lifeline apikey", body)


def _configure_apikey(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="apikey_command", required=True, metavar="SUBCOMMAND")
    for name, help_ in (("create", "create a key (printed once)"), ("revoke", "revoke a key by name"),
                        ("list", "list the org's keys")):
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--org", default="default")
        s.add_argument("--database-url", help="PostgreSQL URL (default LIFELINE_DATABASE_URL)")
        if name != "list":
            s.add_argument("--name", required=True)
        if name == "create":
            s.add_argument("--role", default="sender", choices=["sender", "viewer"])


COMMANDS["apikey"] = (cmd_apikey, "manage API keys of EHR senders: create | revoke | list", _configure_apikey)


# -- lifeline openapi ---------------------------------------------------------------------------------------------
def cmd_openapi(args: argparse.Namespace) -> int:
    """Print the API's OpenAPI document (what GET /openapi.json serves) without starting anything."""
    import base64
    import json
    import secrets

    from pydantic import SecretStr

    from api.app import create_app
    from infra.config import LifelineConfig
    from infra.settings import Settings

    # The document depends on neither the configuration nor the secrets: throwaway ones build the same routes.
    def key() -> str:
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()

    settings = Settings(environment="development", jwt_secret=SecretStr(secrets.token_urlsafe(48)),
                        store_key=SecretStr(key()), codec_key=SecretStr(key()))
    document = create_app(settings, LifelineConfig()).openapi()
    text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _configure_openapi(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", type=Path, help="write to this file instead of standard output")


COMMANDS["openapi"] = (cmd_openapi, "print the REST API's OpenAPI document (for client generators)", _configure_openapi)
