"""Interop throughput per core: tolerant parse + validate + ACK, strict validation, python-hl7 / hl7apy parse."""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from typing import Any

from interop.ack import build_ack
from interop.message import is_batch, parse
from interop.validate import validate
from tests.fixtures import good_fixtures


def _messages() -> list[str]:
    return [text for text in good_fixtures().values() if not is_batch(text)]


def _rate(fn: Callable[[str], object], messages: list[str], seconds: float) -> dict[str, Any]:
    """Messages per second of fn over the fixtures, cycling for about ``seconds``."""
    done = failed = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for text in messages:
            try:
                fn(text)
            except Exception:  # the libraries compared reject some valid fixtures; count, don't stop
                failed += 1
            done += 1
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    return {"msg_per_s": round(done / elapsed), "messages": done, "failed": failed, "seconds": round(elapsed, 2)}


def _pipeline(text: str) -> str:
    message = parse(text)
    report = validate(message)
    return build_ack(message, findings=report.findings)


def _hl7apy_parse(text: str) -> object:
    from hl7apy.parser import parse_message

    return parse_message(text.replace("\n", "\r").lstrip("\ufeff"), find_groups=False)


def _hl7apy_strict(text: str) -> object:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    message = parse_message(text.replace("\n", "\r").lstrip("\ufeff"), validation_level=VALIDATION_LEVEL.STRICT)
    return message.validate()


def _python_hl7_parse(text: str) -> object:
    import hl7

    return hl7.parse(text.replace("\n", "\r").lstrip("\ufeff"))


def run(seconds: float = 2.0, *, compare: bool = True) -> dict[str, Any]:
    """Measure each rate for about ``seconds`` (one core, in this process) and return them."""
    messages = _messages()
    result: dict[str, Any] = {"fixtures": len(messages), "seconds_per_measure": seconds}
    result["tolerant_parse_validate_ack"] = _rate(_pipeline, messages, seconds)
    result["parse_only"] = _rate(parse, messages, seconds)
    result["strict_validate"] = _rate(lambda t: validate(t, "strict"), messages, seconds)
    if compare:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result["python_hl7_parse"] = _rate(_python_hl7_parse, messages, seconds)
            result["hl7apy_parse_tolerant"] = _rate(_hl7apy_parse, messages, seconds)
            result["hl7apy_parse_strict_validate"] = _rate(_hl7apy_strict, messages, seconds)
    return result


if __name__ == "__main__":
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--seconds", type=float, default=2.0)
    args.add_argument("--no-compare", action="store_true", help="skip python-hl7 and hl7apy")
    ns = args.parse_args()
    print(json.dumps(run(ns.seconds, compare=not ns.no_compare), indent=2))
