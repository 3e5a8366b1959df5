"""A longer Schemathesis run than the suite's: `python -m bench.schemathesis --examples 200`.

Runs tests/api/test_schemathesis.py (the API over the real stack, with a token and without) with more examples per
operation, and keeps Schemathesis's output in bench/results/schemathesis.txt. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.schemathesis", description=__doc__)
    parser.add_argument("--examples", type=int, default=200, help="examples per operation (the suite uses 10)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LIFELINE_SCHEMATHESIS_EXAMPLES": str(args.examples),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=short",
                          "tests/api/test_schemathesis.py"], cwd=ROOT, env=env, capture_output=True, text=True)
    out = RESULTS / "schemathesis.txt"
    out.write_text(f"examples per operation: {args.examples}; {time.monotonic() - started:.0f} s\n\n"
                   + run.stdout + run.stderr, encoding="utf-8")
    sys.stdout.write(run.stdout[-3000:])
    sys.stdout.write(f"\nfull output: {out}\n")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
