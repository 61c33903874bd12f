"""The audit trail: one hash chain per org, one record per state change or PII read, checked by `verify`.

    AuditRecord       one row: org_id, seq, at, actor, action, target, request_id, detail, prev_hash, hash
    next_record       the record that follows `prev` in its org's chain (seq + 1, linked, hashed)
    verify(rows)      VerifyResult: how many rows hold, and the first broken link (its seq and why), optionally
                      against anchors: links recorded outside the table
    ChainVerifier     the same check fed a row at a time, for rows read in batches; with `after`, of the segment
                      that follows a link known to hold (a signed checkpoint's head), not of the whole chain

The hash, so that a verifier outside this code can recompute it (`chain_hash`):

    hash = lowercase hex of sha256(bytes.fromhex(prev_hash) || JCS(row))

where JCS is RFC 8785 canonical JSON and `row` is the JSON object of every column except `hash`:

    org_id      string, the UUID in lowercase 8-4-4-4-12 form
    seq         integer, 1 for an org's first record, then +1 with no gap (at most 2**53 - 1, JSON's exact range)
    at          string, UTC with exactly six fraction digits and a Z: "2026-11-27T21:55:37.000000Z", from
                EARLIEST_AT to LATEST_AT (1970-01-01 to 9999-12-31, both at 00:00Z)
    actor       string: "user:<uuid>", "client:<client id>", "regulator:<name>" or "system"
    action      string, dotted lowercase name ("user.create", "pii.read")
    target      string, an identifier of what was acted on
    request_id  string, or null when no request caused it
    detail      object, the record's detail as stored in jsonb: strings, integers, booleans, null, arrays and
                objects, no floats (amounts are 2-place strings, `shared.money`), no NUL character in any key or
                string (jsonb cannot hold one); no plaintext PII: ids, not names or emails
    prev_hash   string, the previous record's hash; for seq 1, `GENESIS_HASH` (64 zeros)

Actors come from the caller's token (`actor_of`): a user is `user:<id>`, an org's API client and each of our
services are `client:<client id>` (services are OAuth clients too, with client credentials), a regulator is
`regulator:<credential>`. The chain tells a service from an org's API client by the id alone: service ids are
`service-<name>` (`shared.config.SERVICE_CLIENT_ID_PREFIX`), an org's clients are `apgms-client-<hex>`.

`at` is bounded because PostgreSQL cannot give every instant back: asyncpg writes an aware `datetime.max` and
`datetime.min` as timestamptz +-infinity and reads those back naive, which no hash covers, so one such row would
break its org's chain for good. The bounds are wider than any true time of a change (nothing we record predates
Unix time), and the upper one leaves a day below `datetime.max` so a time in any UTC offset converts to UTC.

A chain shows edits, deletions and reordering of the rows it holds, not a rewrite of its tail: whoever can write
the table can delete the last rows, or recompute every hash after the row they change. `verify` catches that only
against anchors (`Anchor`: a seq and hash recorded where the writer cannot change it, such as a signed checkpoint,
a signed evidence pack or a regulator's copy), the way Certificate Transparency's signed tree heads work. The chain
must hold every anchor's hash at its seq and reach every anchor's seq. When the links hold but an anchor disagrees,
the rewritten row lies after the last anchor that held and at or before the one that disagrees; the verifier
reports the disagreeing seq and that range (`BrokenLink.earliest_seq`), so an anchor on every row (a checkpoint
records the hash of each row since the one before, a pack its 25 newest rows) names the rewritten row itself.

The asyncpg adapter, over `audit.records` (shared/sql/0001_audit.sql, which refuses UPDATE, DELETE and TRUNCATE):

    append(conn, ...)          the org's next record, inserted in the caller's transaction, or `AuditFailed`
    records(conn, org_id)      the org's rows in seq order, read in bounded batches
    verify_org(conn, org_id)   `verify` over `records`, for chains too long to hold in memory (`after=`: the rows
                               after a known link only)

`append` serialises an org's writers with a transaction-scoped advisory lock, `pg_advisory_xact_lock(AUDIT_LOCK_CLASS,
hashtext(org_id::text))`: the two-key form, which PostgreSQL keeps apart from the one-key locks (migrations, the
first signing key), with a class number of its own (auth's refresh families use another). Two orgs whose ids hash
alike only queue behind each other. The lock is held to the end of the caller's transaction, so `append` is the
transaction's last statement: every writer of the org waits for whatever follows it, and a lock taken after it
could deadlock with another writer of the org.

READ COMMITTED only. The last record is read in a statement after the lock so that its snapshot sees the record
the previous holder committed; under REPEATABLE READ or SERIALIZABLE the snapshot is the transaction's first, so a
writer that queued would read a stale tail and collide on the primary key. `append` checks the isolation level in
the lock's own statement and refuses any other with `AuditFailed` (a programming error of the caller).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

import asyncpg
import orjson

from shared.canonical import canonical_json
from shared.context import REQUEST_ID_PATTERN, current_request_id
from shared.errors import AuditFailed, transient
from shared.validation import nul_paths

if TYPE_CHECKING:
    from shared.tokens import Principal

__all__ = [
    "AUDIT_LOCK_CLASS",
    "EARLIEST_AT",
    "FIRST_SEQ",
    "GENESIS_HASH",
    "HASHED_FIELDS",
    "LATEST_AT",
    "MAX_ACTION_CHARS",
    "MAX_DETAIL_BYTES",
    "MAX_SEQ",
    "MAX_TARGET_CHARS",
    "READ_BATCH_ROWS",
    "READ_TIMEOUT_S",
    "REQUIRED_ISOLATION",
    "Actor",
    "ActorKind",
    "Anchor",
    "AuditFailed",
    "AuditRecord",
    "BrokenLink",
    "ChainVerifier",
    "InvalidAuditField",
    "VerifyResult",
    "actor_of",
    "append",
    "chain_hash",
    "hashed_fields",
    "last_record",
    "next_record",
    "parse_actor",
    "record_of_row",
    "records",
    "verify",
    "verify_org",
]

FIRST_SEQ = 1
# JSON numbers are exact only up to 2**53 - 1 (RFC 8785 section 3.2.2.3); rfc8785 refuses integers past it.
MAX_SEQ = 2**53 - 1
HASH_HEX_CHARS = hashlib.sha256().digest_size * 2
# Zeros rather than the digest of a phrase: a verifier needs nothing but this text to check the first link.
GENESIS_HASH = "0" * HASH_HEX_CHARS
MAX_ACTION_CHARS = 64
MAX_TARGET_CHARS = 256
# A detail summarises a change (ids, old and new states, amounts); a bound keeps request bodies, and the PII in
# them, from being copied in whole.
MAX_DETAIL_BYTES = 16 * 1024
# The range of `at` (the module docstring says why it is bounded), both ends included.
EARLIEST_AT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_AT = datetime(9999, 12, 31, tzinfo=UTC)
# The columns under the hash besides prev_hash, in the order of the docstring's table.
HASHED_FIELDS = ("org_id", "seq", "at", "actor", "action", "target", "request_id", "detail")

ActorKind = Literal["user", "client", "regulator", "system"]
ACTOR_KINDS: tuple[ActorKind, ...] = get_args(ActorKind)

_HASH = re.compile(f"[0-9a-f]{{{HASH_HEX_CHARS}}}")
# Client ids and regulator names are handles, never emails or names: the chain is kept for years and shown to
# regulators, so it holds no PII.
_ACTOR_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_ACTION = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")
_TARGET = re.compile(r"[\x21-\x7e]+")


class InvalidAuditField(ValueError):
    """A record cannot be written as asked; the message names the field."""


@dataclass(frozen=True)
class Actor:
    """Who acted: a user, an API client, a regulator, or the system itself (`id` None)."""

    kind: ActorKind
    id: str | None

    def __str__(self) -> str:
        return self.kind if self.id is None else f"{self.kind}:{self.id}"


def parse_actor(text: str) -> Actor:
    """The actor named by `text`; `InvalidAuditField` unless it is exactly `user:<uuid>` (lowercase, hyphenated),
    `client:<id>`, `regulator:<name>` or `system`, so one actor is always written one way."""
    if text == "system":
        return Actor("system", None)
    kind, sep, ident = text.partition(":")
    if not sep or kind not in ACTOR_KINDS or kind == "system" or not _ACTOR_ID.fullmatch(ident):
        raise InvalidAuditField(f"actor must be user:<uuid>, client:<id>, regulator:<name> or system, not {text!r}")
    if kind == "user" and not _is_canonical_uuid(ident):
        raise InvalidAuditField(f"a user actor is user:<uuid> in lowercase 8-4-4-4-12 form, not {text!r}")
    return Actor(kind, ident)


# What each kind of token principal (`shared.tokens.PRINCIPAL_KINDS`) is recorded as: a service is an OAuth client
# (its id, `service-<name>`, tells it from an org's API clients).
_ACTOR_KIND_OF_PRINCIPAL: Mapping[str, ActorKind] = {
    "user": "user",
    "client": "client",
    "regulator": "regulator",
    "service": "client",
}


def actor_of(principal: Principal) -> str:
    """The actor a caller is recorded as: `user:<id>` for a user, `client:<id>` for an org's API client or one of
    our services (`client:service-<name>`), `regulator:<credential>` for a regulator. `InvalidAuditField` for a
    kind of principal with no actor form (a new kind must be given one here, not recorded as something else)."""
    kind = _ACTOR_KIND_OF_PRINCIPAL.get(principal.kind)
    if kind is None:
        raise InvalidAuditField(f"no actor form for a principal of kind {principal.kind!r}")
    return f"{kind}:{principal.subject}"


@dataclass(frozen=True)
class AuditRecord:
    """One row of an org's chain, as stored. Built by `next_record`; read back from storage as it is, unchecked,
    so that `verify` can report a tampered row rather than fail to load it."""

    org_id: uuid.UUID
    seq: int
    at: datetime
    actor: str
    action: str
    target: str
    request_id: str | None
    detail: Mapping[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class Anchor:
    """A link known from outside the table (a signed checkpoint or pack, a regulator's copy): row `seq` must have
    `hash`. `source` names where it was recorded, in words for the verdict ("signed checkpoint 3f2c... (head
    record 9)"); without one the verdict says "anchored row"."""

    seq: int
    hash: str
    source: str | None = None


@dataclass(frozen=True)
class BrokenLink:
    """The first link that does not hold. `earliest_seq` is set when the fault is proven to lie somewhere from
    that seq to `seq` but not where (a rewrite with every later hash recomputed, between two anchors)."""

    seq: int
    reason: str
    earliest_seq: int | None = None


@dataclass(frozen=True)
class VerifyResult:
    """`checked` rows hold, in order from seq 1 (or from the row after `after`); `broken` is the first link that
    does not, or None."""

    checked: int
    broken: BrokenLink | None

    @property
    def ok(self) -> bool:
        return self.broken is None


def hashed_fields(record: AuditRecord) -> dict[str, Any]:
    """The record's columns under the hash besides prev_hash (`HASHED_FIELDS`), as `chain_hash` takes them
    (`canonical_json` writes the UUID and the datetime in the forms the module docstring gives)."""
    return {name: getattr(record, name) for name in HASHED_FIELDS}


def chain_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """sha256(bytes of `prev_hash` || JCS of `fields` with `prev_hash` added), in lowercase hex. `fields` are
    exactly `HASHED_FIELDS`, encoded by `hashed_fields`."""
    if not _HASH.fullmatch(prev_hash):
        raise InvalidAuditField(f"prev_hash must be {HASH_HEX_CHARS} lowercase hex digits")
    if set(fields) != set(HASHED_FIELDS):
        raise InvalidAuditField(f"hashed fields must be exactly {', '.join(HASHED_FIELDS)}")
    row = canonical_json({**fields, "prev_hash": prev_hash})
    return hashlib.sha256(bytes.fromhex(prev_hash) + row).hexdigest()


def next_record(
    prev: AuditRecord | None,
    org_id: uuid.UUID,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    request_id: str | None,
    detail: Mapping[str, Any],
) -> AuditRecord:
    """The record after `prev` (None: the org's first) in `org_id`'s chain, validated and hashed.
    `InvalidAuditField` names the first field that cannot be written; `detail` is kept as the JSON it hashes as."""
    if prev is not None and prev.org_id != org_id:
        raise InvalidAuditField(f"prev belongs to org {prev.org_id}, not {org_id}")
    seq = FIRST_SEQ if prev is None else prev.seq + 1
    if seq > MAX_SEQ:
        raise InvalidAuditField(f"seq would pass {MAX_SEQ}")
    parse_actor(actor)
    if len(action) > MAX_ACTION_CHARS or not _ACTION.fullmatch(action):
        raise InvalidAuditField(f"action must be a dotted lowercase name of at most {MAX_ACTION_CHARS} characters")
    if len(target) > MAX_TARGET_CHARS or not _TARGET.fullmatch(target):
        raise InvalidAuditField(f"target must be 1-{MAX_TARGET_CHARS} visible ASCII characters")
    if request_id is not None and not REQUEST_ID_PATTERN.fullmatch(request_id):
        raise InvalidAuditField("request_id must be a request id as the request context accepts it")
    if at.utcoffset() is None:
        raise InvalidAuditField("at must be timezone-aware: a naive time names no instant")
    if not EARLIEST_AT <= at <= LATEST_AT:
        raise InvalidAuditField(f"at must lie from {EARLIEST_AT.isoformat()} to {LATEST_AT.isoformat()}")
    if not isinstance(detail, Mapping):
        raise InvalidAuditField("detail must be a JSON object")
    try:
        detail_bytes = canonical_json(detail)
    except (TypeError, ValueError) as exc:
        raise InvalidAuditField(f"detail is not canonical JSON: {exc}") from exc
    if len(detail_bytes) > MAX_DETAIL_BYTES:
        raise InvalidAuditField(f"detail is {len(detail_bytes)} bytes as JSON, over {MAX_DETAIL_BYTES}")
    # Stored as parsed back: the caller's dict cannot change under the hash, and storage returns what was hashed.
    json_detail = orjson.loads(detail_bytes)
    if bad := nul_paths(json_detail):
        raise InvalidAuditField(f"detail holds a NUL character (jsonb cannot store one) at {bad!r}")
    at = at.astimezone(UTC)
    fields: dict[str, Any] = {
        "org_id": org_id,
        "seq": seq,
        "at": at,
        "actor": actor,
        "action": action,
        "target": target,
        "request_id": request_id,
        "detail": json_detail,
    }
    prev_hash = GENESIS_HASH if prev is None else prev.hash
    return AuditRecord(**fields, prev_hash=prev_hash, hash=chain_hash(prev_hash, fields))


def verify(
    rows: Iterable[AuditRecord],
    *,
    after: Anchor | None = None,
    anchor: Anchor | None = None,
    anchors: Iterable[Anchor] = (),
) -> VerifyResult:
    """Check one org's rows, given in seq order from seq 1 (with `after`, from the row after it); stop at the first
    broken link. A row is reported at the seq its position should hold: an edited row at its own, a deleted one at
    its seq (the gap), rows out of order at the first misplaced position. With `anchor` and `anchors`, the chain
    must reach each and hold its hash there."""
    verifier = ChainVerifier(after=after, anchor=anchor, anchors=anchors)
    for row in rows:
        if not verifier.add(row):
            break
    return verifier.result()


class ChainVerifier:
    """`verify` a row at a time, for rows read in batches (`verify_org`): `add` each in seq order from seq 1
    until it returns False, then take `result()`. Holds one link's state and the anchors, never the rows.

    `after` is a link known to hold, checked earlier or signed (a checkpoint's head seq and hash): the rows then
    start at its seq + 1, the first linking from its hash, and only that segment is checked; the rows up to it are
    taken on trust, and an anchor at or below its seq is not looked at. None: from seq 1 and GENESIS_HASH."""

    def __init__(
        self, *, after: Anchor | None = None, anchor: Anchor | None = None, anchors: Iterable[Anchor] = ()
    ) -> None:
        self._anchors: dict[int, list[Anchor]] = {}
        for each in (*anchors, *((anchor,) if anchor is not None else ())):
            if each.seq < FIRST_SEQ:  # a head before any record (seq 0) anchors nothing
                continue
            at_seq = self._anchors.setdefault(each.seq, [])
            if all(known.hash != each.hash for known in at_seq):
                at_seq.append(each)
        self._org_id: uuid.UUID | None = None
        self._expected_seq, self._expected_prev, self._checked = FIRST_SEQ, GENESIS_HASH, 0
        # The highest seq an anchor confirmed so far (0: none; the genesis link needs none). A known start counts.
        self._last_anchored = 0
        if after is not None:
            self._expected_seq, self._expected_prev, self._last_anchored = after.seq + 1, after.hash, after.seq
        self._broken: BrokenLink | None = None

    @property
    def checked(self) -> int:
        """Rows that hold so far."""
        return self._checked

    def add(self, row: AuditRecord) -> bool:
        """Check the next row; False once a link is broken (no later row is looked at)."""
        if self._broken is not None:
            return False
        seq = self._expected_seq
        reason = _fault(row, self._org_id, seq, self._expected_prev)
        if reason is not None:
            self._broken = BrokenLink(seq, reason)
            return False
        anchors = self._anchors.get(seq, ())
        disagreeing = next((anchor for anchor in anchors if anchor.hash != row.hash), None)
        if disagreeing is not None:
            self._broken = _rewritten(seq, disagreeing, self._last_anchored)
            return False
        if anchors:
            self._last_anchored = seq
        self._org_id, self._expected_prev = row.org_id, row.hash
        self._expected_seq, self._checked = seq + 1, self._checked + 1
        return True

    def result(self) -> VerifyResult:
        """The verdict on the rows added, taken as the whole chain: it must reach every anchor."""
        seq = self._expected_seq
        if self._broken is None:
            beyond = [anchor for at_seq, anchors in self._anchors.items() if at_seq >= seq for anchor in anchors]
            if beyond:
                farthest = max(beyond, key=lambda anchor: anchor.seq)
                return VerifyResult(self._checked, BrokenLink(seq, _cut_tail(seq - 1, farthest)))
        return VerifyResult(self._checked, self._broken)


def _rewritten(seq: int, anchor: Anchor, last_anchored: int) -> BrokenLink:
    """The break at `seq`, whose row links to the one before but is not the row `anchor` recorded."""
    if anchor.source is None:
        return BrokenLink(seq, f"row {seq} is not the anchored row")
    if last_anchored == seq - 1:
        # The row before was confirmed by an anchor: this row itself was changed.
        return BrokenLink(seq, f"record {seq} was changed after {anchor.source} covered it (its hash differs)")
    first = last_anchored + 1
    after = f"record {last_anchored}, the last one a signed anchor confirms" if last_anchored else "the first record"
    return BrokenLink(
        seq,
        f"a record from {first} to {seq} was changed after {anchor.source} covered it, and every later hash "
        f"recomputed: record {seq}'s hash differs from the recorded one; no anchor records the rows from "
        f"{after} on one by one, so which of them changed cannot be told",
        earliest_seq=first,
    )


def _cut_tail(last_seq: int, anchor: Anchor) -> str:
    if anchor.source is None:
        return f"chain ends at row {last_seq}, before anchored row {anchor.seq}"
    return (
        f"the chain ends at record {last_seq} but {anchor.source} records record {anchor.seq}: "
        "records were deleted from the tail"
    )


def _fault(row: AuditRecord, org_id: uuid.UUID | None, expected_seq: int, expected_prev: str) -> str | None:
    # Content first, so an edit of any column (seq and org_id included) is reported as an edit of this row.
    if _recomputed_hash(row) != row.hash:
        return f"row {expected_seq} was edited"
    if org_id is not None and row.org_id != org_id:
        return f"row {expected_seq} belongs to org {row.org_id}, not {org_id}"
    if row.seq > expected_seq:
        return f"seq gap: expected {expected_seq}, found {row.seq}"
    if row.seq < expected_seq:  # every seq below expected_seq has been seen
        return f"seq repeat: expected {expected_seq}, found {row.seq}"
    if row.prev_hash != expected_prev:
        if expected_seq == FIRST_SEQ:
            return f"row {FIRST_SEQ} does not start the chain"
        return f"row {expected_seq} does not follow row {expected_seq - 1}"
    return None


def _recomputed_hash(row: AuditRecord) -> str | None:
    try:
        return chain_hash(row.prev_hash, hashed_fields(row))
    except (TypeError, ValueError):  # a column no writer could have produced
        return None


def _is_canonical_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


# --- the asyncpg adapter over audit.records -----------------------------------------------------------------------

# 'AUDT': the class of the two-key advisory lock on an org's chain (a signed 32-bit number, as the key must be).
AUDIT_LOCK_CLASS = 0x41_55_44_54
# A batch of `records`: ~1 kB a row, so about 1 MB held at a time, and a million rows in a thousand round trips.
READ_BATCH_ROWS = 1000
# The deadline of one batch's read (an index range scan of READ_BATCH_ROWS rows takes milliseconds).
READ_TIMEOUT_S = 30.0

# The isolation level `append` needs (the module docstring says why), as `transaction_isolation` spells it.
REQUIRED_ISOLATION = "read committed"
# One round trip: the lock, and the transaction's isolation level to refuse any other than REQUIRED_ISOLATION.
_LOCK = "SELECT current_setting('transaction_isolation'), pg_advisory_xact_lock($1, hashtext($2))"
# detail crosses as text both ways, so the adapter works whether or not the connection has a jsonb codec
# (services' pools do, shared.db.init_connection; the CLI's connection does not).
_LAST = """
SELECT org_id, seq, at, actor, action, target, request_id, detail::text AS detail, prev_hash, hash
FROM audit.records WHERE org_id = $1 ORDER BY seq DESC LIMIT 1
"""
_PAGE = """
SELECT org_id, seq, at, actor, action, target, request_id, detail::text AS detail, prev_hash, hash
FROM audit.records WHERE org_id = $1 AND seq > $2 ORDER BY seq LIMIT $3
"""
_INSERT = """
INSERT INTO audit.records (org_id, seq, at, actor, action, target, request_id, detail, prev_hash, hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9, $10)
"""


async def append(
    connection: asyncpg.Connection,
    *,
    org_id: uuid.UUID,
    actor: str,
    action: str,
    target: str,
    detail: Mapping[str, Any],
    request_id: str | None = None,
    at: datetime | None = None,
) -> AuditRecord:
    """Write the org's next record (`next_record`) in the caller's transaction, as its last statement (the module
    docstring says why); `request_id` None means the current request's, `at` None now. Any failure is
    `AuditFailed`, raised from its cause, so the caller's `async with connection.transaction()` rolls the change
    back with it; a transient one (`shared.errors.transient`: a deadline, a conflict, a lost connection) is raised
    as it is, and answered 503. READ COMMITTED only: another isolation level is `AuditFailed` (the module docstring
    says why)."""
    org = str(org_id)
    if not connection.is_in_transaction():
        raise AuditFailed(org, action, actor, "append must run inside the transaction of the change it records")
    try:
        isolation = await connection.fetchval(_LOCK, AUDIT_LOCK_CLASS, org)
        if isolation != REQUIRED_ISOLATION:
            reason = f"append needs a {REQUIRED_ISOLATION} transaction, not {isolation}: it reads the chain's tail"
            raise AuditFailed(org, action, actor, f"{reason} after taking the org's lock")
        # Read after the lock, in a statement of its own: under READ COMMITTED its snapshot holds the record of
        # the writer that released the lock last.
        prev = await last_record(connection, org_id)
        request_id = request_id if request_id is not None else current_request_id.get()
        at = at if at is not None else datetime.now(UTC)
        record = next_record(prev, org_id, at, actor, action, target, request_id, detail)
        await connection.execute(
            _INSERT,
            record.org_id,
            record.seq,
            record.at,
            record.actor,
            record.action,
            record.target,
            record.request_id,
            orjson.dumps(record.detail).decode(),
            record.prev_hash,
            record.hash,
        )
    except AuditFailed:
        raise
    except Exception as exc:
        if transient(exc):
            # The database was slow, busy or gone (a deadline on the org's lock, a conflict, a lost connection): the
            # transaction rolls back whole like any failure, but it is no fault of the trail, so no `audit_failed`
            # page for the on-call: the boundary answers 503 with Retry-After.
            raise
        raise AuditFailed(org, action, actor, f"{type(exc).__name__}: {exc}") from exc
    return record


async def last_record(connection: asyncpg.Connection, org_id: uuid.UUID) -> AuditRecord | None:
    """The org's record with the highest seq, or None when it has none."""
    row = await connection.fetchrow(
        _LAST,
        org_id,
        timeout=READ_TIMEOUT_S,
    )
    return record_of_row(row) if row is not None else None


async def records(
    connection: asyncpg.Connection, org_id: uuid.UUID, *, after_seq: int = 0, batch_rows: int = READ_BATCH_ROWS
) -> AsyncIterator[AuditRecord]:
    """The org's rows with seq above `after_seq`, in seq order, read `batch_rows` at a time (keyset pages on the
    primary key), as stored and unchecked."""
    while True:
        rows = await connection.fetch(
            _PAGE,
            org_id,
            after_seq,
            batch_rows,
            timeout=READ_TIMEOUT_S,
        )
        for row in rows:
            yield record_of_row(row)
        if len(rows) < batch_rows:
            return
        after_seq = rows[-1]["seq"]


async def verify_org(
    connection: asyncpg.Connection,
    org_id: uuid.UUID,
    *,
    after: Anchor | None = None,
    anchor: Anchor | None = None,
    anchors: Iterable[Anchor] = (),
    batch_rows: int = READ_BATCH_ROWS,
    progress: Callable[[int], None] | None = None,
) -> VerifyResult:
    """`verify` the org's whole chain from storage (with `after`, the rows after that known link) against `anchor`
    and `anchors`, a batch at a time; `progress` is told the rows checked so far after each batch. Rows are read
    until the first broken link, never all at once."""
    verifier = ChainVerifier(after=after, anchor=anchor, anchors=anchors)
    start = 0 if after is None else after.seq
    async for row in records(connection, org_id, after_seq=start, batch_rows=batch_rows):
        if not verifier.add(row):
            break
        if progress is not None and verifier.checked % batch_rows == 0:
            progress(verifier.checked)
    result = verifier.result()
    if progress is not None:
        progress(result.checked)
    return result


def record_of_row(row: asyncpg.Record) -> AuditRecord:
    """A record as stored (columns as `records` selects them, detail as text), unchecked."""
    return AuditRecord(
        org_id=row["org_id"],
        seq=row["seq"],
        at=row["at"],
        actor=row["actor"],
        action=row["action"],
        target=row["target"],
        request_id=row["request_id"],
        detail=orjson.loads(row["detail"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )
