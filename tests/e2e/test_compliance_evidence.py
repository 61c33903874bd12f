"""Evidence packs through real auth, core and compliance processes (and the proxy for the runbook's smoke step):
a pack re-hashes with plain hashlib and its signature verifies with `cryptography` and the published key, a byte
flipped in the stored row is named by /verify, a pack signed before a key rotation still verifies after it,
making reports and packs changes nothing of core's, and bad ids, bodies, tags, roles and replays are answered as
the issue says."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from auth_support import Org, call
from compliance_support import ComplianceStack, start_compliance
from core2_support import insert_alert
from core_support import StartService, connect, new_line, post_line, role_tokens
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from test_proxy import start_proxy

from services.compliance.keys import KEY_CACHE_TTL_S, rotate
from services.compliance.signing import PACK_FORMAT
from services.core.evaluation import current_cycle
from shared.config import Secret
from shared.crypto import SecretBox
from shared.roles import ROLES

pytestmark = pytest.mark.e2e

EVIDENCE = "/compliance/evidence"
KEYS = "/compliance/.well-known/evidence-keys.json"
PACK_FIELDS = {"id", "org_id", "created_at", "created_by", "tag", "sha256", "key_id"}


def this_quarter() -> str:
    return current_cycle(datetime.now(UTC)).period_start.isoformat()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def create_pack(
    http: aiohttp.ClientSession, base: str, token: str, body: Any = None, **headers: str
) -> tuple[int, Any, Any]:
    if body is None:
        return await call(http, "POST", f"{base}{EVIDENCE}", token=token, headers=headers)
    return await call(http, "POST", f"{base}{EVIDENCE}", token=token, json=body, headers=headers)


async def pack_rows(database_url: str, org_id: uuid.UUID) -> int:
    async with connect(database_url) as conn:
        count: int = await conn.fetchval("SELECT count(*) FROM compliance.evidence_packs WHERE org_id = $1", org_id)
        return count


async def core_state(database_url: str) -> dict[str, tuple[int, str | None]]:
    """Row count and a checksum of the rows of every table in schema core."""
    async with connect(database_url) as conn:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'core' ORDER BY tablename")
        state = {}
        for row in tables:
            name = row["tablename"]
            state[name] = tuple(
                await conn.fetchrow(
                    f"SELECT count(*), md5(string_agg(t::text, '' ORDER BY t::text)) FROM core.\"{name}\" t"  # noqa: S608
                )
            )
        return state


async def jwks(http: aiohttp.ClientSession, base: str) -> tuple[dict[str, Any], Any]:
    status, document, headers = await call(http, "GET", f"{base}{KEYS}")
    assert status == 200, document
    return {key["kid"]: key for key in document["keys"]}, headers


async def verdict(http: aiohttp.ClientSession, base: str, token: str, pack_id: str) -> dict[str, Any]:
    status, body, _ = await call(http, "GET", f"{base}{EVIDENCE}/{pack_id}/verify", token=token)
    assert status == 200, body
    return dict(body)


def checks(answer: dict[str, Any]) -> dict[str, bool]:
    return {check["name"]: check["ok"] for check in answer["checks"]}


async def test_the_runbooks_smoke_step_works_through_the_proxy_and_one_request_id_crosses_three_logs(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_compliance(start_service, database_url)
    proxy = start_proxy(
        start_service,
        {"auth": [stack.auth.url], "core": [stack.core.url], "compliance": [stack.compliance.url]},
    )
    tokens = await role_tokens(http, stack.core_stack, org)

    # curl -X POST -H "Authorization: Bearer $TOKEN" http://localhost:3000/compliance/evidence: no body, no type.
    async with http.post(
        f"{proxy.url}{EVIDENCE}",
        headers={"authorization": f"Bearer {tokens['admin']}"},
        skip_auto_headers=["content-type"],
    ) as sent:
        assert "content-type" not in sent.request_info.headers
        assert sent.status == 201, await sent.text()
        created = await sent.json()
        location = sent.headers["location"]
    assert set(created) == PACK_FIELDS
    assert (created["org_id"], created["tag"]) == (str(org.id), None)
    assert created["created_by"] == f"user:{org.users['admin'].id}"
    assert location == f"{EVIDENCE}/{created['id']}"
    status, page, _ = await call(http, "GET", f"{proxy.url}{EVIDENCE}", token=tokens["analyst"])
    assert status == 200, page
    assert page == {"items": [created], "next_cursor": None}

    status, report, headers = await call(http, "GET", f"{proxy.url}/compliance/report", token=tokens["auditor"])
    assert status == 200, report
    request_id = headers["x-request-id"]
    for process in (proxy, stack.compliance):
        process.wait_for_log(lambda r: r.get("event") == "request" and r.get("request_id") == request_id)
    core_line = stack.core.wait_for_log(lambda r: r.get("request_id") == request_id and r.get("event") == "request")
    assert core_line["path"] == f"/internal/orgs/{org.id}/report-inputs"


async def test_a_pack_verifies_with_hashlib_and_the_published_key_and_a_flipped_byte_is_named(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_compliance(start_service, database_url)
    base = stack.compliance.url
    tokens = await role_tokens(http, stack.core_stack, org)
    status, answer, _ = await post_line(
        http, stack.core_stack, tokens["finance"], new_line(date=this_quarter(), paygw_amount="40.00")
    )
    assert status == 201, answer
    await insert_alert(database_url, org.id, severity="HIGH")
    before = await core_state(database_url)

    status, created, _ = await create_pack(http, base, tokens["finance"], {"tag": "Q4 review"})
    assert status == 201, created
    async with connect(database_url) as conn:
        records = await conn.fetch(
            "SELECT seq, hash, action, target, detail::text AS detail FROM audit.records WHERE org_id = $1 "
            "ORDER BY seq",
            org.id,
        )
    *earlier, own = records
    assert (own["action"], own["target"]) == ("evidence.create", f"evidence_pack:{created['id']}")
    assert orjson.loads(own["detail"]) == {
        "id": created["id"],
        "sha256": created["sha256"],
        "key_id": created["key_id"],
    }  # not the tag: free text

    # The envelope: the payload's bytes re-hash to the sha256 with hashlib, and the signature over that digest
    # verifies with the published key, with `cryptography` alone.
    status, envelope, _ = await call(http, "GET", f"{base}{EVIDENCE}/{created['id']}", token=tokens["analyst"])
    assert status == 200, envelope
    payload = base64.b64decode(envelope["payload_base64"])
    digest = hashlib.sha256(payload).digest()
    assert digest.hex() == envelope["sha256"] == created["sha256"]
    published, key_headers = await jwks(http, base)
    assert key_headers["cache-control"] == "public, max-age=300"
    jwk = published[envelope["key_id"]]
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", "Ed25519", "EdDSA")
    Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"])).verify(base64.b64decode(envelope["signature"]), digest)
    assert {k: envelope[k] for k in PACK_FIELDS} == created
    assert envelope["algorithm"] == "Ed25519"

    # The payload: one canonical JSON document naming the pack, its org and author, and the audit head before it.
    document = orjson.loads(payload)
    assert payload == orjson.dumps(document, option=orjson.OPT_SORT_KEYS)  # no whitespace, sorted keys
    assert (document["format"], document["id"], document["org_id"]) == (PACK_FORMAT, created["id"], str(org.id))
    assert (document["tag"], document["created_by"]) == ("Q4 review", created["created_by"])
    assert document["audit_head"] == {"seq": earlier[-1]["seq"], "hash": earlier[-1]["hash"]}
    assert [record["seq"] for record in document["audit"]] == [r["seq"] for r in reversed(earlier)][:25]
    assert document["audit"][0]["hash"] == earlier[-1]["hash"]
    assert document["report"]["org_id"] == str(org.id)
    assert document["obligations"] == document["report"]["obligations"]
    assert document["obligations"]["paygw"]["required"] == "40.00"
    assert {alert["severity"] for alert in document["alerts"]} >= {"HIGH"}
    assert document["snapshots"] == []

    # The download: the stored bytes themselves, with the digest and signature in headers.
    async with http.get(
        f"{base}{EVIDENCE}/{created['id']}",
        headers={"authorization": f"Bearer {tokens['auditor']}", "accept": "application/json"},
    ) as download:
        assert download.status == 200
        assert await download.read() == payload
        assert download.headers["content-type"] == "application/json"
        assert download.headers["content-disposition"] == f'attachment; filename="evidence-pack_{created["id"]}.json"'
        assert download.headers["x-evidence-sha256"] == created["sha256"]
        assert download.headers["x-evidence-signature"] == envelope["signature"]
        assert download.headers["x-evidence-key-id"] == created["key_id"]
        assert download.headers["repr-digest"] == f"sha-256=:{base64.b64encode(digest).decode()}:"

    answer = await verdict(http, base, tokens["analyst"], created["id"])
    assert (answer["valid"], answer["failed"], answer["reason"]) == (True, None, None)
    assert checks(answer) == {"sha256": True, "key": True, "signature": True, "payload": True}

    # One byte of the stored payload flipped: the digest no longer matches, nor does the signature.
    async with connect(database_url) as conn:
        await conn.execute(
            "UPDATE compliance.evidence_packs SET payload = set_byte(payload, 40, get_byte(payload, 40) # 1) "
            "WHERE id = $1",
            uuid.UUID(created["id"]),
        )
    answer = await verdict(http, base, tokens["analyst"], created["id"])
    assert (answer["valid"], answer["failed"]) == (False, "sha256")
    assert checks(answer)["signature"] is False
    assert "sha256" in answer["reason"]
    # The stored sha256 edited alone: that check fails, the signature (over the payload's real digest) holds.
    async with connect(database_url) as conn:
        await conn.execute(
            "UPDATE compliance.evidence_packs SET payload = $2, sha256 = $3 WHERE id = $1",
            uuid.UUID(created["id"]),
            payload,
            "0" * 64,
        )
    answer = await verdict(http, base, tokens["analyst"], created["id"])
    assert (answer["valid"], answer["failed"]) == (False, "sha256")
    assert checks(answer) == {"sha256": False, "key": True, "signature": True, "payload": True}

    # A report and a pack (and the reads above) changed nothing of core's.
    status, _, _ = await call(http, "GET", f"{base}/compliance/report", token=tokens["admin"])
    assert status == 200
    assert await core_state(database_url) == before

    metrics = await (await http.get(f"{base}/metrics")).text()
    assert 'apgms_job_duration_seconds_count{job="evidence_pack"} 1.0' in metrics


async def wait_for_new_key(http: aiohttp.ClientSession, stack: ComplianceStack, kids: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + KEY_CACHE_TTL_S + 5
    while time.monotonic() < deadline:
        published, _ = await jwks(http, stack.compliance.url)
        if set(published) > kids:
            return published
        await asyncio.sleep(0.25)
    raise AssertionError("the rotated key was not published in time")


async def test_a_pack_signed_before_a_key_rotation_still_verifies_after_it(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_compliance(start_service, database_url)
    base = stack.compliance.url
    tokens = await role_tokens(http, stack.core_stack, org)
    status, first, _ = await create_pack(http, base, tokens["auditor"])
    assert status == 201, first
    async with connect(database_url) as conn:
        old, new = await rotate(conn, SecretBox(Secret(os.environ["APGMS_MASTER_KEY"])))
    assert old == first["key_id"]

    published = await wait_for_new_key(http, stack, {old})
    assert set(published) == {old, new}
    status, second, _ = await create_pack(http, base, tokens["auditor"])
    assert status == 201, second
    assert second["key_id"] == new
    for pack in (first, second):
        answer = await verdict(http, base, tokens["analyst"], pack["id"])
        assert answer["valid"] is True, answer
        assert answer["key_id"] == pack["key_id"]
        status, envelope, _ = await call(http, "GET", f"{base}{EVIDENCE}/{pack['id']}", token=tokens["analyst"])
        digest = hashlib.sha256(base64.b64decode(envelope["payload_base64"])).digest()
        key = Ed25519PublicKey.from_public_bytes(b64url_decode(published[pack["key_id"]]["x"]))
        key.verify(base64.b64decode(envelope["signature"]), digest)


async def test_bad_ids_bodies_tags_roles_and_replays(
    start_service: StartService, database_url: str, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_compliance(start_service, database_url)
    base = stack.compliance.url
    tokens = await role_tokens(http, stack.core_stack, org)
    others = await role_tokens(http, stack.core_stack, other_org)
    status, theirs, _ = await create_pack(http, base, others["admin"])
    assert status == 201, theirs

    for pack_id in (theirs["id"], str(uuid.uuid4()), "not-a-uuid", "123", "%00"):
        for suffix in ("", "/verify"):
            status, problem, _ = await call(http, "GET", f"{base}{EVIDENCE}/{pack_id}{suffix}", token=tokens["admin"])
            assert (status, problem["code"]) == (404, "not_found"), (pack_id, suffix, problem)

    bad_tags: list[Any] = ["x" * 101, "", "line\nbreak", "esc\x1b[31m", "del\x7f", "c1\x85", 5, ["a"], None]
    for tag in bad_tags:
        status, problem, _ = await create_pack(http, base, tokens["admin"], {"tag": tag})
        if tag is None:  # an explicit null is "no tag"
            assert status == 201, problem
            continue
        assert (status, problem["code"]) == (400, "invalid_body"), (tag, problem)
        assert [error["path"] for error in problem["errors"]] == ["tag"], problem
    raw_bodies: list[tuple[bytes, str, int, str]] = [
        (b"not json", "application/json", 400, "invalid_body"),
        (b"[]", "application/json", 400, "invalid_body"),
        (b"null", "application/json", 400, "invalid_body"),
        (b'"tag"', "application/json", 400, "invalid_body"),
        (b'{"tag": "ok", "extra": 1}', "application/json", 400, "invalid_body"),
        (b"tag=ok", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ]
    for raw, content_type, expected, code in raw_bodies:
        status, problem, _ = await call(
            http, "POST", f"{base}{EVIDENCE}", token=tokens["admin"], data=raw, headers={"content-type": content_type}
        )
        assert (status, problem["code"]) == (expected, code), (raw, problem)
    assert await pack_rows(database_url, org.id) == 1  # the null tag's only

    status, ok, _ = await create_pack(http, base, tokens["admin"], {"tag": "x" * 100})
    assert (status, ok["tag"]) == (201, "x" * 100)
    status, ok, _ = await create_pack(http, base, tokens["admin"], {})
    assert (status, ok["tag"]) == (201, None)

    status, problem, _ = await create_pack(http, base, tokens["analyst"])
    assert (status, problem["code"]) == (403, "forbidden")
    for method, path in (("POST", EVIDENCE), ("GET", EVIDENCE), ("GET", f"{EVIDENCE}/{ok['id']}")):
        status, problem, _ = await call(http, method, f"{base}{path}")
        assert (status, problem["code"]) == (401, "unauthorized"), path
    for role in ROLES:
        status, _, _ = await call(http, "GET", f"{base}{EVIDENCE}/{ok['id']}/verify", token=tokens[role])
        assert status == 200, role
    assert await pack_rows(database_url, org.id) == 3

    # The same Idempotency-Key again is the same pack, replayed; with another tag it is a conflict.
    key = {"idempotency-key": "pack-once-1"}
    status, made, headers = await create_pack(http, base, tokens["finance"], {"tag": "once"}, **key)
    assert status == 201 and "idempotent-replay" not in headers
    status, again, headers = await create_pack(http, base, tokens["finance"], {"tag": "once"}, **key)
    assert (status, again, headers["idempotent-replay"]) == (201, made, "true")
    status, problem, _ = await create_pack(http, base, tokens["finance"], {"tag": "twice"}, **key)
    assert (status, problem["code"]) == (409, "idempotency_conflict")
    assert await pack_rows(database_url, org.id) == 4

    # The listing: newest first, in pages, never another org's, never a payload.
    status, first, _ = await call(http, "GET", f"{base}{EVIDENCE}?limit=3", token=tokens["analyst"])
    assert status == 200, first
    assert first["items"][0] == made
    assert all(set(item) == PACK_FIELDS for item in first["items"])
    status, rest, _ = await call(
        http, "GET", f"{base}{EVIDENCE}", params={"cursor": first["next_cursor"]}, token=tokens["analyst"]
    )
    assert (status, len(rest["items"]), rest["next_cursor"]) == (200, 1, None)
    listed = [item["id"] for item in first["items"] + rest["items"]]
    assert len(set(listed)) == 4 and theirs["id"] not in listed
    created = [item["created_at"] for item in first["items"] + rest["items"]]
    assert created == sorted(created, reverse=True)
    for query in ("limit=0", "limit=201", "cursor=garbage", "other=1"):
        status, problem, _ = await call(http, "GET", f"{base}{EVIDENCE}?{query}", token=tokens["analyst"])
        assert (status, problem["code"]) == (400, "invalid_query"), query
