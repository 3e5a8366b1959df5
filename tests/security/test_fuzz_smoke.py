"""The fuzz benchmark (bench/fuzz_bench.py) in small: mutated messages and MLLP streams through the listener's
and the API's accept paths raise nothing but the project's typed errors."""

from __future__ import annotations

import pytest

from bench.fuzz_bench import run


@pytest.mark.parametrize("seed", [11, 12])
def test_mutated_inputs_raise_only_typed_errors(seed: int) -> None:
    report = run(300, seed)
    assert report["inputs"] == 300 and report["mllp_streams_via_listener"] == 150
    assert report["untyped_exceptions"] == 0, report["exceptions"]
