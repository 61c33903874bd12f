"""Only a pack's or a checkpoint's payload is signed; its row shows the id, org, creation time, author and tag (a
checkpoint: its head) beside it. An edit of any of those in the database, by whoever can write it, is named by
GET /compliance/evidence/{id}/verify (check `payload`) and makes the document an invalid anchor of /audit/verify."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest
from auth_support import Org, call
from compliance_support import start_compliance
from core_support import StartService, connect, role_tokens
from test_compliance_audit import write_records

pytestmark = pytest.mark.e2e


async def test_an_edited_row_field_fails_the_payload_check_naming_it(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_compliance(start_service, database_url)
    base = stack.compliance.url
    token = (await role_tokens(http, stack.core_stack, org))["admin"]
    await write_records(database_url, org.id, 3)
    status, pack, _ = await call(http, "POST", f"{base}/compliance/evidence", token=token, json={"tag": "Q3"})
    assert status == 201, pack
    status, checkpoint, _ = await call(http, "POST", f"{base}/audit/checkpoints", token=token)
    assert status == 201, checkpoint
    pack_id, checkpoint_id = uuid.UUID(pack["id"]), uuid.UUID(checkpoint["id"])

    async def pack_verdict() -> dict[str, Any]:
        status, verdict, _ = await call(http, "GET", f"{base}/compliance/evidence/{pack_id}/verify", token=token)
        assert status == 200, verdict
        return dict(verdict)

    async def chain_verdict() -> dict[str, Any]:
        status, verdict, _ = await call(http, "GET", f"{base}/audit/verify", token=token)
        assert status == 200, verdict
        return dict(verdict)

    assert (await pack_verdict())["valid"] is True
    assert (await chain_verdict())["anchors"]["used"] == 2

    edits = {
        "tag": ("tag = 'EDITED'", "the payload's tag is not EDITED"),
        "tag (null)": ("tag = NULL", "the payload's tag is not null"),
        "created_by": ("created_by = 'user:evil'", "the payload's created_by is not user:evil"),
        "created_at": ("created_at = '2001-01-01T00:00:00Z'", "the payload's created_at is not 2001-01-01T00:00:00"),
    }
    for name, (assignment, reason) in edits.items():
        async with connect(database_url) as conn:
            original = await conn.fetchrow(
                "SELECT tag, created_by, created_at FROM compliance.evidence_packs WHERE id = $1", pack_id
            )
            await conn.execute(f"UPDATE compliance.evidence_packs SET {assignment} WHERE id = $1", pack_id)  # noqa: S608
        verdict = await pack_verdict()
        assert (verdict["valid"], verdict["failed"]) == (False, "payload"), (name, verdict)
        assert verdict["reason"].startswith(reason), (name, verdict)
        chain = await chain_verdict()
        assert chain["ok"] is False and chain["broken"] is None, name
        assert [(item["kind"], item["id"], item["check"]) for item in chain["invalid_anchors"]] == [
            ("pack", str(pack_id), "payload")
        ], name
        async with connect(database_url) as conn:
            await conn.execute(
                "UPDATE compliance.evidence_packs SET tag = $2, created_by = $3, created_at = $4 WHERE id = $1",
                pack_id,
                *original,
            )
        assert (await pack_verdict())["valid"] is True, name

    checkpoint_edits = {
        "created_by": ("created_by = 'user:evil'", "the payload's created_by is not user:evil"),
        "created_at": ("created_at = '2001-01-01T00:00:00Z'", "the payload's created_at is not 2001-01-01"),
        "seq": ("seq = seq - 1", f"the payload's head is record {checkpoint['seq']}, not the record"),
        "hash": ("hash = repeat('0', 64)", "the payload's head hash is not the 0000"),
    }
    async with connect(database_url) as conn:
        signed = await conn.fetchrow(
            "SELECT created_by, created_at, seq, hash FROM compliance.audit_checkpoints WHERE id = $1", checkpoint_id
        )
    for name, (assignment, reason) in checkpoint_edits.items():
        async with connect(database_url) as conn:
            await conn.execute(f"UPDATE compliance.audit_checkpoints SET {assignment} WHERE id = $1", checkpoint_id)  # noqa: S608
        chain = await chain_verdict()
        assert chain["ok"] is False and chain["broken"] is None, name
        invalid = [item for item in chain["invalid_anchors"] if item["kind"] == "checkpoint"]
        assert [(item["id"], item["check"]) for item in invalid] == [(str(checkpoint_id), "payload")], (name, chain)
        assert invalid[0]["reason"].startswith(reason), (name, invalid)
        async with connect(database_url) as conn:
            await conn.execute(
                "UPDATE compliance.audit_checkpoints SET created_by = $2, created_at = $3, seq = $4, hash = $5 "
                "WHERE id = $1",
                checkpoint_id,
                *signed,
            )
        assert (await chain_verdict())["ok"] is True, name
