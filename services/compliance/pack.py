"""The compliance report and the evidence pack's payload, pure: what the handlers of report.py and evidence.py
build from core's answers and compliance's own rows, with no I/O.

    report_of(inputs, now)     the report (`GET /compliance/report`) from core's report inputs
    NewPack                    the body of `POST /compliance/evidence`: nothing, `{}` or `{"tag": ...}`
    audit_head(records)        the chain head a pack anchors: the newest of the org's audit records
    PackPayload / payload_bytes   the signed document and its one encoding (RFC 8785 canonical JSON)

The payload is written once, as canonical JSON, and those bytes are what is hashed, signed, stored and exported.
Audit records in it keep every column, `at` in the chain's own form (`shared.audit`), so anyone holding a pack can
recompute the hashes of the rows it carries and check them against the head it names.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from services.compliance.signing import PACK_FORMAT
from services.compliance.store.snapshots import SnapshotRow
from shared.audit import GENESIS_HASH, AuditRecord
from shared.canonical import canonical_json, utc_text
from shared.contracts.compliance import BAS_HISTORY_CYCLES, Report
from shared.contracts.core import AlertView, ReportInputs, ReportObligations

__all__ = [
    "PACK_AUDIT_RECORDS",
    "PACK_SNAPSHOTS",
    "TAG_MAX_CHARS",
    "AuditHead",
    "NewPack",
    "PackAuditRecord",
    "PackPayload",
    "PackSnapshot",
    "audit_head",
    "chain_time",
    "pack_audit_record",
    "pack_snapshot",
    "payload_bytes",
    "report_of",
]

PACK_AUDIT_RECORDS = 25
PACK_SNAPSHOTS = 5
TAG_MAX_CHARS = 100


def report_of(inputs: ReportInputs, now: datetime) -> Report:
    """The report of core's `inputs`, generated at `now`."""
    return Report(
        org_id=uuid.UUID(inputs.org_id),
        generated_at=now,
        bas_history=inputs.cycles[:BAS_HISTORY_CYCLES],
        payment_plans=inputs.payment_plans,
        alerts=inputs.alerts,
        obligations=inputs.obligations,
        next_bas_due=inputs.obligations.next_bas_due,
        designated_totals=inputs.designated_totals,
    )


# Characters a tag may not hold. Category Cc: C0 and C1 controls and DEL; Zl and Zp: the line and paragraph
# separators; and the bidirectional controls, which reorder how the text around them is shown ("Trojan Source",
# CVE-2021-42574). A tag is shown in listings, terminals and file names: a newline, an escape sequence or a
# reordering in one would forge what a reader sees.
REFUSED_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# Characters that show nothing by themselves: a tag of only these (spaces, no-break spaces, zero-width format
# characters) would be a blank entry in a listing. Inside a tag they stay allowed (an emoji's zero-width joiner).
INVISIBLE_CATEGORIES = frozenset({"Cf", "Zs"})


def _no_control_characters(text: str) -> str:
    if any(unicodedata.category(ch) in REFUSED_CATEGORIES or ch in BIDI_CONTROLS for ch in text):
        raise ValueError("must not contain control characters (line breaks, escapes, bidirectional controls)")
    if all(ch.isspace() or unicodedata.category(ch) in INVISIBLE_CATEGORIES for ch in text):
        raise ValueError("must hold a visible character (not only spaces or zero-width characters)")
    return text


Tag = Annotated[
    str,
    StringConstraints(strict=True, min_length=1, max_length=TAG_MAX_CHARS),
    AfterValidator(_no_control_characters),
]


class NewPack(BaseModel):
    """`POST /compliance/evidence`: an optional tag of 1-100 characters to find the pack by (free text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tag: Tag | None = None


class AuditHead(BaseModel):
    """The newest record of the org's audit chain when the pack was made; seq 0 and GENESIS_HASH for none."""

    seq: int
    hash: str


def audit_head(newest_first: Sequence[AuditRecord]) -> AuditHead:
    """The head of a chain from its records read newest first (so the pack's rows and its head agree)."""
    if not newest_first:
        return AuditHead(seq=0, hash=GENESIS_HASH)
    return AuditHead(seq=newest_first[0].seq, hash=newest_first[0].hash)


def chain_time(moment: datetime) -> str:
    """`moment` in the form the audit chain hashes it ("2026-11-27T21:55:37.000000Z")."""
    return utc_text(moment)


class PackAuditRecord(BaseModel):
    """One audit row as stored, every column (see `shared.audit` for how `hash` is computed from them)."""

    org_id: uuid.UUID
    seq: int
    at: str
    actor: str
    action: str
    target: str
    request_id: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str


def pack_audit_record(record: AuditRecord) -> PackAuditRecord:
    return PackAuditRecord(
        org_id=record.org_id,
        seq=record.seq,
        at=chain_time(record.at),
        actor=record.actor,
        action=record.action,
        target=record.target,
        request_id=record.request_id,
        detail=dict(record.detail),
        prev_hash=record.prev_hash,
        hash=record.hash,
    )


class PackSnapshot(BaseModel):
    id: uuid.UUID
    taken_at: datetime
    taken_by: str
    body: dict[str, Any]


def pack_snapshot(row: SnapshotRow) -> PackSnapshot:
    return PackSnapshot(id=row.id, taken_at=row.taken_at, taken_by=row.taken_by, body=row.body)


class PackPayload(BaseModel):
    """The signed document of an evidence pack. Everything a verifier trusts is in here: which pack and org it is,
    when and by whom it was made, and the audit chain head it anchors."""

    format: str = PACK_FORMAT
    id: uuid.UUID
    org_id: uuid.UUID
    created_at: datetime
    created_by: str
    tag: str | None
    audit_head: AuditHead
    report: Report
    obligations: ReportObligations
    alerts: list[AlertView] = Field(description="The org's newest alerts, open and resolved, without notes")
    audit: list[PackAuditRecord] = Field(description=f"The org's {PACK_AUDIT_RECORDS} newest audit records")
    snapshots: list[PackSnapshot] = Field(description=f"The org's {PACK_SNAPSHOTS} newest monitoring snapshots")


def payload_bytes(payload: PackPayload) -> bytes:
    """The payload's one encoding: its JSON form (money strings, ISO dates) as RFC 8785 canonical JSON."""
    document: Mapping[str, Any] = payload.model_dump(mode="json")
    return canonical_json(document)
