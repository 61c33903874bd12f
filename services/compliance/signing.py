"""Signed documents, pure: how an evidence pack or an audit checkpoint is signed, and how anyone verifies one
with nothing but its bytes and the published keys (the service, `apgms evidence verify`, a regulator's own code).

    payload    the document as canonical JSON (RFC 8785, `shared.canonical`): these bytes are stored and exported
               as they are, never re-encoded
    sha256     lowercase hex of SHA-256(payload)
    signature  standard base64 (with padding) of the Ed25519 signature over the 32 raw bytes of that digest
    key_id     the `kid` of the signing key in /compliance/.well-known/evidence-keys.json (a JWKS: kty OKP,
               crv Ed25519, x the public key in base64url, alg EdDSA)

A verifier in a few lines of Python, with `cryptography` only:

    digest = hashlib.sha256(payload).digest()
    assert digest.hex() == sha256
    Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"])).verify(base64.b64decode(signature), digest)

An export (`GET /compliance/evidence/{id}`, the file `apgms evidence verify` reads) is
`shared.contracts.compliance.Export`: the fields above plus the pack's id, org, creation time, author and tag, with
the payload in standard base64. Only the payload is
signed; a row or envelope shows those fields beside it, so a verifier checks each against the payload's own
(`pack_fields`, `verify(expect=...)`): a payload moved onto another pack's row, or a tag, author or time edited in
the row or the file after signing, fails the `payload` check naming the field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "CHECKPOINT_FORMAT",
    "JWK_ALGORITHM",
    "PACK_FORMAT",
    "Check",
    "Expected",
    "InvalidKey",
    "Signed",
    "Verification",
    "b64url_decode",
    "b64url_encode",
    "digest_of",
    "jwks_keys",
    "pack_fields",
    "public_jwk",
    "sign",
    "verify",
]

PACK_FORMAT = "apgms.evidence-pack/1"
CHECKPOINT_FORMAT = "apgms.audit-checkpoint/1"
JWK_ALGORITHM = "EdDSA"
ED25519_PUBLIC_KEY_BYTES = 32

# The checks of `verify`, in the order they are made and reported.
CHECK_SHA256 = "sha256"
CHECK_KEY = "key"
CHECK_SIGNATURE = "signature"
CHECK_PAYLOAD = "payload"


class InvalidKey(ValueError):
    """A JWK that is not an Ed25519 public key."""


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def digest_of(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


@dataclass(frozen=True)
class Signed:
    """A payload and its digest and signature, as stored."""

    payload: bytes = field(repr=False)
    sha256: str
    signature: str
    key_id: str


def sign(payload: bytes, key: Ed25519PrivateKey, key_id: str) -> Signed:
    digest = digest_of(payload)
    return Signed(payload, digest.hex(), base64.b64encode(key.sign(digest)).decode(), key_id)


def public_jwk(key: Ed25519PublicKey, kid: str) -> dict[str, str]:
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw), "kid": kid, "use": "sig", "alg": JWK_ALGORITHM}


def _public_key(jwk: Mapping[str, Any]) -> Ed25519PublicKey:
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not isinstance(jwk.get("x"), str):
        raise InvalidKey("not an Ed25519 public key (kty OKP, crv Ed25519, x)")
    try:
        raw = b64url_decode(jwk["x"])
    except (binascii.Error, ValueError):
        raise InvalidKey("x is not base64url") from None
    if len(raw) != ED25519_PUBLIC_KEY_BYTES:
        raise InvalidKey(f"x is {len(raw)} bytes, not {ED25519_PUBLIC_KEY_BYTES}")
    return Ed25519PublicKey.from_public_bytes(raw)


def jwks_keys(document: Any) -> dict[str, Ed25519PublicKey]:
    """kid → public key of every Ed25519 key in a JWKS document; other keys are skipped, a document that is not a
    JWKS is `InvalidKey`, and so is one naming a kid twice: which of the two a signature is checked with must not
    depend on their order (a second key under the genuine kid would otherwise verify what it signs)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise InvalidKey('not a JWKS: expected {"keys": [...]}')
    keys: dict[str, Ed25519PublicKey] = {}
    seen: set[str] = set()
    for jwk in document["keys"]:
        if isinstance(jwk, Mapping) and isinstance(jwk.get("kid"), str):
            if jwk["kid"] in seen:
                raise InvalidKey(f"duplicate kid {jwk['kid']!r}: the JWKS names it twice")
            seen.add(jwk["kid"])
            try:
                keys[jwk["kid"]] = _public_key(jwk)
            except InvalidKey:
                continue
    return keys


