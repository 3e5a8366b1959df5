"""The FHIR bench runs and reports positive rates (a smoke test; it measures nothing at this size)."""

from __future__ import annotations

from bench import fhir_bench


def test_fhir_bench_reports_rates() -> None:
    report = fhir_bench.run(0.05, only=["map_adt_a01_full", "map_oru_r01_values"])
    assert report["fixtures"] == 2 and report["failed"] == 0
    assert report["bundles_per_s"] > 0 and report["resources_per_s"] > 0
    assert report["resources_per_bundle"] > 1
