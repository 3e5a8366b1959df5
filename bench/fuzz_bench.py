"""Fuzz benchmark of the accept paths: `python -m bench.fuzz_bench [--inputs N] [--seed S]`.

Generates and mutates HL7 v2 messages (from tests/fixtures plus generated ones) and MLLP byte streams, and drives
them in process through what the listener does (MLLP decoding in random chunks, then interop.intake.prepare_inbound
within the configured segment limits: parse, validate, build the AA/AE/AR) and what the API does (the
/api/hl7/validate and /api/hl7/parse views, and prepare_inbound for REST ingress). Reports the inputs run, the
exceptions raised outside the typed ones (InteropError for interop, Problem for the API views; must be 0), and
the slowest input per KB. Writes bench/results/fuzz.json. Not a timed test: tests/security/test_fuzz_smoke.py runs
a small version in the suite.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from api.problems import Problem
from api.routes.hl7 import _parse_view, _validate_view
from interop.errors import InteropError
from interop.intake import prepare_inbound
from interop.message import Limits
from interop.mllp import EB, SB, FrameDecoder, encode

RESULTS = Path(__file__).resolve().parent / "results"
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "messages"
LIMITS = Limits()  # the Settings defaults
MAX_FRAME = 4 * 1024 * 1024
SPECIALS = ["|", "^", "~", "\\", "&", "\r", "\n", "\x00", "\x0b", "\x1c", "\x7f", "\ufeff", "é", "²", '""',
            "\\X0D\\", "\\E\\", "MSH|^~\\&|", "1" * 50, ".", "+", "-", "9" * 20, "20240230", "2.5.1", "~~~~"]
SEGMENTS = ["PID|1||MRN1^^^H^MR~MRN2||DOE^JANE||19800101|F", "OBX|1|NM|X||12.5|mg", "OBX|2|SN|X||>^5^:^7",
            "OBX|3|TM|X||1230", "NTE|1||text", "PV1|1|I|W^1^2", "AL1|1||PEN", "ZZZ|custom", "EVN|A01|2024"]


def seeds() -> list[str]:
    texts = [p.read_bytes().decode("utf-8", "replace") for p in sorted(FIXTURES.glob("*.hl7"))]
    texts.append("MSH|^~\\&|A|B|C|D|20240101120000||ORU^R01^ORU_R01|1|P|2.5.1\r" + "\r".join(SEGMENTS))
    return texts


def mutate(text: str, rnd: random.Random) -> str:
    """One to four random edits: flips, inserts, deletes, segment duplication/shuffle, blow-ups, truncation."""
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(10)
        n = len(text)
        pos = rnd.randrange(n + 1) if n else 0
        if op == 0 and n:
            text = text[:pos] + chr(rnd.randrange(0, 0x250)) + text[pos + 1:]
        elif op == 1:
            text = text[:pos] + rnd.choice(SPECIALS) + text[pos:]
        elif op == 2 and n:
            end = min(n, pos + rnd.randint(1, 40))
            text = text[:pos] + text[end:]
        elif op == 3:
            lines = text.split("\r")
            line = rnd.choice(lines)
            lines.insert(rnd.randrange(len(lines) + 1), line)
            text = "\r".join(lines)
        elif op == 4:
            lines = text.split("\r")
            head, rest = lines[:1], lines[1:]
            rnd.shuffle(rest)
            text = "\r".join(head + rest)
        elif op == 5:  # blow-up: one field repeated, or one segment repeated many times (up to ~16 KB)
            unit = rnd.choice(SPECIALS + SEGMENTS[:3])
            text = text[:pos] + unit * rnd.randint(10, max(11, 16_384 // max(1, len(unit)))) + text[pos:]
        elif op == 6:
            text = text[:pos]
        elif op == 7:
            text = text.replace("|", rnd.choice(["$", "\t", "\x01", "||", "^"]), rnd.randint(1, 5))
        elif op == 8:
            text = text + "\r" + "\r".join(rnd.choices(SEGMENTS, k=rnd.randint(1, 200)))
        else:
            text = text.replace("\r", rnd.choice(["\n", "\r\n", "\r\r", ""]), rnd.randint(1, 3))
    return text


def stream(texts: list[str], rnd: random.Random) -> bytes:
    """Frames of mutated messages with MLLP noise: junk between frames, missing end blocks, stray SB/EB."""
    out = bytearray()
    for text in texts:
        kind = rnd.randrange(6)
        text = text.replace("\x0b", "").replace("\x1c", "")  # the sender's framing would refuse these
        body = text.encode("utf-8", "replace")
        if kind == 0:
            out += b"junk" * rnd.randint(0, 3)
        if kind == 1:
            out += bytes([SB]) + body  # never ended: the next start block abandons it
        elif kind == 2:
            out += bytes([SB]) + body[: len(body) // 2] + bytes([SB]) + body + bytes([EB, 0x0D])
        elif kind == 3:
            out += bytes([EB]) + encode(text)
        else:
            out += encode(text)
    return bytes(out)


def chunks(data: bytes, rnd: random.Random) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        size = rnd.choice([1, 7, 64, 1024, 65536])
        yield data[pos:pos + size]
        pos += size


def listener_path(data: bytes, rnd: random.Random) -> None:
    """What workers/listener does per connection, minus the store: decode frames, check each, build its answer."""
    decoder = FrameDecoder(max_frame_size=MAX_FRAME)
    for chunk in chunks(data, rnd):
        try:
            frames = decoder.feed(chunk)
        except InteropError:  # FrameTooLarge: answered AR by the listener
            frames = decoder.frames()
        for frame in frames:
            prepare_inbound(frame, rnd.choice(["tolerant", "strict"]), LIMITS)  # type: ignore[arg-type]


def api_path(text: str, rnd: random.Random) -> None:
    """What the API does with a body: REST ingress, and one of the /api/hl7 validate / parse views."""
    level = rnd.choice(["tolerant", "strict"])
    prepare_inbound(text.encode("utf-8", "replace"), level, LIMITS)  # type: ignore[arg-type]
    try:
        if rnd.random() < 0.5:
            _validate_view(text, level, LIMITS)
        else:
            _parse_view(text, ["PID-3.1"], LIMITS)
    except (Problem, InteropError):
        pass


def run(inputs: int, seed: int, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    rnd = random.Random(seed)
    base = seeds()
    errors: list[dict[str, Any]] = []
    slowest: dict[str, Any] = {"ms_per_kb": 0.0}
    total_bytes = 0
    started = time.perf_counter()
    cpu0 = time.process_time()
    streams = messages = 0
    for i in range(inputs):
        text = mutate(rnd.choice(base), rnd)
        as_stream = i % 2 == 1
        payload: bytes | str
        if as_stream:
            batch = [text] + [mutate(rnd.choice(base), rnd) for _ in range(rnd.randint(0, 3))]
            payload = stream(batch, rnd)
            streams += 1
        else:
            payload = text
            messages += 1
        size = len(payload.encode("utf-8", "replace")) if isinstance(payload, str) else len(payload)
        total_bytes += size
        t0 = time.process_time()  # CPU time: other processes on the machine do not inflate it
        try:
            if isinstance(payload, bytes):
                listener_path(payload, rnd)
            else:
                api_path(payload, rnd)
        except Exception as exc:  # noqa: BLE001 - counting exactly these is the point
            errors.append({"input": i, "path": "listener" if as_stream else "api", "error": type(exc).__name__,
                           "where": traceback.format_exc(limit=-3)[-500:]})
        elapsed = time.process_time() - t0
        per_kb = elapsed * 1000 / max(size / 1024, 1.0)  # inputs under 1 KB count as 1 KB
        if per_kb > slowest["ms_per_kb"]:
            slowest = {"ms_per_kb": round(per_kb, 3), "ms": round(elapsed * 1000, 2), "bytes": size, "input": i,
                       "path": "listener" if as_stream else "api"}
        if progress and (i + 1) % 5_000 == 0:
            progress(f"{i + 1} inputs, {len(errors)} untyped exceptions, slowest {slowest['ms_per_kb']} ms/KB")
    wall = time.perf_counter() - started
    return {"inputs": inputs, "messages_via_api": messages, "mllp_streams_via_listener": streams, "seed": seed,
            "bytes": total_bytes, "wall_seconds": round(wall, 1), "cpu_seconds": round(time.process_time() - cpu0, 1),
            "untyped_exceptions": len(errors),
            "exceptions": errors[:20], "slowest_per_kb": slowest,
            "mean_cpu_ms_per_kb": round((time.process_time() - cpu0) * 1000 / max(total_bytes / 1024, 1), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz.json")
    args = parser.parse_args(argv)
    report = run(args.inputs, args.seed, progress=lambda line: print(line, file=sys.stderr))  # noqa: T201
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "exceptions"}, indent=2))  # noqa: T201
    return 1 if report["untyped_exceptions"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
