"""Chained checkpoints on a real stack: each checkpoint's signed payload names the org's previous one ({id, sha256},
null for the first), so /audit/verify reports a checkpoint deleted from the middle of the sequence or replaced; a new
checkpoint is signed only after the org's latest one verifies (its digest, key and signature), else 409 and nothing
is written. /audit/verify re-reads the keys when a checkpoint names a kid it does not know (a rotation made by
another process within the key cache's lifetime)."""

from __future__ import annotations

import os
import uuid
from typing import Any

import aiohttp
import asyncpg
import orjson
from auth_support import Org, call
from compliance_support import start_compliance
from core_support import StartService, connect, role_tokens
from test_compliance_audit import tamper, write_records

from services.compliance.checkpoints import take_checkpoint
from services.compliance.keys import EvidenceKeys, rotate
from shared.config import Secret
from shared.crypto import SecretBox


async def checkpoint_rows(database_url: str, org_id: uuid.UUID) -> list[Any]:
    async with connect(database_url) as conn:
        return list(
            await conn.fetch(
                "SELECT id, seq, sha256, signature, payload FROM compliance.audit_checkpoints "
                "WHERE org_id = $1 ORDER BY seq",
                org_id,
            )
        )


async def test_checkpoints_chain_and_a_deleted_middle_one_or_an_untrusted_latest_one_is_reported(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org
) -> None:
    stack = start_compliance(start_service, database_url)
    tokens = await role_tokens(http, stack.core_stack, org)
    base = stack.compliance.url
    await write_records(database_url, org.id, 3)
    for _ in range(3):  # each on-demand checkpoint is audited, so the head moves between them
        status, body, _ = await call(http, "POST", f"{base}/audit/checkpoints", token=tokens["auditor"])
        assert status == 201, body

    rows = await checkpoint_rows(database_url, org.id)
    payloads = [orjson.loads(row["payload"]) for row in rows]
    assert payloads[0]["previous"] is None
    for before, payload in zip(rows, payloads[1:], strict=False):
        assert payload["previous"] == {"id": str(before["id"]), "sha256": before["sha256"]}
    status, verdict, _ = await call(http, "GET", f"{base}/audit/verify", token=tokens["admin"])
    assert status == 200 and verdict["ok"] is True, verdict
    assert verdict["anchors"]["used"] == 3

    # The middle checkpoint deleted: the one after it still names it, so /audit/verify reports it missing.
    middle, last = rows[1], rows[2]
    await tamper(database_url, ("DELETE FROM compliance.audit_checkpoints WHERE id = $1", (middle["id"],)))
    status, verdict, _ = await call(http, "GET", f"{base}/audit/verify", token=tokens["auditor"])
    assert status == 200 and verdict["ok"] is False, verdict
    assert verdict["broken"] is None and verdict["anchors"]["used"] == 2
    [missing] = verdict["invalid_anchors"]
    assert (missing["kind"], missing["id"], missing["check"]) == ("checkpoint", str(middle["id"]), "chain")
    assert f"signed checkpoint {last['id']} (head record {last['seq']})" in missing["reason"]
    assert "deleted" in missing["reason"]

    # The latest checkpoint's row tampered with (another checkpoint's signature): no new checkpoint trusts it.
    await write_records(database_url, org.id, 2)
    await tamper(
        database_url,
        (
            "UPDATE compliance.audit_checkpoints SET signature = $2 WHERE id = $1",
            (last["id"], rows[0]["signature"]),
        ),
    )
    async with connect(database_url) as conn:
        audit_rows = await conn.fetchval("SELECT count(*) FROM audit.records WHERE org_id = $1", org.id)
    status, body, _ = await call(http, "POST", f"{base}/audit/checkpoints", token=tokens["admin"])
    assert status == 409 and body["code"] == "conflict", body
    assert f"signed checkpoint {last['id']} (head record {last['seq']}) fails its own verification" in body["detail"]
    assert "signature: the signature does not verify" in body["detail"]
    assert [row["id"] for row in await checkpoint_rows(database_url, org.id)] == [rows[0]["id"], last["id"]]
    async with connect(database_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM audit.records WHERE org_id = $1", org.id) == audit_rows


async def test_verify_rereads_the_keys_when_a_checkpoint_names_a_kid_rotated_in_a_moment_ago(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org
) -> None:
    stack = start_compliance(start_service, database_url)
    tokens = await role_tokens(http, stack.core_stack, org)
    base = stack.compliance.url
    await write_records(database_url, org.id, 3)
    status, first, _ = await call(http, "POST", f"{base}/audit/checkpoints", token=tokens["auditor"])
    assert status == 201, first  # the service has the keys cached now, for KEY_CACHE_TTL_S

    # Another process (the CLI, another replica) rotates the key and signs a checkpoint with the new one.
    box = SecretBox(Secret(os.environ["APGMS_MASTER_KEY"]))
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            _, new_kid = await rotate(conn, box)
            await write_records(database_url, org.id, 1)
            taken = await take_checkpoint(conn, EvidenceKeys(pool, box), org.id, "system")
    finally:
        await pool.close()
    assert taken is not None and taken.checkpoint.key_id == new_kid

    status, verdict, _ = await call(http, "GET", f"{base}/audit/verify", token=tokens["admin"])
    assert status == 200, verdict
    assert verdict["invalid_anchors"] == [] and verdict["ok"] is True, verdict
    assert verdict["anchors"]["used"] == 2
