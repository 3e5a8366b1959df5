"""v2 → FHIR throughput on one core: parse + map + R4B validation of the bundle, over a realistic message mix.

The mix is every fixture the mapping supports (ADT, ORU, ORM/OML, VXU, RDE, SIU, MDM, ... as the fixtures hold
them), each mapped in turn for about ``--seconds`` of CPU time; rates are per CPU second, so they hold on a box
other work shares. ``--only`` restricts the mix to named fixtures (docs/decisions/fhir.md compares the 52 that
mapped before issue 10).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from interop.fhir import supports, to_fhir_bundle
from interop.message import is_batch, parse
from tests.fixtures import good_fixtures


def mix(only: list[str] | None = None) -> list[str]:
    """The fixtures the mapping supports (optionally only the named ones), as texts."""
    out = []
    for name, text in good_fixtures().items():
        if is_batch(text) or (only and name not in only):
            continue
        if supports(parse(text)):
            out.append(text)
    return out


def run(seconds: float = 3.0, only: list[str] | None = None) -> dict[str, Any]:
    """Bundles and resources per CPU second of parse + to_fhir_bundle (validation included), one core."""
    messages = mix(only)
    done = resources = failed = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    deadline = cpu_start + seconds
    while True:
        for text in messages:
            try:
                result = to_fhir_bundle(parse(text))
                resources += len(result.bundle["entry"])
            except Exception:  # a failing fixture is counted, not fatal to the measurement
                failed += 1
            done += 1
        if time.process_time() >= deadline:
            break
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    # Rates per CPU second of this process: "per core", and stable on a machine other work shares.
    return {"fixtures": len(messages), "bundles": done, "failed": failed, "cpu_seconds": round(cpu, 2),
            "wall_seconds": round(elapsed, 2), "bundles_per_s": round(done / cpu),
            "resources_per_s": round(resources / cpu),
            "resources_per_bundle": round(resources / max(done - failed, 1), 1)}


if __name__ == "__main__":
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--seconds", type=float, default=3.0)
    args.add_argument("--only", nargs="*", help="fixture names to restrict the mix to")
    ns = args.parse_args()
    print(json.dumps(run(ns.seconds, ns.only), indent=2))  # noqa: T201
