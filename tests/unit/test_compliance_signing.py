"""The signing scheme of evidence packs and checkpoints (services/compliance/signing.py), pure: what `sign` produces
verifies with `cryptography` alone as the module docstring says, every check of `verify` fails on its own cause and
is reported in order, and `jwks_keys` reads the published keys and skips what is not an Ed25519 key."""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from datetime import UTC, datetime

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.compliance.signing import (
    EXPORT_FORMAT,
    Check,
    Export,
    InvalidKey,
    b64url_decode,
    b64url_encode,
    jwks_keys,
    public_jwk,
    sign,
    verify,
)
from shared.canonical import canonical_json

PACK_ID = str(uuid.uuid4())
ORG_ID = str(uuid.uuid4())
PAYLOAD = canonical_json({"format": "apgms.evidence-pack/1", "id": PACK_ID, "org_id": ORG_ID, "n": 1})
EXPECT = {"id": PACK_ID, "org_id": ORG_ID}


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def names(result_checks: tuple[Check, ...]) -> list[tuple[str, bool]]:
    return [(check.name, check.ok) for check in result_checks]


def test_a_signature_verifies_with_hashlib_and_cryptography_alone(key: Ed25519PrivateKey) -> None:
    signed = sign(PAYLOAD, key, "ev-1")
    assert (signed.payload, signed.key_id) == (PAYLOAD, "ev-1")
    digest = hashlib.sha256(PAYLOAD).digest()
    assert signed.sha256 == digest.hex()
    jwk = public_jwk(key.public_key(), "ev-1")
    assert {name: jwk[name] for name in ("kty", "crv", "kid", "use", "alg")} == {
        "kty": "OKP",
        "crv": "Ed25519",
        "kid": "ev-1",
        "use": "sig",
        "alg": "EdDSA",
    }
    # Over the 32 digest bytes, in standard base64 with padding.
    Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"])).verify(base64.b64decode(signed.signature), digest)
    result = verify(PAYLOAD, signed.sha256, signed.signature, "ev-1", {"ev-1": key.public_key()}, expect=EXPECT)
    assert result.ok and result.failed is None
    assert names(result.checks) == [("sha256", True), ("key", True), ("signature", True), ("payload", True)]


def test_each_check_fails_on_its_own_cause(key: Ed25519PrivateKey) -> None:
    signed = sign(PAYLOAD, key, "ev-1")
    keys = {"ev-1": key.public_key()}
    flipped = bytes([PAYLOAD[0] ^ 1]) + PAYLOAD[1:]

    result = verify(flipped, signed.sha256, signed.signature, "ev-1", keys, expect=EXPECT)
    assert result.failed is not None and result.failed.name == "sha256"
    assert names(result.checks)[:3] == [("sha256", False), ("key", True), ("signature", False)]

    # The recorded digest edited alone: the signature is over the payload's real digest and still holds.
    result = verify(PAYLOAD, "0" * 64, signed.signature, "ev-1", keys, expect=EXPECT)
    assert names(result.checks) == [("sha256", False), ("key", True), ("signature", True), ("payload", True)]

    result = verify(PAYLOAD, signed.sha256, signed.signature, "ev-unknown", keys, expect=EXPECT)
    assert names(result.checks) == [("sha256", True), ("key", False), ("signature", False), ("payload", True)]
    assert result.failed is not None and "ev-unknown" in (result.failed.reason or "")

    other = Ed25519PrivateKey.generate()
    forged = sign(PAYLOAD, other, "ev-1")
    result = verify(PAYLOAD, forged.sha256, forged.signature, "ev-1", keys, expect=EXPECT)
    assert names(result.checks) == [("sha256", True), ("key", True), ("signature", False), ("payload", True)]
    for garbage in ("not base64!", "", base64.b64encode(b"short").decode()):
        result = verify(PAYLOAD, signed.sha256, garbage, "ev-1", keys, expect=EXPECT)
        assert result.failed is not None and result.failed.name == "signature", garbage

    # A validly signed payload of another pack (moved onto this pack's row) fails the payload check only.
    moved = canonical_json({"id": str(uuid.uuid4()), "org_id": ORG_ID})
    resigned = sign(moved, key, "ev-1")
    result = verify(moved, resigned.sha256, resigned.signature, "ev-1", keys, expect=EXPECT)
    assert result.failed is not None and (result.failed.name, result.ok) == ("payload", False)
    assert f"the payload's id is not {PACK_ID}" == result.failed.reason
    for document in (b"not json", b"[1, 2]"):
        resigned = sign(document, key, "ev-1")
        result = verify(document, resigned.sha256, resigned.signature, "ev-1", keys, expect=EXPECT)
        assert result.failed is not None and result.failed.name == "payload"


def test_jwks_keys_reads_ed25519_keys_and_skips_the_rest(key: Ed25519PrivateKey) -> None:
    good = public_jwk(key.public_key(), "ev-good")
    document = {
        "keys": [
            good,
            {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
            {"kty": "OKP", "crv": "X25519", "kid": "x", "x": good["x"]},
            {"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": b64url_encode(b"\x01" * 31)},
            {"kty": "OKP", "crv": "Ed25519", "kid": "garbled", "x": "!!!"},
            {"kty": "OKP", "crv": "Ed25519", "x": good["x"]},  # no kid
            "not an object",
        ]
    }
    keys = jwks_keys(document)
    assert list(keys) == ["ev-good"]
    signed = sign(PAYLOAD, key, "ev-good")
    assert verify(PAYLOAD, signed.sha256, signed.signature, "ev-good", keys).ok
    for not_a_jwks in ({}, {"keys": "x"}, [good], None):
        with pytest.raises(InvalidKey):
            jwks_keys(not_a_jwks)


def test_an_export_round_trips_its_payload_bytes(key: Ed25519PrivateKey) -> None:
    signed = sign(PAYLOAD, key, "ev-1")
    export = Export(
        id=uuid.UUID(PACK_ID),
        org_id=uuid.UUID(ORG_ID),
        created_at=datetime.now(UTC),
        created_by="user:x",
        tag=None,
        sha256=signed.sha256,
        signature=signed.signature,
        key_id=signed.key_id,
        payload_base64=base64.b64encode(PAYLOAD).decode(),
    )
    again = Export.model_validate(orjson.loads(export.model_dump_json()))
    assert again.payload() == PAYLOAD
    assert (again.format, again.algorithm) == (EXPORT_FORMAT, "Ed25519")
    with pytest.raises(binascii.Error):
        export.model_copy(update={"payload_base64": "@@@"}).payload()
