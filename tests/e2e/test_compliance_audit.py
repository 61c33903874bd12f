"""GET /audit and GET /audit/verify on a real stack: tampering with audit rows in the database (edit, delete, swap,
a rewrite with every later hash recomputed, a cut tail) is named by /audit/verify, against the signed checkpoints
and packs that cover it; a tampered checkpoint or pack is reported and not trusted; the listing filters and pages."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from auth_support import Org, call, create_org
from compliance_support import ComplianceStack, start_compliance
from core_support import StartService, connect, role_tokens

from shared import audit

RECORDS = 12


async def write_records(database_url: str, org_id: uuid.UUID, count: int = RECORDS, action: str = "test.write") -> int:
    """Append `count` records to the org's chain; the head's seq after them."""
    async with connect(database_url) as conn:
        for index in range(count):
            async with conn.transaction():
                await audit.append(
                    conn, org_id=org_id, actor="system", action=action, target=f"thing:{index}", detail={"i": index}
                )
        head = await audit.last_record(conn, org_id)
    assert head is not None
    return head.seq


async def tamper(database_url: str, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Run the statements with the table's triggers off, as whoever can write the database would."""
    async with connect(database_url) as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        for statement, args in statements:
            await conn.execute(statement, *args)


async def rewrite_and_recompute(database_url: str, org_id: uuid.UUID, seq: int) -> None:
    """Change record `seq`'s target and recompute its hash and every later one, so that every link holds."""
    async with connect(database_url) as conn:
        rows = [row async for row in audit.records(conn, org_id)]
    prev = rows[seq - 2].hash if seq > 1 else audit.GENESIS_HASH
    statements = []
    for row in rows[seq - 1 :]:
        changed = dataclasses.replace(row, prev_hash=prev)
        if row.seq == seq:
            changed = dataclasses.replace(changed, target="thing:forged")
        changed = dataclasses.replace(changed, hash=audit.chain_hash(changed.prev_hash, audit.hashed_fields(changed)))
        statements.append(
            (
                "UPDATE audit.records SET target = $3, prev_hash = $4, hash = $5 WHERE org_id = $1 AND seq = $2",
                (org_id, row.seq, changed.target, changed.prev_hash, changed.hash),
            )
        )
        prev = changed.hash
    await tamper(database_url, *statements)


async def verify(http: aiohttp.ClientSession, stack: ComplianceStack, token: str) -> dict[str, Any]:
    status, body, _ = await call(http, "GET", f"{stack.compliance.url}/audit/verify", token=token)
    assert status == 200, body
    return dict(body)


async def test_verify_names_an_edited_a_deleted_and_a_swapped_row(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org, other_org: Org
) -> None:
    stack = start_compliance(start_service, database_url)
    third = await create_org(database_url, "Third Org")
    tokens = {o.id: (await role_tokens(http, stack.core_stack, o))["auditor"] for o in (org, other_org, third)}
    heads = {o.id: await write_records(database_url, o.id) for o in (org, other_org, third)}

    intact = await verify(http, stack, tokens[org.id])
    assert intact["ok"] is True and intact["broken"] is None
    assert intact["checked"] == heads[org.id]
    assert intact["head"]["seq"] == heads[org.id]
    assert intact["anchors"] == {"used": 0, "latest_seq": None} and intact["invalid_anchors"] == []

    edited = heads[org.id] - 5
    await tamper(
        database_url, ("UPDATE audit.records SET target = 'x' WHERE org_id = $1 AND seq = $2", (org.id, edited))
    )
    deleted = heads[other_org.id] - 4
    await tamper(database_url, ("DELETE FROM audit.records WHERE org_id = $1 AND seq = $2", (other_org.id, deleted)))
    swapped = heads[third.id] - 3
    swap = "UPDATE audit.records SET seq = $3 WHERE org_id = $1 AND seq = $2"
    await tamper(
        database_url,
        (swap, (third.id, swapped, 1_000_000)),
        (swap, (third.id, swapped + 1, swapped)),
        (swap, (third.id, 1_000_000, swapped + 1)),
    )

    for org_id, seq, reason in (
        (org.id, edited, f"row {edited} was edited"),
        (other_org.id, deleted, f"seq gap: expected {deleted}, found {deleted + 1}"),
        (third.id, swapped, f"row {swapped} was edited"),
    ):
        verdict = await verify(http, stack, tokens[org_id])
        assert verdict["ok"] is False
        assert verdict["broken"] == {"seq": seq, "reason": reason, "earliest_seq": None}
        assert verdict["checked"] == seq - 1


