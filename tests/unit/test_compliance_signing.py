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
    Check,
    InvalidKey,
    b64url_decode,
    b64url_encode,
    jwks_keys,
    pack_fields,
    public_jwk,
    sign,
    verify,
)
from shared.canonical import canonical_json
from shared.contracts.compliance import EXPORT_FORMAT, Export

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


def test_every_field_a_row_shows_is_checked_against_the_payload(key: Ed25519PrivateKey) -> None:
    """`pack_fields` expects the format, id, org, creation time, author and tag (null included): an edit of any of
    them in a row or an envelope fails the payload check naming it; the time matches as an instant, whichever way
    the payload spells it (pydantic's or canonical JSON's)."""
    created = datetime(2026, 11, 28, 3, 15, tzinfo=UTC)
    fields = {"id": uuid.UUID(PACK_ID), "org_id": uuid.UUID(ORG_ID), "created_at": created, "created_by": "user:a"}
    base = {"format": "apgms.evidence-pack/1", "id": PACK_ID, "org_id": ORG_ID, "created_by": "user:a", "tag": None}
    keys = {"ev-1": key.public_key()}

    def check(document: dict[str, object], **row: object) -> Check | None:
        payload = canonical_json(document)
        signed = sign(payload, key, "ev-1")
        shown = Export(**{**fields, "tag": None, **row}, sha256="", signature="", key_id="", payload_base64="")
        return verify(payload, signed.sha256, signed.signature, "ev-1", keys, expect=pack_fields(shown)).failed

    for spelling in ("2026-11-28T03:15:00Z", "2026-11-28T03:15:00.000000Z", "2026-11-28T14:15:00+11:00"):
        assert check({**base, "created_at": spelling}) is None, spelling
    signed_doc = {**base, "created_at": "2026-11-28T03:15:00.000000Z"}
    edits = {
        "tag": {"tag": "EDITED"},
        "created_by": {"created_by": "user:evil"},
        "created_at": {"created_at": datetime(2001, 1, 1, tzinfo=UTC)},
    }
    for name, row in edits.items():
        failed = check(signed_doc, **row)
        assert failed is not None and failed.name == "payload", name
        assert (failed.reason or "").startswith(f"the payload's {name} is not "), (name, failed.reason)
    # A tag signed but removed from the row (null there), a payload of another format, a field the payload lacks.
    failed = check({**signed_doc, "tag": "Q3"})
    assert failed is not None and failed.reason == "the payload's tag is not null"
    failed = check({**signed_doc, "format": "apgms.audit-checkpoint/1"})
    assert failed is not None and failed.reason == "the payload's format is not apgms.evidence-pack/1"
    failed = check({name: value for name, value in signed_doc.items() if name != "created_by"})
    assert failed is not None and failed.reason == "the payload's created_by is not user:a"
    failed = check({**signed_doc, "created_at": "not a time"})
    assert failed is not None and (failed.reason or "").startswith("the payload's created_at is not 2026-11-28")


def test_a_jwks_naming_a_kid_twice_is_refused(key: Ed25519PrivateKey) -> None:
    """A second key under the genuine kid must not be the one a pack is checked with (whichever order they come)."""
    other = Ed25519PrivateKey.generate()
    for first, second in ((key, other), (other, key)):
        with pytest.raises(InvalidKey, match="duplicate kid 'real'"):
            jwks_keys({"keys": [public_jwk(first.public_key(), "real"), public_jwk(second.public_key(), "real")]})
    # Even when one of the two is not an Ed25519 key at all.
    with pytest.raises(InvalidKey, match="duplicate kid 'real'"):
        jwks_keys({"keys": [{"kty": "RSA", "kid": "real"}, public_jwk(key.public_key(), "real")]})
