"""Key-encryption keys (KEKs): what wraps each org's PII data key (shared.pii) before it is stored.

    KekProvider (Protocol, async)  current_kek_id, wrap(dek) -> WrappedKey, unwrap(WrappedKey) -> dek
      └─ LocalKekProvider          KEKs held in this process; a cloud KMS is another class behind the same three
                                   members (async, since a KMS is a network call)
    kek_provider_from_env(environ) the provider the environment names, or ConfigError naming the variable
    KekUnavailable                 a DEK's KEK is not held, or its wrapping does not open

A provider wraps under one KEK, its current one, and unwraps under any it holds; `WrappedKey.kek_id` (stored beside
the blob) says which. `unwrap` raises `KekUnavailable` and nothing else for a KEK it lacks or a blob that does not
open. It is not a `shared.pii.PiiError`: a provider knows nothing of PII, and a missing KEK is an operator's
configuration fault, not a bad value.

The local provider (APGMS_KEK_PROVIDER=local, the default and so far the only one) reads its KEKs, each 32 bytes
(KEK_BYTES) base64-encoded, from

    APGMS_KEK_FILE   a file, one KEK a line, `#` comments and blank lines ignored
    APGMS_KEK        comma-separated, for tests and one-off runs (not both)

The first KEK listed is the current one; the others after it are retired KEKs, kept only to unwrap DEKs not yet
re-wrapped. To rotate: put the new KEK first and the old ones after it, run `apgms pii rotate-kek`
(shared.pii.rotate_kek), and remove an old KEK once `kek_usage` shows it wraps nothing. A KEK's id is SecretBox's
fingerprint of it. With neither variable set, DEV_KEK is used outside production; it carries DEV_ONLY_MARKER, so
APGMS_ENV=production refuses it (and requires one of the variables), and the dev master key published in earlier
versions is refused everywhere. Errors name the variable and never echo a key.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from shared.config import ConfigError, Secret, key_problem
from shared.crypto import SealError, SecretBox

__all__ = [
    "DEV_KEK",
    "KEK_BYTES",
    "KEK_PROVIDERS",
    "KekProvider",
    "KekUnavailable",
    "LocalKekProvider",
    "WrappedKey",
    "kek_provider_from_env",
    "new_kek",
]

KEK_BYTES = 32
# The associated data of a DEK wrapped by LocalKekProvider: a blob that opens is a wrapped DEK, not another secret
# sealed with the same key.
WRAP_ASSOCIATED = b"apgms-pii-dek"

KEK_PROVIDERS = ("local",)
# Dev and test only, when neither APGMS_KEK_FILE nor APGMS_KEK is set; it carries DEV_ONLY_MARKER, so production
# refuses it like any key that does.
DEV_KEK = base64.b64encode(b"apgms-dev-only-pii-kek-000000000").decode()


class KekUnavailable(Exception):
    """A DEK is wrapped under a KEK the provider does not hold, or its wrapping does not open."""


@dataclass(frozen=True)
class WrappedKey:
    """A DEK as stored: wrapped by the KEK `kek_id` (the provider's name for it, stored beside the blob)."""

    kek_id: str
    blob: bytes = field(repr=False)


class KekProvider(Protocol):
    """Where DEKs are wrapped: this process (LocalKekProvider) or, behind the same members, a KMS."""

    @property
    def current_kek_id(self) -> str:
        """The KEK that `wrap` uses; DEKs wrapped under any other are re-wrapped by a rotation."""
        ...

    async def wrap(self, dek: bytes) -> WrappedKey:
        """`dek` wrapped under the current KEK."""
        ...

    async def unwrap(self, wrapped: WrappedKey) -> bytes:
        """The DEK; `KekUnavailable` when the KEK is not held or the blob does not open."""
        ...


class LocalKekProvider:
    """KEKs held in this process: the first wraps, every one unwraps (retired KEKs stay until nothing uses them).
    A KEK's id is SecretBox's fingerprint of it, so a mislabelled key cannot be stored."""

    def __init__(self, keys: Sequence[Secret]) -> None:
        if not keys:
            raise ValueError("LocalKekProvider needs at least one KEK")
        boxes = [SecretBox(key) for key in keys]
        self._boxes = {box.key_id: box for box in boxes}
        if len(self._boxes) != len(boxes):
            raise ValueError("the same KEK is listed twice")
        self._current = boxes[0]

    @property
    def current_kek_id(self) -> str:
        return self._current.key_id

    @property
    def kek_ids(self) -> tuple[str, ...]:
        return tuple(self._boxes)

    async def wrap(self, dek: bytes) -> WrappedKey:
        return WrappedKey(self._current.key_id, self._current.seal(dek, WRAP_ASSOCIATED).encode())

    async def unwrap(self, wrapped: WrappedKey) -> bytes:
        box = self._boxes.get(wrapped.kek_id)
        if box is None:
            raise KekUnavailable(f"no KEK {wrapped.kek_id!r} is configured (APGMS_KEK_FILE lists the retired ones)")
        try:
            return box.open(wrapped.blob.decode(), WRAP_ASSOCIATED)
        except (SealError, UnicodeDecodeError):
            raise KekUnavailable(f"a DEK wrapped under KEK {wrapped.kek_id!r} does not open") from None

    def __repr__(self) -> str:
        return f"LocalKekProvider(current={self.current_kek_id!r}, keks={len(self._boxes)})"


def _kek(value: str, source: str, *, production: bool) -> Secret:
    problem = key_problem(value, KEK_BYTES, production=production)
    if problem is not None:
        raise ConfigError(f"{source}: a KEK {problem}")
    return Secret(value)


def kek_provider_from_env(environ: Mapping[str, str]) -> KekProvider:
    """The provider APGMS_KEK_PROVIDER names (only `local` so far). `local` reads APGMS_KEK_FILE (one base64 KEK a
    line, current first, `#` comments) or APGMS_KEK (comma-separated, current first); with neither, DEV_KEK outside
    production. Raises `ConfigError` naming the variable, never echoing a key."""
    kind = environ.get("APGMS_KEK_PROVIDER") or "local"
    if kind not in KEK_PROVIDERS:
        raise ConfigError(f"APGMS_KEK_PROVIDER must be one of {', '.join(KEK_PROVIDERS)}, got {kind!r}")
    production = environ.get("APGMS_ENV") == "production"
    path, inline = environ.get("APGMS_KEK_FILE"), environ.get("APGMS_KEK")
    if path and inline:
        raise ConfigError("set APGMS_KEK_FILE or APGMS_KEK, not both")
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"APGMS_KEK_FILE {path} cannot be read: {error.__class__.__name__}") from None
        values = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        source = "APGMS_KEK_FILE"
    elif inline:
        values = [part.strip() for part in inline.split(",") if part.strip()]
        source = "APGMS_KEK"
    elif production:
        raise ConfigError("APGMS_KEK_FILE or APGMS_KEK is required when APGMS_ENV=production (32 bytes, base64)")
    else:
        values, source = [DEV_KEK], "the dev-only default KEK"
    if not values:
        raise ConfigError(f"{source} holds no key")
    keys = [_kek(value, source, production=production) for value in values]
    try:
        return LocalKekProvider(keys)
    except ValueError as error:
        raise ConfigError(f"{source}: {error}") from None


def new_kek() -> str:
    """A fresh random KEK, base64 of KEK_BYTES bytes, as LocalKekProvider reads it (APGMS_KEK_FILE, APGMS_KEK)."""
    return base64.b64encode(os.urandom(KEK_BYTES)).decode()
