"""The chain of checkpoints (`services.compliance.anchors.AnchorCollector`), pure: each checkpoint's `previous` must
be the checkpoint right before it with that digest; one made before chaining (no `previous`) is not checked; one
naming none (an org's first) with another before it is reported as out of place."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.compliance import signing
from services.compliance.anchors import CHECK_CHAIN, SignedDocument, collect_anchors
from shared.audit import next_record
from shared.canonical import canonical_json

ORG = uuid.UUID("5e0c7a1d-2b3f-4c8e-9d6a-1f4b7e2c9a35")
KEY = Ed25519PrivateKey.generate()
KEYS = {"k1": KEY.public_key()}
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def checkpoint(index: int, head_seq: int, head_hash: str, previous: Any, *, chained: bool = True) -> SignedDocument:
    checkpoint_id, created_at = uuid.uuid4(), START + timedelta(hours=index)
    document: dict[str, Any] = {
        "format": signing.CHECKPOINT_FORMAT,
        "id": checkpoint_id,
        "org_id": ORG,
        "created_at": created_at,
        "created_by": "system",
        "head": {"seq": head_seq, "hash": head_hash},
        "rows": [],
    }
    if chained:
        document["previous"] = None if previous is None else {"id": previous.id, "sha256": previous.sha256}
    signed = signing.sign(canonical_json(document), KEY, "k1")
    expect: dict[str, signing.Expected] = {"format": signing.CHECKPOINT_FORMAT, "created_at": created_at}
    return SignedDocument(
        "checkpoint",
        checkpoint_id,
        ORG,
        signed.payload,
        signed.sha256,
        signed.signature,
        "k1",
        expect,
        (head_seq, head_hash),
    )


def heads(count: int) -> list[tuple[int, str]]:
    rows, prev = [], None
    for index in range(count):
        prev = next_record(prev, ORG, START, "system", "x.y", f"t:{index}", None, {})
        rows.append((prev.seq, prev.hash))
    return rows


def test_an_unbroken_sequence_holds_and_checkpoints_made_before_chaining_are_not_checked() -> None:
    links = heads(4)
    old1 = checkpoint(0, *links[0], None, chained=False)
    old2 = checkpoint(1, *links[1], None, chained=False)
    first_chained = checkpoint(2, *links[2], old2)
    last = checkpoint(3, *links[3], first_chained)
    result = collect_anchors([old1, old2, first_chained, last], KEYS)
    assert result.invalid == () and result.used == 4
    # An org's first checkpoint names none.
    alone = checkpoint(0, *links[0], None)
    assert collect_anchors([alone, checkpoint(1, *links[1], alone)], KEYS).invalid == ()


def test_a_deleted_a_replaced_and_an_out_of_place_checkpoint_are_reported_by_the_one_after() -> None:
    links = heads(4)
    first = checkpoint(0, *links[0], None)
    second = checkpoint(1, *links[1], first)
    third = checkpoint(2, *links[2], second)

    deleted = collect_anchors([first, third], KEYS)
    assert [(each.id, each.check) for each in deleted.invalid] == [(second.id, CHECK_CHAIN)]
    assert deleted.invalid[0].reason.startswith(f"missing: signed checkpoint {third.id} (head record 3) names it")
    assert deleted.used == 2  # the genuine ones still anchor the chain
    assert (
        collect_anchors([third], KEYS)
        .invalid[0]
        .reason.endswith("but none comes before it: it was deleted from the database")
    )

    other = checkpoint(1, *links[1], first)  # another genuine document where `second` was
    replaced = SignedDocument(**{**second.__dict__, "sha256": other.sha256})
    found = collect_anchors([first, replaced, third], KEYS).invalid
    assert [(each.id, each.check) for each in found] == [(second.id, "sha256"), (second.id, CHECK_CHAIN)]
    assert found[1].reason.startswith(f"replaced: signed checkpoint {third.id} (head record 3) records its sha256")

    late_first = checkpoint(3, *links[3], None)
    out_of_place = collect_anchors([first, late_first], KEYS).invalid
    assert [(each.id, each.check) for each in out_of_place] == [(first.id, CHECK_CHAIN)]
    assert out_of_place[0].reason.startswith("out of place:")
