"""`python -m bench.healing`: the fault-injection scorecard, every fault in each remediation mode; writes
bench/results/healing.json and healing.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.healing.report import render_markdown
from bench.healing.runner import MODES, run_scorecard
from bench.stack import started

RESULTS = Path(__file__).resolve().parents[1] / "results"


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    began = time.time()
    load_start = list(os.getloadavg())
    async with started() as rig:
        results = await run_scorecard(rig, tuple(args.modes.split(",")), args.only.split(",") if args.only else None)
    return {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)),
            "seconds": round(time.time() - began), "results": results,
            "load": {"nproc": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in load_start],
                     "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.healing", description=__doc__)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--only", help="comma-separated fault names")
    p.add_argument("--out", type=Path, default=RESULTS / "healing")
    p.add_argument("--combine", type=Path, nargs="+", help="merge these reports (e.g. one run per mode) into --out")
    args = p.parse_args(argv)
    if args.combine:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        parts = [json.loads(f.read_text()) for f in args.combine]
        report = {"started_at": min(x["started_at"] for x in parts), "seconds": sum(x["seconds"] for x in parts),
                  "results": [r for x in parts for r in x["results"]], "load": parts[0]["load"],
                  "runs": [{"started_at": x["started_at"], "seconds": x["seconds"], "load": x["load"]}
                           for x in parts]}
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        args.out.with_suffix(".md").write_text(render_markdown(report))
        print(render_markdown(report))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("temporalio", "httpx", "asyncpg", "lifeline", "tests.e2e"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    report = asyncio.run(main_async(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    args.out.with_suffix(".md").write_text(render_markdown(report))
    print(render_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
