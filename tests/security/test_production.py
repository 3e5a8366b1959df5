"""Finding 5 (production mode): placeholder and low-entropy secrets, shared keys, a plain-http public URL and
plaintext MLLP listeners that do not say `tls: off` are refused, each naming the variable or the key path."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.config import validate_config
from infra.production import config_problems, plaintext_channels
from tests.conftest import make_settings
from workers.cli import main


def key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def production(**overrides: object) -> dict[str, object]:
    values: dict[str, object] = {"environment": "production", "jwt_secret": secrets.token_urlsafe(48),
                                 "store_key": key(), "codec_key": key(), "public_url": "https://lifeline.example.org"}
    values.update(overrides)
    return values


def test_sound_production_settings_start() -> None:
    settings = make_settings(**production())
    assert settings.environment == "production"


@pytest.mark.parametrize(("jwt", "why"), [
    ("FAKE-change-me-jwt-secret-at-least-32-characters", "placeholder"),  # the shipped .env.example / k8s value
    ("replace-this-with-a-long-random-jwt-secret-value", "placeholder"),
    ("a" * 64, "entropy"),
    ("abababababababababababababababababababab", "entropy"),
    ("0123456789" * 4, "entropy"),
])
def test_production_refuses_placeholder_and_low_entropy_jwt_secrets(jwt: str, why: str) -> None:
    with pytest.raises(ValidationError, match=f"LIFELINE_JWT_SECRET: .*{why}"):
        make_settings(**production(jwt_secret=jwt))
    make_settings(jwt_secret=jwt if len(jwt) >= 32 else jwt * 2)  # development keeps accepting it


def test_production_refuses_patterned_and_shared_keys() -> None:
    with pytest.raises(ValidationError, match="LIFELINE_STORE_KEY: is not random"):
        make_settings(**production(store_key=base64.urlsafe_b64encode(b"s" * 32).decode()))
    same = key()
    with pytest.raises(ValidationError, match="LIFELINE_CODEC_KEY: must differ from LIFELINE_STORE_KEY"):
        make_settings(**production(store_key=same, codec_key=same))


def test_production_requires_an_https_public_url() -> None:
    with pytest.raises(ValidationError, match="LIFELINE_PUBLIC_URL: must be an https:// URL"):
        make_settings(**production(public_url="http://lifeline.example.org"))


def test_plaintext_listener_needs_an_explicit_tls_off() -> None:
    unsaid = validate_config({"channels": [{"name": "adt-in", "mllp": {"port": 2575}}]}, "f.yaml")
    [(path, reason)] = config_problems(unsaid)
    assert path == "channels[0].mllp.tls" and "tls: off" in reason
    said = validate_config({"channels": [{"name": "adt-in", "mllp": {"port": 2575, "tls": False}}]}, "f.yaml")
    assert config_problems(said) == [] and plaintext_channels(said) == ["adt-in"]


def test_cli_names_the_file_key_path_and_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "lifeline.yaml"
    cfg.write_text("channels:\n  - name: adt-in\n    mllp: {port: 2575}\n", encoding="utf-8")
    for name, value in production().items():
        monkeypatch.setenv(f"LIFELINE_{name.upper()}", str(value))
    assert main(["--config", str(cfg), "config-check"]) == 2
    assert f"{cfg}: channels[0].mllp.tls: channel 'adt-in' listens without TLS" in capsys.readouterr().err
    cfg.write_text("channels:\n  - name: adt-in\n    mllp: {port: 2575, tls: off}\n", encoding="utf-8")
    assert main(["--config", str(cfg), "config-check"]) == 0
    monkeypatch.setenv("LIFELINE_JWT_SECRET", "FAKE-change-me-jwt-secret-at-least-32-characters")
    assert main(["--config", str(cfg), "config-check"]) == 2
    assert "settings error: LIFELINE_JWT_SECRET: looks like a placeholder" in capsys.readouterr().err
