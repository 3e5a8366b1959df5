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


def test_readme_step_examples_are_valid_and_do_what_they_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's step block, copied as an analyst would (with the plugin installed and the CSV beside it)."""
    import re
    from importlib import metadata

    import yaml

    from activities.pipeline import plan
    from interop.message import parse
    from interop.transform import plugins

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Transforms, filters and code tables", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    data = yaml.safe_load(block.group(1))
    data["destinations"] = [{"name": "lab", "mllp": {"host": "127.0.0.1", "port": 2600}}]
    (tmp_path / "units.csv").write_text("from,to\nICU,INTENSIVE\n")
    eps = metadata.EntryPoints([metadata.EntryPoint("normalise-mrn", "tests.transform.test_config_steps:pad_mrn",
                                                    plugins.GROUP)])
    monkeypatch.setattr(plugins, "entry_points", lambda **kw: eps if kw.get("group") == plugins.GROUP
                        else metadata.entry_points(**kw))
    plugins.forget_plugins()
    try:
        config = validate_config(data, str(tmp_path / "lifeline.yaml"))
        assert config.tables_for("default")["units"] == {"ICU": "INTENSIVE"}
        sample = "\r".join([
            "MSH|^~\\&|EPIC|GENHOSP|LAB|LABFAC|20260101120000||ADT^A01|C9|P|2.5.1",
            "PID|1||MRN1^^^GENHOSP^MR~X2^^^O^PI||DOE^JANE||19800101|F|||||||||||123-45-6789",
            "NK1|1|DOE^JOHN", "PV1|1|I|4W^12^1||||A1,B2",
            "OBX|1|NM|HR||72", "OBX|2|ST|NOTE||ok", "ZPI|x"])
        (lab,) = plan(config, config.channels[0], parse(sample))
        assert lab.error is None and lab.filtered is None, lab.error
        out = parse(lab.output or "")
        assert out.get("PV1-3.1") == "WARD-4-WEST" and out.get("MSH-5") == "LIS" and out.get("MSH-6") == "MAIN-LAB"
        assert out.get("PID-5.1") == "DOE-MRN1" and out.get("PID-2") == "MRN1" and out.get("PID-19") == ""
        assert not out.all("NK1") and not out.all("ZPI")
        assert out.get("PID-3") == "0000MRN1^^^GENHOSP^MR"  # PID-3[2] deleted, the plugin padded the MRN
        assert out.get("OBX[1]-11") == "F" and out.get("OBX[2]-11") == ""
        outpatient = plan(config, config.channels[0], parse(sample.replace("PV1|1|I|", "PV1|1|O|")))[0]
        assert outpatient.filtered == "outpatients are not sent to the lab"
    finally:
        plugins.forget_plugins()


def pad_mrn(message: Any, options: dict[str, Any]) -> None:
    message.set("PID-3[1].1", message.get("PID-3[1].1").rjust(options["width"], "0"))
