"""`org_anchors` (what /audit/verify and `apgms audit verify` use) reads an org's signed checkpoints and packs in
keyset batches, never all their payloads at once: with more of each than a batch holds, no read returns more than
ANCHOR_BATCH_ROWS rows, and every document's anchors are still collected (and the checkpoints' chain checked)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.compliance import signing
from services.compliance.anchors import checkpoint_payload
from services.compliance.audit_trail import org_anchors
from services.compliance.store.checkpoints import ANCHOR_BATCH_ROWS, Checkpoint, insert_checkpoint
from services.compliance.store.packs import Pack, insert_pack
from shared import audit
from shared.canonical import canonical_json

ORG = uuid.UUID("6a2d9c4e-8b1f-4e7a-b3c5-0d9e8f7a6b52")
KEY = Ed25519PrivateKey.generate()
START = datetime(2026, 5, 1, tzinfo=UTC)


class CountingConnection:
    """The connection, counting the rows each fetch returns."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.fetched: list[int] = []

    async def fetch(self, *args: Any, **kwargs: Any) -> list[Any]:
        rows = await self._conn.fetch(*args, **kwargs)
        self.fetched.append(len(rows))
        return list(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def test_anchors_are_read_in_batches_and_all_collected(conn: asyncpg.Connection) -> None:
    count = ANCHOR_BATCH_ROWS + ANCHOR_BATCH_ROWS // 2
    await conn.execute(
        "INSERT INTO compliance.evidence_keys (kid, public_jwk, private_sealed, status, retired_at) "
        "VALUES ('k', $1::text::jsonb, '\\x00', 'retired', now())",
        orjson.dumps(signing.public_jwk(KEY.public_key(), "k")).decode(),
    )
    previous: Checkpoint | None = None
    for index in range(count):
        async with conn.transaction():
            await audit.append(conn, org_id=ORG, actor="system", action="x.y", target=f"t:{index}", detail={})
        head = await audit.last_record(conn, ORG)
        assert head is not None
        checkpoint_id, at = uuid.uuid4(), START + timedelta(minutes=index)
        signed = signing.sign(checkpoint_payload(checkpoint_id, ORG, at, "system", head, [head], previous), KEY, "k")
        previous = Checkpoint(
            checkpoint_id, ORG, at, "system", head.seq, head.hash, signed.payload, signed.sha256, signed.signature, "k"
        )
        assert await insert_checkpoint(conn, previous)
        pack_id = uuid.uuid4()
        payload = canonical_json(
            {
                "format": signing.PACK_FORMAT,
                "id": pack_id,
                "org_id": ORG,
                "created_at": at,
                "created_by": "system",
                "tag": None,
                "audit_head": {"seq": head.seq, "hash": head.hash},
                "audit": [],
            }
        )
        packed = signing.sign(payload, KEY, "k")
        await insert_pack(
            conn, Pack(pack_id, ORG, at, "system", None, packed.sha256, "k", packed.payload, packed.signature)
        )

    counting = CountingConnection(conn)
    anchors = await org_anchors(counting, ORG, {"k": KEY.public_key()})  # type: ignore[arg-type]
    assert anchors.invalid == ()
    assert anchors.used == 2 * count and anchors.latest_seq == count
    assert max(counting.fetched) <= ANCHOR_BATCH_ROWS, counting.fetched
    assert sum(counting.fetched) >= 2 * count