# A field's value as a row or an envelope shows it: text, None for a JSON null, or an instant (the payload spells
# it as ISO 8601 text; it must name the same instant).
Expected = str | datetime | None


class PackFields(Protocol):
    """What a stored pack (`store.packs.PackSummary`) and an export (`Export`) show besides the payload."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def org_id(self) -> uuid.UUID: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def created_by(self) -> str: ...
    @property
    def tag(self) -> str | None: ...


def pack_fields(pack: PackFields) -> dict[str, Expected]:
    """Every field a pack's row or export shows that its signed payload also holds, for `verify(expect=...)`: the
    payload's format too, so a signed document of another kind (a checkpoint) does not pass for a pack."""
    return {
        "format": PACK_FORMAT,
        "id": str(pack.id),
        "org_id": str(pack.org_id),
        "created_at": pack.created_at,
        "created_by": pack.created_by,
        "tag": pack.tag,
    }


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    reason: str | None = None


@dataclass(frozen=True)
class Verification:
    """Every check made, in order; `failed` names the first that did not hold."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failed(self) -> Check | None:
        return next((check for check in self.checks if not check.ok), None)


def verify(
    payload: bytes,
    sha256: str,
    signature: str,
    key_id: str,
    keys: Mapping[str, Ed25519PublicKey],
    *,
    expect: Mapping[str, Expected] | None = None,
) -> Verification:
    """Check a signed document: its payload hashes to `sha256`, `key_id` is a published key, the signature verifies
    over the payload's digest under it, and the payload is a JSON object whose fields hold `expect` (for example its
    id and org; None expects a JSON null, a datetime the same instant). Every check is made and reported, so an
    answer says all that is wrong, first failure first."""
    digest = digest_of(payload)
    checks = [
        Check(CHECK_SHA256, True)
        if digest.hex() == sha256
        else Check(CHECK_SHA256, False, "the payload does not hash to the recorded sha256"),
    ]
    key = keys.get(key_id)
    if key is None:
        checks.append(Check(CHECK_KEY, False, f"key {key_id!r} is not among the published evidence keys"))
        checks.append(Check(CHECK_SIGNATURE, False, "no published key to check the signature with"))
    else:
        checks.append(Check(CHECK_KEY, True))
        checks.append(_signature_check(key, signature, digest))
    checks.append(_payload_check(payload, expect or {}))
    return Verification(tuple(checks))


def _signature_check(key: Ed25519PublicKey, signature: str, digest: bytes) -> Check:
    try:
        key.verify(base64.b64decode(signature, validate=True), digest)
    except (InvalidSignature, binascii.Error, ValueError):
        return Check(CHECK_SIGNATURE, False, "the signature does not verify over the payload's digest")
    return Check(CHECK_SIGNATURE, True)


def _holds(actual: Any, expected: Expected) -> bool:
    if not isinstance(expected, datetime):
        return bool(actual == expected)
    if not isinstance(actual, str):
        return False
    try:
        moment = datetime.fromisoformat(actual)
    except ValueError:
        return False
    return moment.utcoffset() is not None and moment == expected


def _shown(value: Expected) -> str:
    if value is None:
        return "null"
    return value.isoformat() if isinstance(value, datetime) else value


def _payload_check(payload: bytes, expect: Mapping[str, Expected]) -> Check:
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return Check(CHECK_PAYLOAD, False, "the payload is not JSON")
    if not isinstance(document, dict):
        return Check(CHECK_PAYLOAD, False, "the payload is not a JSON object")
    for name, value in expect.items():
        if name not in document or not _holds(document[name], value):
            return Check(CHECK_PAYLOAD, False, f"the payload's {name} is not {_shown(value)}")
    return Check(CHECK_PAYLOAD, True)
