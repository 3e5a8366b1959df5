"""AES-256-GCM: raw messages at rest (store) and every Temporal payload (payload codec)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping, Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

ENCRYPTED_ENCODING = b"binary/encrypted"
REFUSED_ENCODING = b"binary/unencrypted-refused"
KEY_ID_METADATA = "encryption-key-id"
_NONCE = 12


class Cipher:
    """AES-GCM with a current key id and any number of older keys kept for decryption."""

    def __init__(self, key_id: str, key: bytes, older: Mapping[str, bytes] | None = None) -> None:
        self.key_id = key_id
        self._keys: dict[str, AESGCM] = {k: AESGCM(v) for k, v in (older or {}).items()}
        self._keys[key_id] = AESGCM(key)
        self._current = key

    def derive_key(self, label: bytes) -> bytes:
        """A 256-bit key for another purpose (HMAC of the label under the current key)."""
        return hmac.new(self._current, label, hashlib.sha256).digest()

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._keys[self.key_id].encrypt(nonce, plaintext, aad or None)

    def decrypt(self, blob: bytes, key_id: str, aad: bytes = b"") -> bytes:
        try:
            key = self._keys[key_id]
        except KeyError:
            raise ValueError(f"unknown encryption key id {key_id!r}") from None
        return key.decrypt(blob[:_NONCE], blob[_NONCE:], aad or None)


class EncryptionCodec(PayloadCodec):
    """Temporal payload codec: the whole serialized payload is encrypted, the key id travels in metadata."""

    def __init__(self, cipher: Cipher, *, refuse_plain: bool = False) -> None:
        self.cipher = cipher
        # Workers refuse unencrypted payloads: one becomes a payload no converter reads, so a signal sent around
        # the codec is dropped (the SDK logs "dropping the signal") instead of reaching the workflow.
        self.refuse_plain = refuse_plain

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [
            Payload(
                metadata={"encoding": ENCRYPTED_ENCODING, KEY_ID_METADATA: self.cipher.key_id.encode()},
                data=self.cipher.encrypt(p.SerializeToString()),
            )
            for p in payloads
        ]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out: list[Payload] = []
        for p in payloads:
            if p.metadata.get("encoding", b"") != ENCRYPTED_ENCODING:
                out.append(Payload(metadata={"encoding": REFUSED_ENCODING}) if self.refuse_plain else p)
                continue
            key_id = p.metadata.get(KEY_ID_METADATA, b"").decode()
            decoded = Payload()
            decoded.ParseFromString(self.cipher.decrypt(p.data, key_id))
            out.append(decoded)
        return out


def data_converter(cipher: Cipher, *, refuse_plain: bool = False) -> DataConverter:
    """Payloads and failure messages/stack traces both go through the codec."""
    return dataclasses.replace(
        DataConverter.default,
        payload_codec=EncryptionCodec(cipher, refuse_plain=refuse_plain),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def payloads_from_json(items: Iterable[Mapping[str, object]]) -> list[Payload]:
    """Payloads in the Temporal remote-codec JSON shape ({metadata: {k: b64}, data: b64})."""
    import base64

    out = []
    for item in items:
        meta = item.get("metadata") or {}
        if not isinstance(meta, Mapping):
            raise TypeError("payload metadata must be an object of base64 strings")
        data = item.get("data") or ""
        # validate=True: stray characters are an error, not silently dropped (which would decode to b"").
        out.append(Payload(metadata={str(k): base64.b64decode(str(v), validate=True) for k, v in meta.items()},
                           data=base64.b64decode(str(data), validate=True)))
    return out


def payloads_to_json(payloads: Iterable[Payload]) -> list[dict[str, object]]:
    import base64

    return [
        {"metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
         "data": base64.b64encode(p.data).decode()}
        for p in payloads
    ]
