"""Scale-out: two workers, two dispatchers and two listeners as separate processes on one PostgreSQL and one
Temporal; messages over both listeners to an ordered and an unordered destination: nothing lost, nothing twice,
no patient out of order. (`python -m bench --scaleout 10000` runs the full size.)"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from bench.scaleout import run_scaleout
from tests.conftest import TEST_CODEC_KEY, TEST_JWT_SECRET, TEST_STORE_KEY

N_MESSAGES = int(os.environ.get("LIFELINE_SCALEOUT_MESSAGES", "300"))


async def test_two_of_each_process_lose_nothing_duplicate_nothing_reorder_nothing(
        tmp_path: Path, db_url: str, temporal_env: WorkflowEnvironment) -> None:
    keys = {"LIFELINE_JWT_SECRET": TEST_JWT_SECRET, "LIFELINE_STORE_KEY": TEST_STORE_KEY,
            "LIFELINE_CODEC_KEY": TEST_CODEC_KEY}
    result = await run_scaleout(db_url, temporal_env.client.service_client.config.target_host, keys, tmp_path,
                                messages=N_MESSAGES, connections=10, patients_per_connection=3, timeout=300)
    sys.stderr.write(f"\nscale-out: {result}\n")
    assert result["acked"] == N_MESSAGES
    assert (result["lost"], result["duplicates"], result["unexpected"], result["order_violations"]) == (0, 0, 0, 0), \
        result
    assert result["processes"] == {"workers": 2, "dispatchers": 2, "listeners": 2}
