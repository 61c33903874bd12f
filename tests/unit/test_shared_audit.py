"""The audit chain as plain data: actors, the documented hash, and `verify` finding each kind of broken link."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.audit import (
    EARLIEST_AT,
    GENESIS_HASH,
    LATEST_AT,
    MAX_DETAIL_BYTES,
    Actor,
    Anchor,
    AuditRecord,
    BrokenLink,
    ChainVerifier,
    InvalidAuditField,
    VerifyResult,
    actor_of,
    chain_hash,
    hashed_fields,
    next_record,
    parse_actor,
    verify,
)
from shared.tokens import PRINCIPAL_KINDS, Principal

ORG = uuid.UUID("7d7a6b0e-5c1f-4a39-9a57-0f3c2b1e8d44")
OTHER_ORG = uuid.UUID("0b9f3e2a-1c4d-4e8f-8a6b-2d5c7e9f1a30")
USER = "user:3f2c1b0a-9e8d-4c7b-8a69-5f4e3d2c1b0a"
START = datetime(2026, 11, 27, 21, 55, 37, 123456, tzinfo=UTC)
# chain_hash of `first_record()`, recomputed by hand in test_hash_is_the_documented_recipe: changing the encoding
# breaks every stored chain, so it must fail here first.
FIRST_RECORD_HASH = "90a276de39d63859b79faf8e4ca14b83f7cd0bd5494d9099cf54c63c1d860d2b"


def first_record(org_id: uuid.UUID = ORG) -> AuditRecord:
    return next_record(None, org_id, START, USER, "user.create", "user:42", "req-1", {"role": "admin", "n": 1})


def chain(length: int, org_id: uuid.UUID = ORG) -> list[AuditRecord]:
    rows: list[AuditRecord] = []
    for index in range(length):
        prev = rows[-1] if rows else None
        at = START + timedelta(seconds=index)
        rows.append(next_record(prev, org_id, at, "system", "bas.lodge", f"bas:{index}", None, {"index": index}))
    return rows


def rehashed(row: AuditRecord, **changes: Any) -> AuditRecord:
    """`row` changed and hashed again, as someone who can write the table and knows the recipe would."""
    changed = dataclasses.replace(row, **changes)
    return dataclasses.replace(changed, hash=chain_hash(changed.prev_hash, hashed_fields(changed)))


def broken(seq: int, reason: str, checked: int) -> VerifyResult:
    return VerifyResult(checked, BrokenLink(seq, reason))


# --- actors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "actor"),
    [
        ("system", Actor("system", None)),
        (USER, Actor("user", USER.removeprefix("user:"))),
        ("client:apgms_0a1b2c3d", Actor("client", "apgms_0a1b2c3d")),
        ("regulator:ato-audit.team", Actor("regulator", "ato-audit.team")),
    ],
)
def test_actor_forms_parse_and_print_back(text: str, actor: Actor) -> None:
    assert parse_actor(text) == actor
    assert str(actor) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "System",
        "system:",
        "system:cron",
        "user",
        "user:",
        "user:42",
        "user:3F2C1B0A-9E8D-4C7B-8A69-5F4E3D2C1B0A",  # one actor, one spelling
        "user:3f2c1b0a9e8d4c7b8a695f4e3d2c1b0a",
        "client:",
        "client:a b",
        "client:" + "x" * 129,
        "regulator:jane@ato.gov.au",  # a name or an email is PII
        "admin:1",
        " system",
    ],
)
def test_other_actor_forms_are_refused(text: str) -> None:
    with pytest.raises(InvalidAuditField, match="actor"):
        parse_actor(text)


def principal(kind: str, subject: str) -> Principal:
    org = "" if kind == "service" else str(ORG)
    return Principal(subject, kind, org, None, frozenset(), (), None, "jti-1", "urn:apgms:test")


@pytest.mark.parametrize(
    ("kind", "subject", "actor"),
    [
        ("user", USER.removeprefix("user:"), USER),
        ("client", "apgms-client-0a1b2c3d", "client:apgms-client-0a1b2c3d"),
        ("regulator", "asic-officer-7", "regulator:asic-officer-7"),
        ("service", "service-core", "client:service-core"),  # a service is an OAuth client; its id says which
    ],
)
def test_each_kind_of_principal_is_recorded_as_its_actor(kind: str, subject: str, actor: str) -> None:
    assert kind in PRINCIPAL_KINDS
    assert actor_of(principal(kind, subject)) == actor
    assert str(parse_actor(actor)) == actor


def test_every_kind_of_principal_has_an_actor_form() -> None:
    for kind in PRINCIPAL_KINDS:
        parse_actor(actor_of(principal(kind, "x-1" if kind != "user" else USER.removeprefix("user:"))))


def test_a_principal_of_an_unknown_kind_is_refused() -> None:
    with pytest.raises(InvalidAuditField, match="no actor form"):
        actor_of(principal("robot", "r2"))


# --- the hash ---------------------------------------------------------------------------------------------------


def test_hash_is_the_documented_recipe() -> None:
    record = first_record()
    # RFC 8785 of an object of ASCII strings and small integers is sorted keys without whitespace.
    row = {
        "org_id": "7d7a6b0e-5c1f-4a39-9a57-0f3c2b1e8d44",
        "seq": 1,
        "at": "2026-11-27T21:55:37.123456Z",
        "actor": USER,
        "action": "user.create",
        "target": "user:42",
        "request_id": "req-1",
        "detail": {"role": "admin", "n": 1},
        "prev_hash": "0" * 64,
    }
    jcs = json.dumps(row, sort_keys=True, separators=(",", ":")).encode()
    expected = hashlib.sha256(bytes(32) + jcs).hexdigest()
    assert record.prev_hash == GENESIS_HASH == "0" * 64
    assert record.seq == 1
    assert record.hash == expected == FIRST_RECORD_HASH


def test_at_is_hashed_as_its_utc_instant() -> None:
    sydney = timezone(timedelta(hours=11))
    local = next_record(
        None, ORG, START.astimezone(sydney), USER, "user.create", "user:42", "req-1", {"role": "admin", "n": 1}
    )
    assert local.at == START and local.at.tzinfo is UTC
    assert local.hash == first_record().hash


def test_next_record_links_to_its_predecessor() -> None:
    rows = chain(3)
    assert [row.seq for row in rows] == [1, 2, 3]
    assert [row.prev_hash for row in rows] == [GENESIS_HASH, rows[0].hash, rows[1].hash]
    assert len({row.hash for row in rows}) == 3


def test_detail_is_kept_as_the_json_it_hashes_as() -> None:
    detail: dict[str, Any] = {"amount": Decimal("1234.50"), "ids": (1, 2)}
    record = next_record(None, ORG, START, "system", "payment.create", "payment:1", None, detail)
    detail["amount"] = Decimal("0.01")
    assert record.detail == {"amount": "1234.50", "ids": [1, 2]}
    assert verify([record]) == VerifyResult(1, None)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"at": datetime(2026, 11, 27, 21, 55, 37)}, "at must be timezone-aware"),
        ({"actor": "root"}, "actor"),
        ({"action": "User.Create"}, "action"),
        ({"action": "user..create"}, "action"),
        ({"action": "a" * 65}, "action"),
        ({"target": ""}, "target"),
        ({"target": "user 42"}, "target"),
        ({"target": "x" * 257}, "target"),
        ({"request_id": "has space"}, "request_id"),
        ({"detail": {"ratio": 0.5}}, "detail is not canonical JSON"),
        ({"detail": {"big": 2**53}}, "detail is not canonical JSON"),
        ({"detail": {1: "x"}}, "detail is not canonical JSON"),
        ({"detail": ["not", "an", "object"]}, "detail must be a JSON object"),
        ({"detail": {"blob": "x" * MAX_DETAIL_BYTES}}, "detail is"),
    ],
)
def test_next_record_refuses_what_cannot_be_written(changes: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "org_id": ORG,
        "at": START,
        "actor": USER,
        "action": "user.create",
        "target": "user:42",
        "request_id": "req-1",
        "detail": {},
    }
    with pytest.raises(InvalidAuditField, match=message):
        next_record(None, **(arguments | changes))


@pytest.mark.parametrize(
    "at",
    [
        datetime.max.replace(tzinfo=UTC),  # stored by PostgreSQL as infinity, read back naive
        datetime.min.replace(tzinfo=UTC),  # -infinity
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-10))),  # past datetime.max in UTC
        datetime.min.replace(tzinfo=timezone(timedelta(hours=10))),
        EARLIEST_AT - timedelta(microseconds=1),
        LATEST_AT + timedelta(microseconds=1),
    ],
)
def test_next_record_refuses_a_time_outside_the_range(at: datetime) -> None:
    with pytest.raises(InvalidAuditField, match="at must lie"):
        next_record(None, ORG, at, USER, "user.create", "user:42", "req-1", {})


def test_next_record_takes_the_ends_of_the_range_in_any_offset() -> None:
    for at in (EARLIEST_AT, LATEST_AT):
        shifted = at.astimezone(timezone(timedelta(hours=-12 if at == EARLIEST_AT else 14)))
        assert next_record(None, ORG, shifted, USER, "user.create", "user:42", None, {}).at == at


@pytest.mark.parametrize(
    ("detail", "path"),
    [
        ({"memo": "a\x00b"}, "memo"),
        ({"a\x00": 1}, "$.a"),
        ({"list": [{"deep": ["ok", "\x00"]}]}, "list.0.deep.1"),
        ({"tuple": ("\x00",)}, "tuple.0"),
    ],
)
def test_next_record_refuses_a_nul_anywhere_in_the_detail(detail: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidAuditField, match="NUL") as raised:
        next_record(None, ORG, START, USER, "user.create", "user:42", None, detail)
    assert path in str(raised.value)


def test_next_record_refuses_a_predecessor_of_another_org() -> None:
    with pytest.raises(InvalidAuditField, match="prev belongs to org"):
        next_record(first_record(OTHER_ORG), ORG, START, "system", "org.update", "org:1", None, {})


def test_chain_hash_refuses_malformed_input() -> None:
    fields = hashed_fields(first_record(ORG))
    with pytest.raises(InvalidAuditField, match="prev_hash"):
        chain_hash("0" * 63, fields)
    with pytest.raises(InvalidAuditField, match="prev_hash"):
        chain_hash("F" * 64, fields)
    with pytest.raises(InvalidAuditField, match="hashed fields"):
        chain_hash(GENESIS_HASH, fields | {"hash": "x"})


# --- verify, one example per reason -----------------------------------------------------------------------------


def test_an_intact_chain_is_accepted() -> None:
    assert verify(chain(8)) == VerifyResult(8, None)
    assert verify([]) == VerifyResult(0, None)
    assert verify(chain(8)).ok


def test_a_gap_in_seq_is_reported_at_the_first_missing_seq() -> None:
    rows = chain(8)
    assert verify(rows[:4] + rows[6:]) == broken(5, "seq gap: expected 5, found 7", 4)


def test_a_repeated_seq_is_reported() -> None:
    rows = chain(8)
    assert verify(rows[:5] + rows[3:]) == broken(6, "seq repeat: expected 6, found 4", 5)


def test_an_edited_row_is_reported_at_its_seq() -> None:
    rows = chain(8)
    rows[4] = dataclasses.replace(rows[4], detail={"index": 99})
    assert verify(rows) == broken(5, "row 5 was edited", 4)


def test_a_row_rewritten_with_a_fresh_hash_breaks_the_next_link() -> None:
    rows = chain(8)
    rows[4] = rehashed(rows[4], detail={"index": 99})
    assert verify(rows) == broken(6, "row 6 does not follow row 5", 5)


def test_a_deleted_row_renumbered_and_rehashed_is_reported_where_it_was() -> None:
    rows = chain(8)
    renumbered = [rehashed(row, seq=row.seq - 1) for row in rows[5:]]
    assert verify(rows[:4] + renumbered) == broken(5, "row 5 does not follow row 4", 4)


def test_a_first_row_that_does_not_start_at_genesis_is_reported() -> None:
    rows = chain(3)
    assert verify([rehashed(rows[0], prev_hash="1" * 64), *rows[1:]]) == broken(1, "row 1 does not start the chain", 0)


def test_a_row_of_another_org_is_reported() -> None:
    rows, foreign = chain(8), chain(8, OTHER_ORG)
    rows[4] = foreign[4]
    assert verify(rows) == broken(5, f"row 5 belongs to org {OTHER_ORG}, not {ORG}", 4)


def test_a_deleted_tail_is_found_only_against_an_anchor() -> None:
    rows = chain(8)
    assert verify(rows[:6]) == VerifyResult(6, None)
    anchor = Anchor(seq=8, hash=rows[7].hash)
    assert verify(rows, anchor=anchor) == VerifyResult(8, None)
    assert verify(rows[:6], anchor=anchor) == broken(7, "chain ends at row 6, before anchored row 8", 6)


def test_a_rewritten_tail_is_found_only_against_an_anchor() -> None:
    rows = chain(8)
    anchor = Anchor(seq=6, hash=rows[5].hash)
    rows[5] = rehashed(rows[5], detail={"index": 99})
    for index in range(6, 8):
        rows[index] = rehashed(rows[index], prev_hash=rows[index - 1].hash)
    assert verify(rows) == VerifyResult(8, None)
    assert verify(rows, anchor=anchor) == broken(6, "row 6 is not the anchored row", 5)


def test_a_segment_after_a_known_link_is_checked_from_that_link() -> None:
    rows = chain(8)
    known = Anchor(seq=5, hash=rows[4].hash, source="signed checkpoint c1 (head record 5)")
    assert verify(rows[5:], after=known) == VerifyResult(3, None)
    assert verify([], after=known) == VerifyResult(0, None)  # nothing after the link yet
    assert verify(rows[5:], after=Anchor(seq=0, hash=GENESIS_HASH)) == broken(1, "seq gap: expected 1, found 6", 0)
    assert verify(rows, after=Anchor(seq=0, hash=GENESIS_HASH)) == verify(rows)  # seq 0 is the genesis link


def test_a_segment_whose_first_row_does_not_link_from_the_known_hash_is_refused() -> None:
    rows = chain(8)
    # Row 5 rewritten and every later hash recomputed: the segment links in itself, but not from the signed head.
    rewritten = [*rows[:4], rehashed(rows[4], detail={"index": 99})]
    for row in rows[5:]:
        rewritten.append(rehashed(row, prev_hash=rewritten[-1].hash))
    assert verify(rewritten) == VerifyResult(8, None)
    known = Anchor(seq=5, hash=rows[4].hash)
    assert verify(rewritten[5:], after=known) == broken(6, "row 6 does not follow row 5", 0)


def test_a_segment_reports_an_edit_a_gap_and_a_cut_tail_at_their_own_seq() -> None:
    rows = chain(8)
    known = Anchor(seq=4, hash=rows[3].hash)
    edited = [*rows[4:6], dataclasses.replace(rows[6], detail={"index": 99}), rows[7]]
    assert verify(edited, after=known) == broken(7, "row 7 was edited", 2)
    assert verify([rows[4], *rows[6:]], after=known) == broken(6, "seq gap: expected 6, found 7", 1)
    head = Anchor(seq=8, hash=rows[7].hash)
    assert verify(rows[4:7], after=known, anchor=head) == broken(8, "chain ends at row 7, before anchored row 8", 3)
    # An anchor inside the taken-on-trust part is not looked at; one in the segment is.
    assert verify(rows[4:], after=known, anchor=Anchor(seq=2, hash="0" * 64)) == VerifyResult(4, None)
    assert verify(rows[4:], after=known, anchor=Anchor(seq=6, hash="0" * 64)) == broken(
        6, "row 6 is not the anchored row", 1
    )


def test_a_row_no_writer_could_produce_is_reported_as_edited() -> None:
    rows = chain(3)
    for changes in ({"at": datetime(2026, 1, 1)}, {"prev_hash": "zz"}, {"detail": {"x": 0.5}}):
        tampered = [rows[0], dataclasses.replace(rows[1], **changes), rows[2]]
        assert verify(tampered) == broken(2, "row 2 was edited", 1)


# --- verify, properties -----------------------------------------------------------------------------------------

ACTORS = st.sampled_from(
    ["system", USER, "user:00000000-0000-4000-8000-000000000001", "client:apgms_0a1b", "regulator:ato"]
)
# Any character jsonb stores: all but NUL (and lone surrogates, which no str from JSON holds).
JSONB_CHARS = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.text(JSONB_CHARS, max_size=20)
DETAILS = st.dictionaries(
    st.text(JSONB_CHARS, max_size=10),
    st.recursive(
        JSON_SCALARS,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(JSONB_CHARS, max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    ),
    max_size=4,
)


VISIBLE_ASCII = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
ENTRIES = st.tuples(
    ACTORS,
    st.sampled_from(["user.create", "user.update", "pii.read", "bas.lodge", "payment.create", "session.revoke"]),
    st.text(VISIBLE_ASCII, min_size=1, max_size=20),
    st.none() | st.text(st.sampled_from("abcdef0123456789-"), min_size=1, max_size=32),
    DETAILS,
    st.integers(0, 10**9),
)


@st.composite
def chains(draw: st.DrawFn, min_size: int = 1) -> list[AuditRecord]:
    org_id = draw(st.uuids())
    at = draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)))
    rows: list[AuditRecord] = []
    for actor, action, target, request_id, detail, step_us in draw(st.lists(ENTRIES, min_size=min_size, max_size=50)):
        at += timedelta(microseconds=step_us)
        prev = rows[-1] if rows else None
        rows.append(next_record(prev, org_id, at, actor, action, target, request_id, detail))
    return rows


def _flip_digit(hex_text: str) -> str:
    return ("1" if hex_text[0] == "0" else "0") + hex_text[1:]


# Each makes a value the field did not have (seq included: moving a row's seq is an edit of that row).
EDITS: dict[str, Callable[[Any, st.DataObject], Any]] = {
    "org_id": lambda old, data: uuid.UUID(int=(old.int + data.draw(st.integers(1, 2**64))) % 2**128),
    "seq": lambda old, data: old + data.draw(st.sampled_from([-2, -1, 1, 2, 10])),
    "at": lambda old, data: old + timedelta(microseconds=data.draw(st.integers(1, 10**9))),
    "actor": lambda old, data: data.draw(ACTORS.filter(lambda actor: actor != old)),
    "action": lambda old, data: old + data.draw(st.sampled_from(["x", ".x"])),
    "target": lambda old, data: old + "x",
    "request_id": lambda old, data: "req-x" if old is None else None,
    "detail": lambda old, data: {**old, "edited-by-test": data.draw(JSON_SCALARS)},
    "prev_hash": lambda old, data: _flip_digit(old),
    "hash": lambda old, data: _flip_digit(old),
}


@given(chains())
def test_every_chain_written_by_next_record_verifies(rows: list[AuditRecord]) -> None:
    assert verify(rows) == VerifyResult(len(rows), None)
    assert verify(rows, anchor=Anchor(rows[-1].seq, rows[-1].hash)) == VerifyResult(len(rows), None)


@given(chains(), st.data())
def test_editing_any_field_of_any_row_is_reported_at_that_row(rows: list[AuditRecord], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(rows) - 1))
    field = data.draw(st.sampled_from(sorted(EDITS)))
    row = rows[index]
    rows[index] = dataclasses.replace(row, **{field: EDITS[field](getattr(row, field), data)})
    result = verify(rows)
    assert result.broken == BrokenLink(row.seq, f"row {row.seq} was edited")
    assert result.checked == row.seq - 1


@given(chains(min_size=2), st.data())
def test_deleting_any_row_is_reported_at_its_seq(rows: list[AuditRecord], data: st.DataObject) -> None:
    """A deleted row leaves a gap at its own seq; the last row leaves none, so only an anchor on it finds it."""
    index = data.draw(st.integers(0, len(rows) - 1))
    deleted = rows.pop(index)
    if index == len(rows):
        assert verify(rows) == VerifyResult(len(rows), None)
        reason = f"chain ends at row {deleted.seq - 1}, before anchored row {deleted.seq}"
        assert verify(rows, anchor=Anchor(deleted.seq, deleted.hash)) == broken(deleted.seq, reason, deleted.seq - 1)
    else:
        assert verify(rows) == broken(
            deleted.seq, f"seq gap: expected {deleted.seq}, found {deleted.seq + 1}", deleted.seq - 1
        )


@given(chains(min_size=2), st.data())
def test_swapping_adjacent_rows_is_reported_at_the_earlier_seq(rows: list[AuditRecord], data: st.DataObject) -> None:
    """Swapped in the list, the later row arrives where the earlier was expected: reported at the earlier seq."""
    index = data.draw(st.integers(0, len(rows) - 2))
    earlier = rows[index].seq
    rows[index], rows[index + 1] = rows[index + 1], rows[index]
    assert verify(rows) == broken(earlier, f"seq gap: expected {earlier}, found {earlier + 1}", earlier - 1)


@given(chains(min_size=2), st.data())
def test_swapping_adjacent_rows_seq_numbers_is_reported_at_the_earlier_seq(
    rows: list[AuditRecord], data: st.DataObject
) -> None:
    """Swapped in the table (each row given the other's seq), the earlier position holds an edited row."""
    index = data.draw(st.integers(0, len(rows) - 2))
    earlier = rows[index].seq
    first, second = rows[index], rows[index + 1]
    rows[index], rows[index + 1] = (
        dataclasses.replace(second, seq=first.seq),
        dataclasses.replace(first, seq=second.seq),
    )
    assert verify(rows) == broken(earlier, f"row {earlier} was edited", earlier - 1)


@given(chains(), st.data())
def test_a_chain_verifier_fed_row_by_row_agrees_with_verify(rows: list[AuditRecord], data: st.DataObject) -> None:
    """`ChainVerifier` is `verify` for rows read in batches: same verdict, intact or edited, with or without an
    anchor, and nothing after the first broken link changes it."""
    if data.draw(st.booleans()):
        index = data.draw(st.integers(0, len(rows) - 1))
        rows[index] = dataclasses.replace(rows[index], target=rows[index].target + "x")
    anchor = data.draw(st.none() | st.sampled_from([Anchor(row.seq, row.hash) for row in rows]))
    verifier = ChainVerifier(anchor=anchor)
    accepted = [verifier.add(row) for row in rows]
    expected = verify(rows, anchor=anchor)
    assert verifier.result() == expected
    assert verifier.checked == expected.checked
    assert accepted == [True] * expected.checked + [False] * (len(rows) - expected.checked)
