"""Secrets at rest: AES-256-GCM under a key from the environment (`APGMS_MASTER_KEY`).

A sealed value is `v1.<key id>.<nonce><ciphertext+tag>` (base64url), so a later master-key rotation can tell
which key sealed it. The associated data binds a ciphertext to its row (for example the user id), so a sealed
TOTP secret copied onto another user's row does not open.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.config import Secret

__all__ = [
    "NONCE_BYTES",
    "VERSION",
    "SealError",
    "SecretBox",
]

NONCE_BYTES = 12
VERSION = "v1"


class SealError(Exception):
    """A sealed value is malformed, was sealed under another key, or was tampered with."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SecretBox:
    def __init__(self, master_key: Secret) -> None:
        key = base64.b64decode(master_key.reveal())
        self._aead = AESGCM(key)
        # A short, non-secret fingerprint of the key; it says which key sealed a value.
        self.key_id = hashlib.sha256(b"apgms-key-id" + key).hexdigest()[:12]

    def seal(self, plaintext: bytes, associated: bytes = b"") -> str:
        nonce = os.urandom(NONCE_BYTES)
        return f"{VERSION}.{self.key_id}.{_b64(nonce + self._aead.encrypt(nonce, plaintext, associated))}"

    def open(self, sealed: str, associated: bytes = b"") -> bytes:
        try:
            version, key_id, payload = sealed.split(".")
            raw = _unb64(payload)
        except ValueError:
            raise SealError("not a sealed value") from None
        if version != VERSION or key_id != self.key_id:
            raise SealError(f"sealed under key {key_id!r}, not the current master key")
        try:
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], associated)
        except InvalidTag:
            raise SealError("sealed value was tampered with or belongs to another row") from None
