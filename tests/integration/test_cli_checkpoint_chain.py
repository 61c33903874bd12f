"""`apgms audit checkpoint` chains checkpoints and `apgms audit verify` reports a break in that chain, against a real
database: each checkpoint names the one before it ({id, sha256}); one deleted from the middle or replaced is named
(exit 1), and a new checkpoint is refused (exit 1, nothing signed) while the org's latest one fails to verify."""

from __future__ import annotations

import itertools
import uuid

import asyncpg
import orjson
import pytest
from cli_support import run_cli
from test_cli_audit_anchors import one_line, write_chain

ORG = uuid.UUID("3c1e8a52-7b0d-4f6e-9a41-5d2c8e7f0b13")

pytestmark = pytest.mark.usefixtures("no_project_dotenv")


async def checkpoints(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT id, seq, sha256, payload, signature FROM compliance.audit_checkpoints WHERE org_id = $1 "
            "ORDER BY seq",
            ORG,
        )
    )


async def test_checkpoints_name_their_predecessor_and_a_deleted_or_replaced_one_fails_verify(
    database_url: str, conn: asyncpg.Connection
) -> None:
    for _ in range(4):
        await write_chain(conn, ORG, 2)
        code, _, err = await run_cli(database_url, "audit", "checkpoint", "--org", str(ORG))
        assert code == 0, err
    rows = await checkpoints(conn)
    assert [row["seq"] for row in rows] == [2, 4, 6, 8]
    assert orjson.loads(rows[0]["payload"])["previous"] is None
    for before, row in itertools.pairwise(rows):
        assert orjson.loads(row["payload"])["previous"] == {"id": str(before["id"]), "sha256": before["sha256"]}
    code, out, err = await run_cli(database_url, "audit", "verify", "--org", str(ORG))
    assert code == 0, err
    assert "8 record(s) checked against 4 signed checkpoint(s) and pack(s)" in one_line(out)

    # The second one deleted, the first one's row replaced by the third's signed document: both named.
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute("DELETE FROM compliance.audit_checkpoints WHERE id = $1", rows[1]["id"])
        await conn.execute(
            "UPDATE compliance.audit_checkpoints SET payload = $2, sha256 = $3, signature = $4 WHERE id = $1",
            rows[0]["id"],
            rows[2]["payload"],
            rows[2]["sha256"],
            rows[2]["signature"],
        )
    code, out, err = await run_cli(database_url, "audit", "verify", "--org", str(ORG))
    assert code == 1, out
    said = one_line(err)
    assert (
        f"signed checkpoint {rows[1]['id']} is missing: signed checkpoint {rows[2]['id']} (head record 6) names it "
        f"(sha256 {rows[1]['sha256']}) as the checkpoint before it, but the one before it is {rows[0]['id']} "
        "(head record 2): it was deleted from the database"
    ) in said
    assert f"signed checkpoint {rows[0]['id']} fails its own verification (payload: the payload's id is" in said
    assert "signed anchor(s) were tampered with" in said

    # A new checkpoint starts from the latest one, which must verify: its signature swapped, none is signed.
    await write_chain(conn, ORG, 1)
    await conn.execute(
        "UPDATE compliance.audit_checkpoints SET signature = $2 WHERE id = $1", rows[3]["id"], rows[2]["signature"]
    )
    code, out, err = await run_cli(database_url, "audit", "checkpoint", "--org", str(ORG))
    assert code == 1, out
    assert "Traceback" not in out + err
    assert (
        f"the latest signed checkpoint {rows[3]['id']} (head record 8) fails its own verification (signature: "
    ) in one_line(err)
    assert len(await checkpoints(conn)) == 3
