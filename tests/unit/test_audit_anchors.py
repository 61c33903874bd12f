"""The audit verifier against many anchors (signed checkpoints and packs): a rewrite whose later hashes were all
recomputed is caught once an anchor covers it, named exactly when every row is anchored, and as a range otherwise;
a cut tail is caught against any anchor past the chain's end."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from shared.audit import (
    GENESIS_HASH,
    Anchor,
    AuditRecord,
    BrokenLink,
    ChainVerifier,
    VerifyResult,
    chain_hash,
    hashed_fields,
    next_record,
    verify,
)

ORG = uuid.UUID("7d7a6b0e-5c1f-4a39-9a57-0f3c2b1e8d44")
START = datetime(2026, 11, 27, 21, 55, 37, 123456, tzinfo=UTC)
CHECKPOINT = "signed checkpoint 1111 (head record 9)"
PACK = "evidence pack 2222 (head record 6)"


def chain(length: int) -> list[AuditRecord]:
    rows: list[AuditRecord] = []
    for index in range(length):
        prev = rows[-1] if rows else None
        at = START + timedelta(seconds=index)
        rows.append(next_record(prev, ORG, at, "system", "bas.lodge", f"bas:{index}", None, {"index": index}))
    return rows


def rewrite_from(rows: list[AuditRecord], seq: int) -> list[AuditRecord]:
    """Row `seq` changed and every later hash recomputed, as someone who can write the table would: every link
    still holds."""
    out = list(rows[: seq - 1])
    for row in rows[seq - 1 :]:
        changed = dataclasses.replace(row, prev_hash=out[-1].hash if out else GENESIS_HASH)
        if row.seq == seq:
            changed = dataclasses.replace(changed, target="bas:forged")
        out.append(dataclasses.replace(changed, hash=chain_hash(changed.prev_hash, hashed_fields(changed))))
    return out


def anchors_of(rows: list[AuditRecord], seqs: list[int], source: str | None = CHECKPOINT) -> list[Anchor]:
    return [Anchor(seq, rows[seq - 1].hash, source) for seq in seqs]


def test_an_intact_chain_holds_every_anchor_and_a_head_before_any_record_anchors_nothing() -> None:
    rows = chain(9)
    anchors = [*anchors_of(rows, [3, 6, 9]), *anchors_of(rows, [4, 5, 6], PACK), Anchor(0, GENESIS_HASH, PACK)]
    assert verify(rows, anchors=anchors) == VerifyResult(9, None)
    assert verify([], anchors=[Anchor(0, GENESIS_HASH, PACK)]) == VerifyResult(0, None)


def test_a_recomputed_rewrite_is_not_caught_without_anchors_but_named_when_its_rows_are_anchored() -> None:
    rows = chain(9)
    forged = rewrite_from(rows, 7)
    assert verify(forged) == VerifyResult(9, None)
    # A checkpoint that records every row from 5 to its head 9 names row 7 itself.
    result = verify(forged, anchors=anchors_of(rows, [5, 6, 7, 8, 9]))
    assert result == VerifyResult(
        6, BrokenLink(7, f"record 7 was changed after {CHECKPOINT} covered it (its hash differs)")
    )


def test_a_recomputed_rewrite_between_sparse_anchors_is_reported_as_the_range_it_lies_in() -> None:
    rows = chain(9)
    forged = rewrite_from(rows, 7)
    result = verify(forged, anchors=[*anchors_of(rows, [4], PACK), *anchors_of(rows, [9])])
    assert result.checked == 8
    assert result.broken is not None
    assert (result.broken.seq, result.broken.earliest_seq) == (9, 5)
    assert result.broken.reason.startswith(f"a record from 5 to 9 was changed after {CHECKPOINT} covered it")
    assert "record 4, the last one a signed anchor confirms" in result.broken.reason
    # With no anchor before the one that disagrees, the rewrite may be anywhere from the first record.
    alone = verify(forged, anchors=anchors_of(rows, [9]))
    assert alone.broken is not None
    assert (alone.broken.seq, alone.broken.earliest_seq) == (9, 1)
    assert "from the first record on" in alone.broken.reason


def test_an_edit_whose_hash_was_not_recomputed_is_still_reported_as_an_edit_of_its_row() -> None:
    rows = chain(9)
    rows[6] = dataclasses.replace(rows[6], target="bas:forged")
    assert verify(rows, anchors=anchors_of(chain(9), [9])) == VerifyResult(6, BrokenLink(7, "row 7 was edited"))


def test_a_cut_tail_is_reported_against_the_farthest_anchor_past_the_end() -> None:
    rows = chain(9)
    result = verify(rows[:7], anchors=[*anchors_of(rows, [6], PACK), *anchors_of(rows, [8, 9])])
    reason = f"the chain ends at record 7 but {CHECKPOINT} records record 9: records were deleted from the tail"
    assert result == VerifyResult(7, BrokenLink(8, reason))


def test_the_single_anchor_keeps_its_wording_alongside_many() -> None:
    rows = chain(8)
    forged = rewrite_from(rows, 6)
    result = verify(forged, anchor=Anchor(6, rows[5].hash), anchors=anchors_of(rows, [8]))
    assert result == VerifyResult(5, BrokenLink(6, "row 6 is not the anchored row"))


@given(st.integers(1, 12), st.data())
def test_a_recomputed_rewrite_is_caught_exactly_when_an_anchor_covers_it(rewritten: int, data: st.DataObject) -> None:
    """Reported at the first anchor at or after the rewritten row, from just after the last anchor before it; no
    anchor at or after it: not caught. Fed row by row, the verifier agrees."""
    rows = chain(12)
    seqs = sorted(data.draw(st.sets(st.integers(1, 12))))
    anchors = anchors_of(rows, seqs)
    forged = rewrite_from(rows, rewritten)
    result = verify(forged, anchors=anchors)
    covering = [seq for seq in seqs if seq >= rewritten]
    if not covering:
        assert result == VerifyResult(12, None)
    else:
        before = [seq for seq in seqs if seq < rewritten]
        earliest = (before[-1] if before else 0) + 1
        assert result.broken is not None
        assert result.broken.seq == covering[0]
        assert result.checked == covering[0] - 1
        exact = earliest == covering[0]
        assert result.broken.earliest_seq == (None if exact else earliest)
    verifier = ChainVerifier(anchors=anchors)
    for row in forged:
        if not verifier.add(row):
            break
    assert verifier.result() == result
