"""Settings: production refuses placeholder secrets; keys rotate without losing older data."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from tests.conftest import TEST_STORE_KEY, make_settings

NEW_KEY = base64.urlsafe_b64encode(b"n" * 32).decode()


def test_production_refuses_placeholder_secrets() -> None:
    with pytest.raises(ValidationError, match="LIFELINE_JWT_SECRET must be set"):
        make_settings(environment="production", jwt_secret="changeme")
    with pytest.raises(ValidationError, match="LIFELINE_STORE_KEY must decode to 32 bytes"):
        make_settings(store_key=base64.b64encode(b"short").decode())


def test_rotated_store_key_keeps_old_bodies_readable() -> None:
    old = make_settings().cipher("store")
    blob = old.encrypt(b"MSH|^~\\&|old", aad=b"m1")
    rotated = make_settings(store_key=NEW_KEY, store_key_id="k2", store_previous_keys=f"k1:{TEST_STORE_KEY}")
    cipher = rotated.cipher("store")
    assert cipher.key_id == "k2"
    assert cipher.decrypt(blob, "k1", aad=b"m1") == b"MSH|^~\\&|old"
    fresh = cipher.encrypt(b"new", aad=b"m2")
    assert cipher.decrypt(fresh, "k2", aad=b"m2") == b"new"
    with pytest.raises(ValueError, match="unknown encryption key id 'k1'"):
        make_settings(store_key=NEW_KEY, store_key_id="k2").cipher("store").decrypt(blob, "k1", aad=b"m1")


def test_previous_keys_are_validated() -> None:
    with pytest.raises(ValidationError, match="LIFELINE_CODEC_PREVIOUS_KEYS entries must look like"):
        make_settings(codec_previous_keys="just-a-key")
    with pytest.raises(ValidationError, match=r"LIFELINE_STORE_PREVIOUS_KEYS \(k0\) must decode to 32 bytes"):
        make_settings(store_previous_keys="k0:c2hvcnQ=")
