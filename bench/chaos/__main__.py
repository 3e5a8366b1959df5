"""`python -m bench.chaos`: one chaos run, JSON + markdown report (bench/results/chaos.json, chaos.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from bench.chaos.harness import VICTIMS, ChaosOptions, run_chaos
from bench.chaos.report import render_markdown

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--kills", type=int, default=3, help="kills -9 of each process")
    p.add_argument("--rate", type=float, default=20.0, help="messages per second offered, all senders together")
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--victims", default=",".join(VICTIMS))
    p.add_argument("--out", type=Path, default=RESULTS / "chaos")
    p.add_argument("--drain-timeout", type=float, default=3600.0, help="seconds to wait for the last deliveries")
    p.add_argument("--workdir", type=Path, help="keep lifeline up's directory (logs) here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    opts = ChaosOptions(messages=args.messages, kills_per_process=args.kills, rate=args.rate,
                        senders=args.senders, seed=args.seed, victims=tuple(args.victims.split(",")),
                        workdir=args.workdir, drain_timeout=args.drain_timeout)
    report = asyncio.run(run_chaos(opts, logging.getLogger("chaos")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render_markdown(report))
    print(render_markdown(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
