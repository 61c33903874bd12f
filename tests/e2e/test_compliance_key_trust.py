"""A database writer without the master key cannot make compliance trust a signing key of their own: a key row
whose private key does not open under the master key is neither published nor used to verify, so a pack it signed
fails /verify on its key, and a checkpoint it signed is an invalid anchor of /audit/verify."""

from __future__ import annotations

import asyncio
import os
import uuid

import aiohttp
import orjson
import pytest
from auth_support import Org, call
from compliance_support import start_compliance
from core_support import StartService, connect, role_tokens
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.compliance.keys import KEY_CACHE_TTL_S, genuine_keys
from services.compliance.signing import public_jwk, sign
from services.compliance.store.keys import all_keys
from shared.config import Secret, new_master_key
from shared.crypto import SecretBox

pytestmark = pytest.mark.e2e


async def test_a_key_row_inserted_without_the_master_key_is_never_trusted(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_compliance(start_service, database_url)
    base = stack.compliance.url
    token = (await role_tokens(http, stack.core_stack, org))["admin"]
    status, created, _ = await call(http, "POST", f"{base}/compliance/evidence", token=token)
    assert status == 201, created
    genuine_kid = created["key_id"]

    # The attacker: a key pair of their own, sealed under a master key that is not the deployment's, inserted as
    # a retired key (the real active key stays), and a pack of this org signed with it.
    forged_key = Ed25519PrivateKey.generate()
    forged_kid = "ev-forged-0001"
    attacker_box = SecretBox(Secret(new_master_key()))
    raw = forged_key.private_bytes_raw()
    async with connect(database_url) as conn:
        await conn.execute(
            "INSERT INTO compliance.evidence_keys (kid, public_jwk, private_sealed, status, retired_at) "
            "VALUES ($1, $2::text::jsonb, $3, 'retired', now())",
            forged_kid,
            orjson.dumps(public_jwk(forged_key.public_key(), forged_kid)).decode(),
            attacker_box.seal(raw, forged_kid.encode()),
        )
        stored = await conn.fetchrow("SELECT * FROM compliance.evidence_packs WHERE id = $1", uuid.UUID(created["id"]))
        forged_id = uuid.uuid4()
        payload = orjson.loads(stored["payload"])
        payload["id"] = str(forged_id)
        payload["tag"] = "forged"
        forged = sign(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS), forged_key, forged_kid)
        await conn.execute(
            "INSERT INTO compliance.evidence_packs (id, org_id, created_at, created_by, tag, payload, sha256, "
            "signature, key_id) VALUES ($1, $2, now(), $3, 'forged', $4, $5, $6, $7)",
            forged_id,
            org.id,
            stored["created_by"],
            forged.payload,
            forged.sha256,
            forged.signature,
            forged_kid,
        )
        # The test's own check of the rule: with the deployment's master key, only the genuine key holds.
        box = SecretBox(Secret(os.environ["APGMS_MASTER_KEY"]))
        trusted, untrusted = genuine_keys(await all_keys(conn), box)
        assert [row.kid for row in trusted] == [genuine_kid]
        assert untrusted == [forged_kid]

    # /verify re-reads the keys on an unknown kid, and still does not trust the forged one.
    status, verdict, _ = await call(http, "GET", f"{base}/compliance/evidence/{forged_id}/verify", token=token)
    assert status == 200, verdict
    assert verdict["valid"] is False
    assert verdict["failed"] == "key"
    status, document, _ = await call(http, "GET", f"{base}/compliance/.well-known/evidence-keys.json")
    assert status == 200
    assert [key["kid"] for key in document["keys"]] == [genuine_kid]
    # The genuine pack still verifies, and a forged checkpoint would be no anchor either: /audit/verify lists the
    # forged pack as invalid instead of trusting the rows it claims.
    status, verdict, _ = await call(http, "GET", f"{base}/compliance/evidence/{created['id']}/verify", token=token)
    assert (status, verdict["valid"]) == (200, True), verdict
    status, chain, _ = await call(http, "GET", f"{base}/audit/verify", token=token)
    assert status == 200, chain
    assert [item["id"] for item in chain["invalid_anchors"]] == [str(forged_id)]


async def test_a_tampered_active_key_stops_signing_with_a_503_not_a_forged_signature(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_compliance(start_service, database_url)
    base = stack.compliance.url
    token = (await role_tokens(http, stack.core_stack, org))["finance"]
    status, created, _ = await call(http, "POST", f"{base}/compliance/evidence", token=token)
    assert status == 201, created
    # The attacker swaps the active row's public key for one of their own (they cannot re-seal the private key).
    other = Ed25519PrivateKey.generate()
    async with connect(database_url) as conn:
        await conn.execute(
            "UPDATE compliance.evidence_keys SET public_jwk = $1::text::jsonb WHERE kid = $2",
            orjson.dumps(public_jwk(other.public_key(), created["key_id"])).decode(),
            created["key_id"],
        )
    # Within the key cache's lifetime the service notices: from then on every pack is refused, and none is stored.
    status, problem = 0, None
    for _ in range(int((KEY_CACHE_TTL_S + 5) / 0.25)):
        packs = await pack_count(database_url)
        status, problem, _ = await call(http, "POST", f"{base}/compliance/evidence", token=token)
        if status == 503:
            break
        await asyncio.sleep(0.25)
    assert status == 503, problem
    assert "integrity" in problem["detail"]
    assert await pack_count(database_url) == packs
    status, document, _ = await call(http, "GET", f"{base}/compliance/.well-known/evidence-keys.json")
    assert (status, document["keys"]) == (200, [])


async def pack_count(database_url: str) -> int:
    async with connect(database_url) as conn:
        count: int = await conn.fetchval("SELECT count(*) FROM compliance.evidence_packs")
        return count


async def test_signing_after_the_key_cache_expires_takes_no_second_connection(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    """With a pool of two, more concurrent signers than connections each reload the keys on the connection they
    hold; a reload that took a second one would leave them all waiting for good."""
    stack = start_compliance(start_service, database_url, {"DB_POOL_MAX_SIZE": "2"})
    base = stack.compliance.url
    token = (await role_tokens(http, stack.core_stack, org))["admin"]
    status, created, _ = await call(http, "POST", f"{base}/compliance/evidence", token=token)
    assert status == 201, created
    await asyncio.sleep(KEY_CACHE_TTL_S + 0.5)

    async def one(kind: str) -> int:
        path = "/compliance/evidence" if kind == "pack" else "/audit/checkpoints"
        status, body, _ = await call(http, "POST", f"{base}{path}", token=token)
        assert status in (200, 201), body
        return status

    async with asyncio.timeout(30):
        statuses = await asyncio.gather(*(one("pack" if i % 2 else "checkpoint") for i in range(6)))
    assert statuses.count(201) >= 3
    status, listing, _ = await call(http, "GET", f"{base}/compliance/evidence?limit=200", token=token)
    assert status == 200 and len(listing["items"]) == 4, listing