async def test_a_recomputed_rewrite_is_caught_only_once_a_checkpoint_or_pack_covers_it(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org, other_org: Org
) -> None:
    stack = start_compliance(start_service, database_url)
    third = await create_org(database_url, "Third Org")
    tokens = {o.id: await role_tokens(http, stack.core_stack, o) for o in (org, other_org, third)}
    heads = {o.id: await write_records(database_url, o.id) for o in (org, other_org, third)}

    # No anchor: a rewrite whose later hashes were recomputed links, and nothing can tell.
    await rewrite_and_recompute(database_url, org.id, heads[org.id] - 3)
    unanchored = await verify(http, stack, tokens[org.id]["admin"])
    assert unanchored["ok"] is True and unanchored["checked"] == heads[org.id]

    # A checkpoint records every row up to its head: the rewritten row itself is named.
    status, checkpoint, _ = await call(
        http, "POST", f"{stack.compliance.url}/audit/checkpoints", token=tokens[other_org.id]["auditor"]
    )
    assert status == 201, checkpoint
    assert checkpoint["seq"] == heads[other_org.id]
    target = heads[other_org.id] - 3
    await rewrite_and_recompute(database_url, other_org.id, target)
    verdict = await verify(http, stack, tokens[other_org.id]["auditor"])
    assert verdict["ok"] is False
    assert verdict["anchors"] == {"used": 1, "latest_seq": heads[other_org.id]}
    assert verdict["broken"]["seq"] == target and verdict["broken"]["earliest_seq"] is None
    assert verdict["broken"]["reason"] == (
        f"record {target} was changed after signed checkpoint {checkpoint['id']} "
        f"(head record {heads[other_org.id]}) covered it (its hash differs)"
    )

    # A pack records its 25 newest rows and its head: the same, through the evidence route.
    status, pack, _ = await call(
        http, "POST", f"{stack.compliance.url}/compliance/evidence", token=tokens[third.id]["admin"]
    )
    assert status == 201, pack
    pack_head = heads[third.id]
    target = pack_head - 2
    await rewrite_and_recompute(database_url, third.id, target)
    verdict = await verify(http, stack, tokens[third.id]["auditor"])
    assert verdict["broken"]["seq"] == target, verdict
    assert verdict["broken"]["reason"].startswith(f"record {target} was changed after evidence pack {pack['id']}")

    # Cutting the tail after a checkpoint: the chain no longer reaches the signed head.
    status, second, _ = await call(
        http, "POST", f"{stack.compliance.url}/audit/checkpoints", token=tokens[org.id]["auditor"]
    )
    assert status == 201, second
    cut_from = second["seq"] - 1
    await tamper(database_url, ("DELETE FROM audit.records WHERE org_id = $1 AND seq >= $2", (org.id, cut_from)))
    verdict = await verify(http, stack, tokens[org.id]["auditor"])
    assert verdict["ok"] is False
    assert verdict["checked"] == cut_from - 1
    assert verdict["broken"]["seq"] == cut_from
    assert verdict["broken"]["reason"] == (
        f"the chain ends at record {cut_from - 1} but signed checkpoint {second['id']} (head record "
        f"{second['seq']}) records record {second['seq']}: records were deleted from the tail"
    )


async def test_a_tampered_checkpoint_or_pack_is_reported_and_not_used_as_an_anchor(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org
) -> None:
    stack = start_compliance(start_service, database_url)
    tokens = await role_tokens(http, stack.core_stack, org)
    await write_records(database_url, org.id)
    base = stack.compliance.url
    status, pack, _ = await call(http, "POST", f"{base}/compliance/evidence", token=tokens["admin"])
    assert status == 201, pack
    status, checkpoint, _ = await call(http, "POST", f"{base}/audit/checkpoints", token=tokens["admin"])
    assert status == 201, checkpoint
    assert (await verify(http, stack, tokens["admin"]))["anchors"]["used"] == 2

    async with connect(database_url) as conn:
        await conn.execute(
            "UPDATE compliance.evidence_packs SET payload = overlay(payload placing '\\x20'::bytea from 10) "
            "WHERE id = $1",
            uuid.UUID(pack["id"]),
        )
        await conn.execute(
            "UPDATE compliance.audit_checkpoints SET signature = $2 WHERE id = $1",
            uuid.UUID(checkpoint["id"]),
            "A" * 86 + "==",
        )
    verdict = await verify(http, stack, tokens["auditor"])
    assert verdict["ok"] is False
    assert verdict["broken"] is None  # the chain itself holds
    assert verdict["anchors"] == {"used": 0, "latest_seq": None}
    invalid = {item["kind"]: item for item in verdict["invalid_anchors"]}
    assert invalid["pack"]["id"] == pack["id"] and invalid["pack"]["check"] == "sha256"
    assert invalid["checkpoint"]["id"] == checkpoint["id"] and invalid["checkpoint"]["check"] == "signature"


