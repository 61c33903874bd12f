"""`apgms audit checkpoint` and `apgms audit verify` with anchors, against a real database: a rewrite whose later
hashes were all recomputed passes the plain chain check but fails once a checkpoint covers it, naming the record;
a checkpoint whose row was tampered with is reported and not trusted."""

from __future__ import annotations

import dataclasses
import uuid

import asyncpg
import orjson
import pytest
from cli_support import run_cli
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.compliance.signing import public_jwk, sign
from shared import audit
from shared.config import Secret, new_master_key
from shared.crypto import SecretBox

ORG = uuid.UUID("7d7a6b0e-5c1f-4a39-9a57-0f3c2b1e8d44")
OTHER_ORG = uuid.UUID("0b9f3e2a-1c4d-4e8f-8a6b-2d5c7e9f1a30")
CHAIN_LENGTH = 8
REWRITTEN = 5

pytestmark = pytest.mark.usefixtures("no_project_dotenv")


async def write_chain(conn: asyncpg.Connection, org_id: uuid.UUID, length: int = CHAIN_LENGTH) -> None:
    for index in range(length):
        async with conn.transaction():
            await audit.append(
                conn, org_id=org_id, actor="system", action="bas.lodge", target=f"bas:{index}", detail={"i": index}
            )


async def rewrite_and_recompute(conn: asyncpg.Connection, org_id: uuid.UUID, seq: int) -> None:
    rows = [row async for row in audit.records(conn, org_id)]
    prev = rows[seq - 2].hash
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        for row in rows[seq - 1 :]:
            changed = dataclasses.replace(row, prev_hash=prev, target="bas:forged" if row.seq == seq else row.target)
            new_hash = audit.chain_hash(changed.prev_hash, audit.hashed_fields(changed))
            await conn.execute(
                "UPDATE audit.records SET target = $3, prev_hash = $4, hash = $5 WHERE org_id = $1 AND seq = $2",
                org_id,
                row.seq,
                changed.target,
                prev,
                new_hash,
            )
            prev = new_hash


def one_line(text: str) -> str:
    return " ".join(text.split())


async def test_a_recomputed_rewrite_fails_verify_once_a_checkpoint_covers_it(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await write_chain(conn, ORG)
    code, out, err = await run_cli(database_url, "audit", "checkpoint", "--org", str(ORG))
    assert code == 0, err
    assert f"Checkpointed the audit chain head of org {ORG}." in one_line(out)
    code, out, err = await run_cli(database_url, "audit", "checkpoint", "--org", str(ORG))
    assert code == 0, err
    assert "a checkpoint already covers its head" in one_line(out)
    assert await conn.fetchval("SELECT count(*) FROM compliance.audit_checkpoints WHERE org_id = $1", ORG) == 1
    head = await audit.last_record(conn, ORG)
    assert head is not None and head.seq == CHAIN_LENGTH  # a CLI checkpoint writes no audit record

    await write_chain(conn, OTHER_ORG, 3)
    code, out, err = await run_cli(database_url, "audit", "checkpoint", "--all")
    assert code == 0, err
    assert "Checkpointed 1 org(s) whose audit chain head moved." in one_line(out)

    code, out, err = await run_cli(database_url, "audit", "verify", "--org", str(ORG))
    assert code == 0, err
    assert f"{CHAIN_LENGTH} record(s) checked against 1 signed checkpoint(s) and pack(s)" in one_line(out)

    await rewrite_and_recompute(conn, ORG, REWRITTEN)
    assert (await audit.verify_org(conn, ORG)).ok, "the rewrite links: only the checkpoint can tell"
    checkpoint_id = await conn.fetchval("SELECT id FROM compliance.audit_checkpoints WHERE org_id = $1", ORG)
    code, out, err = await run_cli(database_url, "audit", "verify", "--org", str(ORG))
    assert code == 1
    assert "intact" not in out
    assert (
        f"audit chain of org {ORG} is broken at record {REWRITTEN}: record {REWRITTEN} was changed after signed "
        f"checkpoint {checkpoint_id} (head record {CHAIN_LENGTH}) covered it (its hash differs) "
        f"({REWRITTEN - 1} record(s) before it check out)"
    ) in one_line(err)

    # A checkpoint whose row was edited is not trusted, and is reported.
    await conn.execute("UPDATE compliance.audit_checkpoints SET sha256 = repeat('0', 64) WHERE org_id = $1", OTHER_ORG)
    code, out, err = await run_cli(database_url, "audit", "verify", "--org", str(OTHER_ORG))
    assert code == 1
    assert "fails its own verification (sha256: the payload does not hash to the recorded sha256)" in one_line(err)
    assert "signed anchor(s) were tampered with" in one_line(err)


async def test_a_checkpoint_re_signed_with_a_key_inserted_without_the_master_key_is_not_trusted(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await write_chain(conn, ORG)
    code, _, err = await run_cli(database_url, "audit", "checkpoint", "--org", str(ORG))
    assert code == 0, err
    # A database writer adds a key pair of their own (sealed under a master key that is not the deployment's) and
    # re-signs the checkpoint with it: the signature is valid for that key, but the key is not ours.
    forged, kid = Ed25519PrivateKey.generate(), "ev-forged-0001"
    await conn.execute(
        "INSERT INTO compliance.evidence_keys (kid, public_jwk, private_sealed, status, retired_at) "
        "VALUES ($1, $2::text::jsonb, $3, 'retired', now())",
        kid,
        orjson.dumps(public_jwk(forged.public_key(), kid)).decode(),
        SecretBox(Secret(new_master_key())).seal(forged.private_bytes_raw(), kid.encode()),
    )
    payload = await conn.fetchval("SELECT payload FROM compliance.audit_checkpoints WHERE org_id = $1", ORG)
    signed = sign(payload, forged, kid)
    await conn.execute(
        "UPDATE compliance.audit_checkpoints SET signature = $2, key_id = $3 WHERE org_id = $1",
        ORG,
        signed.signature,
        kid,
    )
    code, out, err = await run_cli(database_url, "audit", "verify", "--org", str(ORG))
    assert code == 1, out
    assert f"evidence key {kid} is not one of this deployment's keys" in one_line(err)
    assert f"key: key '{kid}' is not among the published evidence keys" in one_line(err)


@pytest.mark.parametrize("args", [(), ("--all", "--org", str(ORG))])
async def test_checkpoint_needs_exactly_one_of_org_and_all(database_url: str, args: tuple[str, ...]) -> None:
    code, out, err = await run_cli(database_url, "audit", "checkpoint", *args)
    assert code == 1
    assert "give exactly one of --org ID and --all" in err
    assert "Traceback" not in out + err


async def test_checkpoint_over_a_broken_chain_exits_1_naming_the_record_and_signs_nothing(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await write_chain(conn, ORG)
    code, _, err = await run_cli(database_url, "audit", "checkpoint", "--org", str(ORG))
    assert code == 0, err
    await write_chain(conn, ORG, 3)
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "UPDATE audit.records SET target = 'x' WHERE org_id = $1 AND seq = $2", ORG, CHAIN_LENGTH + 2
        )
    code, out, err = await run_cli(database_url, "audit", "checkpoint", "--org", str(ORG))
    assert code == 1
    assert "Traceback" not in out + err
    assert one_line(err).startswith(f"error: the audit chain of org {ORG} is broken at record {CHAIN_LENGTH + 2} (")
    assert f"no checkpoint was signed. Run: apgms audit verify --org {ORG}" in one_line(err)
    assert await conn.fetchval("SELECT count(*) FROM compliance.audit_checkpoints WHERE org_id = $1", ORG) == 1
