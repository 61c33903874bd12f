"""Signed audit checkpoints on a real stack: the schedule checkpoints every org whose head moved and no other, writes
no audit record, and the on-demand route answers 201 with a new checkpoint (audited) or 200 with the one that
already covers the head; the signed payload verifies with the published key and records the rows since the last.
No checkpoint is signed over a chain broken since the last one (or since seq 1, for an org's first): the route
answers 409 naming the record, the schedule skips the org with an error line and a security event."""

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
from test_compliance_audit import rewrite_and_recompute, tamper, write_records

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


async def audit_row_count(database_url: str, org_id: uuid.UUID) -> int:
    async with connect(database_url) as conn:
        count: int = await conn.fetchval("SELECT count(*) FROM audit.records WHERE org_id = $1", org_id)
    return count


async def test_an_on_demand_checkpoint_over_a_broken_chain_is_refused_and_writes_nothing(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org, other_org: Org
) -> None:
    stack = start_compliance(start_service, database_url)
    tokens = {o.id: await role_tokens(http, stack.core_stack, o) for o in (org, other_org)}
    url = f"{stack.compliance.url}/audit/checkpoints"

    # One checkpoint, then more records, one of them edited in the database after it was written.
    await write_records(database_url, org.id, 3)
    status, first, _ = await call(http, "POST", url, token=tokens[org.id]["auditor"])
    assert status == 201, first
    head = await write_records(database_url, org.id, 3)
    edited = first["seq"] + 3
    assert first["seq"] < edited < head
    await tamper(
        database_url,
        (
            "UPDATE audit.records SET detail = '{\"i\": 99}'::jsonb WHERE org_id = $1 AND seq = $2",
            (org.id, edited),
        ),
    )
    before = (await checkpoints_of(database_url, org.id), await audit_row_count(database_url, org.id))
    for role in ("auditor", "admin"):
        status, body, _ = await call(http, "POST", url, token=tokens[org.id][role])
        assert status == 409 and body["code"] == "conflict", body
        assert f"broken at record {edited} (row {edited} was edited)" in body["detail"]
        assert "GET /audit/verify" in body["detail"]
    # Nothing signed, stored or audited; /audit/verify names the same record.
    assert (await checkpoints_of(database_url, org.id), await audit_row_count(database_url, org.id)) == before
    status, verdict, _ = await call(http, "GET", f"{stack.compliance.url}/audit/verify", token=tokens[org.id]["admin"])
    assert status == 200 and verdict["broken"]["seq"] == edited, verdict

    # A rewrite with every later hash recomputed links in itself, but not from the signed head: refused where the
    # chain leaves the checkpoint.
    await write_records(database_url, other_org.id, 3)
    status, second, _ = await call(http, "POST", url, token=tokens[other_org.id]["admin"])
    assert status == 201, second
    await write_records(database_url, other_org.id, 2)
    await rewrite_and_recompute(database_url, other_org.id, second["seq"] - 1)
    before = (await checkpoints_of(database_url, other_org.id), await audit_row_count(database_url, other_org.id))
    status, body, _ = await call(http, "POST", url, token=tokens[other_org.id]["auditor"])
    assert status == 409, body
    after_checkpoint = second["seq"] + 1
    assert (
        f"broken at record {after_checkpoint} (row {after_checkpoint} does not follow row {second['seq']})"
        in (body["detail"])
    )
    assert (await checkpoints_of(database_url, other_org.id), await audit_row_count(database_url, other_org.id)) == (
        before
    )

    status, metrics, _ = await call(http, "GET", f"{stack.compliance.url}/metrics")
    assert 'security_events_total{event="audit_chain_broken"} 3.0' in metrics


async def test_an_orgs_first_checkpoint_checks_its_chain_from_the_first_record(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org
) -> None:
    stack = start_compliance(start_service, database_url)
    tokens = await role_tokens(http, stack.core_stack, org)
    await write_records(database_url, org.id, 4)
    await tamper(database_url, ("DELETE FROM audit.records WHERE org_id = $1 AND seq = 2", (org.id,)))
    status, body, _ = await call(http, "POST", f"{stack.compliance.url}/audit/checkpoints", token=tokens["admin"])
    assert status == 409, body
    assert "broken at record 2 (seq gap: expected 2, found 3)" in body["detail"]
    assert await checkpoints_of(database_url, org.id) == []
    assert await audit_row_count(database_url, org.id) == 3


async def test_the_schedule_skips_an_org_whose_chain_broke_since_its_checkpoint_and_goes_on_with_the_others(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org, other_org: Org
) -> None:
    stack = start_compliance(start_service, database_url, {"AUDIT_CHECKPOINT_INTERVAL_S": "1"})
    head = await write_records(database_url, org.id, 3)
    await wait_for_checkpoint(database_url, org.id, head)

    # The checkpointed head row is rewritten (its hash recomputed) and a record appended after it: the new record
    # links from the forged row, not from the signed head.
    await rewrite_and_recompute(database_url, org.id, head)
    await write_records(database_url, org.id, 1)
    line = await stack.compliance.wait_for_log_async(
        lambda record: record.get("event") == "audit_chain_broken" and record.get("org_id") == str(org.id)
    )
    assert line["seq"] == head + 1
    assert line["reason"] == f"row {head + 1} does not follow row {head}"
    await stack.compliance.wait_for_log_async(
        lambda record: (
            record.get("event") == "security_event"
            and record.get("security.event") == "audit_chain_broken"
            and record.get("org_id") == str(org.id)
        )
    )

    # The run goes on: another org's moved head is still checkpointed, and the broken org gets none, run after run.
    other_head = await write_records(database_url, other_org.id, 2)
    await wait_for_checkpoint(database_url, other_org.id, other_head)
    await asyncio.sleep(2.5)
    assert [row[0] for row in await checkpoints_of(database_url, org.id)] == [head]
    status, metrics, _ = await call(http, "GET", f"{stack.compliance.url}/metrics")
    assert status == 200
    counted = next(
        line for line in metrics.splitlines() if line.startswith('security_events_total{event="audit_chain_broken"}')
    )
    assert float(counted.split()[-1]) >= 2  # refused again by every later run
