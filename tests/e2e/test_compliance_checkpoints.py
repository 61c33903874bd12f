"""Signed audit checkpoints on a real stack: the schedule checkpoints every org whose head moved and no other, writes
no audit record, and the on-demand route answers 201 with a new checkpoint (audited) or 200 with the one that
already covers the head; the signed payload verifies with the published key and records the rows since the last."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from typing import Any

import aiohttp
import orjson
from auth_support import Org, call
from compliance_support import start_compliance
from core_support import StartService, connect, role_tokens
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from test_compliance_audit import write_records

from services.compliance.signing import b64url_decode
from shared import audit

WAIT_S = 15.0


async def checkpoints_of(database_url: str, org_id: uuid.UUID) -> list[tuple[int, str, bytes, str, str]]:
    async with connect(database_url) as conn:
        rows = await conn.fetch(
            "SELECT seq, created_by, payload, signature, key_id FROM compliance.audit_checkpoints "
            "WHERE org_id = $1 ORDER BY seq",
            org_id,
        )
    return [(row["seq"], row["created_by"], row["payload"], row["signature"], row["key_id"]) for row in rows]


async def head_seq(database_url: str, org_id: uuid.UUID) -> int:
    async with connect(database_url) as conn:
        head = await audit.last_record(conn, org_id)
    return 0 if head is None else head.seq


async def wait_for_checkpoint(database_url: str, org_id: uuid.UUID, seq: int) -> list[Any]:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        rows = await checkpoints_of(database_url, org_id)
        if any(row[0] == seq for row in rows):
            return rows
        assert asyncio.get_running_loop().time() < deadline, f"no checkpoint of seq {seq}: {rows}"
        await asyncio.sleep(0.2)


async def test_scheduled_checkpoints_cover_moved_heads_once_and_write_no_audit_record(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org, other_org: Org
) -> None:
    stack = start_compliance(start_service, database_url, {"AUDIT_CHECKPOINT_INTERVAL_S": "1"})
    tokens = await role_tokens(http, stack.core_stack, org)
    await write_records(database_url, org.id, 3)
    await write_records(database_url, other_org.id, 5)
    heads = {o.id: await head_seq(database_url, o.id) for o in (org, other_org)}
    for org_id, seq in heads.items():
        rows = await wait_for_checkpoint(database_url, org_id, seq)
        assert [row[1] for row in rows] == ["system"] * len(rows)

    # Unchanged heads: runs go on (logged), no new checkpoint, and the schedule wrote no audit record.
    await stack.compliance.wait_for_log_async(
        lambda line: line.get("event") == "audit_checkpoints" and line.get("taken") == 0
    )
    await asyncio.sleep(2.5)
    before = {o.id: await checkpoints_of(database_url, o.id) for o in (org, other_org)}
    assert {org_id: rows[-1][0] for org_id, rows in before.items()} == heads
    assert {o.id: await head_seq(database_url, o.id) for o in (org, other_org)} == heads

    # One org's head moves: it alone gets a new checkpoint, recording the rows since the previous one.
    moved = await write_records(database_url, org.id, 2)
    rows = await wait_for_checkpoint(database_url, org.id, moved)
    assert [row[0] for row in rows] == [row[0] for row in before[org.id]] + [moved]
    payload = orjson.loads(rows[-1][2])
    assert payload["head"]["seq"] == moved
    assert [link["seq"] for link in payload["rows"]] == [heads[org.id] + 1, moved]
    assert await checkpoints_of(database_url, other_org.id) == before[other_org.id]

    # The signed payload verifies with the published key, with plain hashlib and cryptography.
    status, jwks, _ = await call(http, "GET", f"{stack.compliance.url}/compliance/.well-known/evidence-keys.json")
    assert status == 200
    _, _, payload_bytes, signature, key_id = rows[-1]
    jwk = next(key for key in jwks["keys"] if key["kid"] == key_id)
    Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"])).verify(
        base64.b64decode(signature), hashlib.sha256(payload_bytes).digest()
    )

    # The head is covered: asking for a checkpoint now answers the existing one, 200, and writes nothing.
    status, body, _ = await call(http, "POST", f"{stack.compliance.url}/audit/checkpoints", token=tokens["auditor"])
    assert status == 200, body
    assert body["seq"] == moved and body["created_by"] == "system"
    assert await head_seq(database_url, org.id) == moved

    status, metrics, _ = await call(http, "GET", f"{stack.compliance.url}/metrics")
    assert status == 200
    assert 'apgms_job_duration_seconds_count{job="checkpoint"}' in metrics


async def test_on_demand_checkpoints_are_audited_and_listed_newest_first(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org
) -> None:
    stack = start_compliance(start_service, database_url)
    tokens = await role_tokens(http, stack.core_stack, org)
    await write_records(database_url, org.id, 2)
    url = f"{stack.compliance.url}/audit/checkpoints"
    made: list[dict[str, Any]] = []
    for role in ("admin", "auditor", "admin"):
        head = await head_seq(database_url, org.id)
        status, body, _ = await call(http, "POST", url, token=tokens[role])
        assert status == 201, body
        assert body["seq"] == head  # the head before its own record
        assert body["created_by"] == f"user:{org.users[role].id}"
        made.append(body)
        async with connect(database_url) as conn:
            record = await audit.last_record(conn, org.id)
        assert record is not None and record.seq == head + 1
        assert (record.action, record.target) == ("audit.checkpoint", f"audit_checkpoint:{body['id']}")
        assert record.detail == {k: body[k] for k in ("id", "seq", "hash", "sha256", "key_id")}

    for role in ("finance", "analyst"):
        status, body, _ = await call(http, "POST", url, token=tokens[role])
        assert status == 403 and body["code"] == "forbidden"

    listed: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        status, page, _ = await call(http, "GET", url, token=tokens["auditor"], params=params)
        assert status == 200, page
        listed.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [item["id"] for item in listed] == [item["id"] for item in reversed(made)]
    status, page, _ = await call(http, "GET", url, token=tokens["admin"], params={"cursor": "garbage!"})
    assert status == 400 and page["code"] == "invalid_query"
