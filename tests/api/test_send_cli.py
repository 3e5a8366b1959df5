"""`lifeline send` and `lifeline demo` against python-hl7's asyncio MLLP server (no engine needed)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infra.devstack import free_port
from interop.ack import parse_ack
from interop.message import parse
from interop.mllp import encode
from interop.validate import validate
from tests.delivery.harness import Peer, adt
from tests.fixtures import load
from workers.cli import main
from workers.tools import DemoReceiver, DemoStats, DemoStream, read_messages, run_demo, split_messages


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer()
    await p.start()
    yield p
    await p.stop()


def port_of(peer: Peer) -> int:
    assert peer.server is not None
    return int(peer.server.sockets[0].getsockname()[1])


def test_files_split_on_msh_frames_and_batches() -> None:
    two = adt("C1", "M1") + "\n\n" + adt("C2", "M2") + "\n"
    assert [parse(m).control_id for m in split_messages(two)] == ["C1", "C2"]
    framed = encode(adt("F1", "M1")) + b"\r\n" + encode(adt("F2", "M2"))
    assert [parse(m).control_id for m in read_messages(framed)[0]] == ["F1", "F2"]
    batch, encoding = read_messages(load("edge_batch_fhs_bhs").encode())
    assert [parse(m).control_id for m in batch] == ["B-MSG-1", "B-MSG-2"] and encoding == "utf-8"
    latin, encoding = read_messages(adt("L1", "M1", name="MÜLLER^JO").encode("latin-1"))
    assert encoding == "latin-1" and "MÜLLER" in latin[0]


async def test_send_prints_one_line_per_message_and_exits_0(peer: Peer, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    many = tmp_path / "many.hl7"
    many.write_text(adt("S1", "M1") + "\n" + adt("S2", "M2") + "\n")
    framed = tmp_path / "framed.mllp"
    framed.write_bytes(encode(adt("S3", "M3")) + encode(adt("S4", "M4")))
    batch = tmp_path / "batch.hl7"
    batch.write_text(load("edge_batch_fhs_bhs"))
    code = await asyncio.to_thread(main, ["send", str(many), str(framed), str(batch),
                                          "--to", f"127.0.0.1:{port_of(peer)}"])
    assert code == 0
    assert peer.control_ids() == ["S1", "S2", "S3", "S4", "B-MSG-1", "B-MSG-2"]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [[c, "AA"] for c in ("S1", "S2", "S3", "S4", "B-MSG-1", "B-MSG-2")]


async def test_send_exits_1_and_shows_error_texts_on_ae(peer: Peer, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    peer.answer = "AE"
    f = tmp_path / "one.hl7"
    f.write_text(adt("E1", "M1"))
    code = await asyncio.to_thread(main, ["send", str(f), "--to", f"127.0.0.1:{port_of(peer)}", "--timeout", "5"])
    assert code == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("E1  AE") and "peer says no" in line


async def test_send_exits_2_with_one_line_when_nobody_listens(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "one.hl7"
    f.write_text(adt("X1", "M1"))
    port = free_port()
    code = await asyncio.to_thread(main, ["send", str(f), "--to", f"127.0.0.1:{port}", "--timeout", "2"])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"lifeline send: cannot connect to 127.0.0.1:{port}: connection refused"


async def test_send_reports_a_missing_ack_as_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # swallow everything, never acknowledge
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    f = tmp_path / "one.hl7"
    f.write_text(adt("T1", "M1"))
    try:
        code = await asyncio.to_thread(main, ["send", str(f), "--to", f"127.0.0.1:{port}", "--timeout", "0.5"])
    finally:
        server.close()
    assert code == 1
    assert capsys.readouterr().out.strip() == "T1  --  no ACK within 0.5s"


async def test_send_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", str(tmp_path / "missing.hl7"), "--to", "127.0.0.1:1"]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["send", str(tmp_path / "x.hl7"), "--to", "no-port"])


# -- demo ----------------------------------------------------------------------------------------------
def test_demo_stream_is_a_valid_realistic_mix() -> None:
    stream = DemoStream(seed=3)
    messages = [parse(stream.next()) for _ in range(200)]
    assert {m.message_type for m in messages} == {"ADT^A01", "ADT^A03", "ADT^A04", "ADT^A08", "ORU^R01", "ORM^O01"}
    assert len({m.get("PID-3.1") for m in messages}) <= 50
    assert len({m.control_id for m in messages}) == 200
    assert all(validate(m, "strict").ok for m in messages)


def test_demo_receiver_answers_ae_once_for_mrns_ending_in_7() -> None:
    receiver = DemoReceiver()
    seven = adt("R7", "MRN17").encode()
    first, second = parse_ack(receiver.answer(seven)), parse_ack(receiver.answer(seven))
    assert (first.code, second.code) == ("AE", "AA") and first.control_id == "R7"
    assert parse_ack(receiver.answer(adt("R1", "MRN11").encode())).code == "AA"
    assert receiver.by_type == {"ADT^A08": 2} and receiver.errors_given == 1
    assert parse_ack(receiver.answer(b"garbage")).code == "AR"


async def test_demo_sends_count_messages_to_the_configured_channel(peer: Peer, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "lifeline.yaml"
    config.write_text(f"channels:\n  - name: adt-in\n    mllp: {{port: {port_of(peer)}}}\n")
    code = await asyncio.to_thread(main, ["--config", str(config), "demo", "--count", "5", "--rate", "50",
                                          "--port", "0", "--drain", "0"])
    assert code == 0
    assert len(peer.received) == 5
    assert all(str(m.segment("MSH")[3]) == "DEMO-EHR" for m in peer.received)
    out = capsys.readouterr().out
    assert "sent 5 (acks: AA 5)" in out.splitlines()[-1]


async def test_demo_without_an_mllp_channel_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "lifeline.yaml"
    config.write_text("channels:\n  - name: api-only\n")
    assert main(["--config", str(config), "demo", "--count", "1", "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "lifeline demo: the configuration has no channel with an mllp listener (or use --to HOST:PORT)")


async def test_demo_runs_until_cancelled_with_periodic_summaries(peer: Peer) -> None:
    out = io.StringIO()
    receiver, stats = DemoReceiver(), DemoStats()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(run_demo(("127.0.0.1", port_of(peer)), receiver, stats, rate=40, count=0,
                                        report_every=0.25, out=out, stream=DemoStream(seed=1)), 1.2)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 4 and all(line.startswith("demo ") for line in lines)
    assert stats.sent >= 10 and stats.sent == stats.acks["AA"]
    assert stats.sent <= len(peer.received) <= stats.sent + 1  # the last one may be cut off before its ACK
    assert f"sent {stats.sent} " in lines[-1]
