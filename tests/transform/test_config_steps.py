"""Steps and code tables in lifeline.yaml: key-path errors, CSV tables, and the JSON form round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra.config import ConfigError, LifelineConfig, load_config, validate_config


def doc(steps: list[dict[str, Any]], tables: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "channels": [{"name": "adt-in", "mllp": {"port": 2575}, "routes": [{"to": "lab", "steps": steps}]}],
        "destinations": [{"name": "lab", "mllp": {"host": "127.0.0.1", "port": 2600}}],
        "tables": tables or [],
    }


def problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as err:
        validate_config(data, "lifeline.yaml")
    return err.value.problems


def test_step_errors_name_the_key_path() -> None:
    found = problems(doc([{"set": "MSH-5", "value": "LIS"}, {"map": "PV1-3.1", "table": "wards"},
                          {"set": "PID-5", "template": "{PID-5.1"}]))
    assert found == [("channels[0].routes[0].steps[2]",
                      "a template brace is not closed; write {{ or }} for a literal brace")]
    found = problems(doc([{"map": "PV1-3.1", "table": "wards"}, {"plugin": "not-installed"}]))
    assert ("channels[0].routes[0].steps[0].table", "no code table named 'wards' in org 'default'") in found
    assert any(p == "channels[0].routes[0].steps[1].plugin" and "not-installed" in r for p, r in found)
    found = problems(doc([{"drop_segments": ["Z*"], "when": {"PV1-2": {"in": ["O"], "frob": 1}}}]))
    assert found[0][0] == "channels[0].routes[0].steps[0].when.PV1-2.frob"
    found = problems(doc([], tables=[{"name": "wards"}, {"name": "wards"}]))
    assert found == [("tables[1].name", "duplicate code table name 'wards'")]


def test_csv_table_is_read_relative_to_the_file_and_kept_as_values(tmp_path: Path) -> None:
    (tmp_path / "wards.csv").write_text("from,to\n4W,WARD4\n5E,WARD5\n")
    import yaml

    (tmp_path / "lifeline.yaml").write_text(yaml.safe_dump(doc(
        [{"map": "PV1-3.1", "table": "wards", "default": "reject"}], tables=[{"name": "wards", "csv": "wards.csv"}])))
    config = load_config(tmp_path / "lifeline.yaml")
    assert config.tables_for("default") == {"wards": {"4W": "WARD4", "5E": "WARD5"}}
    (tmp_path / "lifeline.yaml").write_text(yaml.safe_dump(doc([], tables=[{"name": "t", "csv": "missing.csv"}])))
    with pytest.raises(ConfigError, match=r"tables\[0\]\.csv: cannot read .*missing.csv"):
        load_config(tmp_path / "lifeline.yaml")
    (tmp_path / "bad.csv").write_text("A,1\nB\n")
    (tmp_path / "lifeline.yaml").write_text(yaml.safe_dump(doc([], tables=[{"name": "t", "csv": "bad.csv"}])))
    with pytest.raises(ConfigError, match=r"tables\[0\]\.csv: .*line 2: expected two columns"):
        load_config(tmp_path / "lifeline.yaml")


def test_json_form_round_trips() -> None:
    from infra.config import EXAMPLE_CONFIG

    for config in (load_config(EXAMPLE_CONFIG), validate_config(doc(
            [{"copy": "PID-3.1", "to": "PID-2", "when": {"PID-8": "F"}},
             {"map": "PV1-3.1", "table": "wards", "default": {"value": "UNK"}},
             {"filter": "x", "when": {"PV1-2": "O"}}],
            tables=[{"name": "wards", "values": {"4W": "WARD4"}}]), "x")):
        dumped = config.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        assert validate_config(dumped, "again") == config
        assert isinstance(LifelineConfig.model_validate(dumped), LifelineConfig)