async def test_the_audit_listing_filters_pages_and_binds_its_cursor_to_the_filters(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org, other_org: Org
) -> None:
    stack = start_compliance(start_service, database_url)
    tokens = await role_tokens(http, stack.core_stack, org)
    await write_records(database_url, other_org.id, 3)  # another org's records never show
    head = await write_records(database_url, org.id, 7, action="test.listing")
    url = f"{stack.compliance.url}/audit"

    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"action": "test.listing", "limit": "3", **({"cursor": cursor} if cursor else {})}
        status, body, _ = await call(http, "GET", url, token=tokens["auditor"], params=params)
        assert status == 200, body
        seen.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [item["seq"] for item in seen] == list(range(head, head - 7, -1))
    assert {item["org_id"] for item in seen} == {str(org.id)}
    assert {item["action"] for item in seen} == {"test.listing"}
    assert seen[0]["target"] == "thing:6" and seen[0]["detail"] == {"i": 6}

    # Actor and time range: from inclusive, to exclusive.
    status, body, _ = await call(http, "GET", url, token=tokens["admin"], params={"actor": "system", "limit": "200"})
    assert status == 200 and {item["actor"] for item in body["items"]} == {"system"}
    assert len(body["items"]) == 7
    at = [item["at"] for item in seen]  # newest first
    window = {"action": "test.listing", "from": at[4], "to": at[1]}
    status, body, _ = await call(http, "GET", url, token=tokens["admin"], params=window)
    assert status == 200, body
    assert [item["seq"] for item in body["items"]] == [head - 2, head - 3, head - 4]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    status, body, _ = await call(http, "GET", url, token=tokens["admin"], params={"from": future})
    assert status == 200 and body["items"] == []

    # A cursor replayed with other filters is refused, like garbage.
    status, first, _ = await call(
        http, "GET", url, token=tokens["admin"], params={"action": "test.listing", "limit": "2"}
    )
    assert status == 200 and first["next_cursor"]
    for params in (
        {"action": "test.write", "cursor": first["next_cursor"]},
        {"cursor": first["next_cursor"]},
        {"action": "test.listing", "cursor": "not-a-cursor"},
    ):
        status, body, _ = await call(http, "GET", url, token=tokens["admin"], params=params)
        assert status == 400 and body["code"] == "invalid_query", body
        assert [error["path"] for error in body["errors"]] == ["cursor"]

    # Bad values name the field.
    for params, field in (
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-01-01"}, "to"),
        ({"from": "1700000000"}, "from"),
        ({"from": "0001-01-01T00:00:00+14:00"}, "from"),  # overflows when read in UTC
        ({"to": "9999-12-31T23:59:59-14:00"}, "to"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"colour": "red"}, "colour"),
    ):
        status, body, _ = await call(http, "GET", url, token=tokens["admin"], params=params)
        assert status == 400 and body["code"] == "invalid_query", (params, body)
        assert [error["path"] for error in body["errors"]] == [field], (params, body)
    status, body, _ = await call(
        http, "GET", url, token=tokens["admin"], params={"from": "2026-02-01T00:00Z", "to": "2026-01-01T00:00Z"}
    )
    assert status == 400 and body["code"] == "invalid_query", body

    # Roles: admin and auditor only, for the listing and the verification alike.
    for role in ("finance", "analyst"):
        for path in ("/audit", "/audit/verify", "/audit/checkpoints"):
            status, body, _ = await call(http, "GET", f"{stack.compliance.url}{path}", token=tokens[role])
            assert status == 403 and body["code"] == "forbidden", (role, path, body)
    status, _, _ = await call(http, "GET", url)
    assert status == 401
