"""Channel configuration: the documented example loads, and every error names file, key path and reason."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from infra.config import EXAMPLE_CONFIG, ConfigError, KeyOrdering, load_config, validate_config
from workers.cli import main

VALID_DEST = {"name": "lab", "mllp": {"host": "127.0.0.1", "port": 2600}}


def test_example_is_the_documented_contract() -> None:
    cfg = load_config(EXAMPLE_CONFIG)
    ch = cfg.channels[0]
    assert (ch.name, ch.org, ch.mllp and ch.mllp.port) == ("adt-in", "default", 2575)
    assert ch.routes[0].to == "lab" and ch.routes[0].when.message_type == ["ADT^*", "ORU^R01"]
    dest = cfg.destinations[0]
    assert dest.kind == "mllp" and isinstance(dest.ordering, KeyOrdering) and dest.lane_key_path == "PID-3.1"
    assert dest.retry.initial_interval == timedelta(seconds=1)
    assert dest.retry.maximum_interval == timedelta(minutes=5) and dest.retry.maximum_attempts == 20
    assert cfg.remediation.mode == "semi-auto" and cfg.remediation.approval_timeout == timedelta(hours=1)


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        ({"destinations": [{"name": "lab", "mllp": {"host": "x", "port": 70000}}]},
         "destinations[0].mllp.port", "less than or equal to 65535"),
        ({"channels": [{"name": "a", "routes": [{"to": "nope"}]}]}, "channels[0].routes[0].to",
         "no destination named 'nope'"),
        ({"destinations": [{**VALID_DEST, "ordering": "sideways"}]}, "destinations[0].ordering",
         "must be 'none', 'destination'"),
        ({"destinations": [{"name": "lab"}]}, "destinations[0]", "exactly one of mllp, fhir, webhook, file or sftp"),
        ({"destinations": [{**VALID_DEST, "retry": {"initial_interval": "soon"}}]},
         "destinations[0].retry.initial_interval", "is not a duration"),
        ({"destinations": [VALID_DEST, VALID_DEST]}, "destinations[1].name", "duplicate destination"),
        ({"channels": [{"name": "a", "mllp": {"port": 2575}}, {"name": "b", "mllp": {"port": 2575}}]},
         "channels[1].mllp.port", "also used by channel 'a'"),
        ({"destinations": [{**VALID_DEST, "webhook": {"url": "ftp://x", "secret": "s" * 20}}]},
         "destinations[0].webhook.url", "should match pattern '^https?://'"),
        ({"destinations": [{**VALID_DEST, "max_in_flight": 0}]}, "destinations[0].max_in_flight",
         "greater than or equal to 1"),
        ({"remediation": {"mode": "yolo"}}, "remediation.mode", "'manual', 'semi-auto' or 'full-auto'"),
        ({"channels": [{"name": "Bad Name"}]}, "channels[0].name", "should match pattern"),
        ({"surprise": 1}, "surprise", "Extra inputs are not permitted"),
    ],
)
def test_errors_name_file_key_path_and_reason(data: dict[str, object], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(data, "site.yaml")
    lines = str(err.value).splitlines()
    assert any(line.startswith(f"site.yaml: {path}: ") and reason in line for line in lines), lines


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    f = tmp_path / "lifeline.yaml"
    f.write_text("channels:\n  - name: a\n   bad: [\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value).startswith(f"{f}: line ") and "not valid YAML" in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml")


def test_cli_reports_bad_config_in_one_line_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "lifeline.yaml"
    f.write_text("destinations:\n  - name: lab\n    mllp: {host: h, port: 0}\n")
    code = main(["--config", str(f), "config-check"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"lifeline: configuration error: {f}: destinations[0].mllp.port: "
                   "Input should be greater than or equal to 1"]
