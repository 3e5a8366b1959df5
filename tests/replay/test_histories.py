"""Determinism guard: every workflow type replays its committed histories with today's code.

A workflow change that breaks replay of running executions fails here; use workflow.patched() for it.
Histories are recorded by running the suite with LIFELINE_RECORD_HISTORIES=1 (see tests/conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from infra.crypto import Cipher, data_converter
from workers.worker import WORKFLOWS

HISTORIES = Path(__file__).parents[1] / "histories"
FILES = sorted(HISTORIES.glob("*.json"))


def test_every_workflow_type_has_a_committed_history() -> None:
    names = {getattr(wf, "__temporal_workflow_definition").name for wf in WORKFLOWS}
    recorded = {f.name.split("-")[0] for f in FILES}
    assert names <= recorded, f"no committed history for {sorted(names - recorded)}"


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
async def test_history_replays(path: Path, cipher: Cipher) -> None:
    data = json.loads(path.read_text())
    replayer = Replayer(workflows=list(WORKFLOWS), data_converter=data_converter(cipher))
    result = await replayer.replay_workflow(WorkflowHistory.from_json(path.stem, data), raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
