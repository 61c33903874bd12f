"""Anchors of the audit chain, pure: what a signed checkpoint says, and which (seq, hash) links the signed
checkpoints and packs of an org vouch for, so `shared.audit.verify` can catch history rewritten after they were
issued even when every later hash was recomputed.

A checkpoint's payload (canonical JSON, signed like a pack, `services.compliance.signing`):

    format      CHECKPOINT_FORMAT, "apgms.audit-checkpoint/1"
    id, org_id  the checkpoint's and its org's UUIDs
    created_at  when it was taken (UTC, six fraction digits)
    created_by  the actor who asked ("system" for the schedule)
    head        {"seq", "hash"}: the org's last audit record when it was taken
    rows        [{"seq", "hash"}, ...]: every record after the previous checkpoint's head up to `head`, oldest
                first, at most MAX_CHECKPOINT_ROWS (the newest); a first checkpoint records the newest rows

A pack's payload (`services.compliance.evidence`) carries `audit_head` {seq, hash} and `audit`, its 25 newest
records in full. Each recorded row is an anchor, so a row rewritten after a document covered it is named
exactly; a row no document recorded one by one (more than MAX_CHECKPOINT_ROWS records between two checkpoints, and
not among a pack's 25) is caught only as a range: after the last anchor that held, up to the head that disagrees.

A document is used only when its own digest and signature verify under the published keys and its payload holds
every field its row shows (format, id, org, creation time and author, a pack's tag, a checkpoint's head seq and
hash); one that does not is reported (`InvalidAnchor`), never trusted: whoever edits its row must not pick the
anchors, nor have an edited row shown as if it were signed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.compliance import signing
from services.compliance.store.checkpoints import Checkpoint
from services.compliance.store.packs import Pack
from shared.audit import GENESIS_HASH, MAX_SEQ, Anchor, AuditRecord
from shared.canonical import canonical_json

__all__ = [
    "MAX_CHECKPOINT_ROWS",
    "AnchorSet",
    "CheckpointPayload",
    "Head",
    "InvalidAnchor",
    "SignedDocument",
    "checkpoint_document",
    "checkpoint_payload",
    "collect_anchors",
    "pack_document",
]

# ~85 bytes of canonical JSON a row: a checkpoint stays under ~90 kB however far the head moved. An hourly schedule
# names every rewritten row exactly while an org writes fewer records than this an hour.
MAX_CHECKPOINT_ROWS = 1000

DocumentKind = Literal["checkpoint", "pack"]
_HASH_PATTERN = r"^[0-9a-f]{64}$"


class Head(BaseModel):
    """A link of the chain as a signed document records it: record `seq` has `hash` (seq 0: no record yet)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    seq: int = Field(ge=0, le=MAX_SEQ, strict=True)
    hash: str = Field(pattern=_HASH_PATTERN)

    @classmethod
    def of(cls, record: AuditRecord | None) -> Head:
        return cls(seq=0, hash=GENESIS_HASH) if record is None else cls(seq=record.seq, hash=record.hash)


class CheckpointPayload(BaseModel):
    """A signed checkpoint's payload (the module docstring gives each field)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: Literal["apgms.audit-checkpoint/1"]
    id: uuid.UUID
    org_id: uuid.UUID
    created_at: datetime
    created_by: str
    head: Head
    rows: list[Head]


class _PackAnchors(BaseModel):
    """The parts of a pack's payload that anchor the chain (the rest is the report and the rest of the evidence)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: Literal["apgms.evidence-pack/1"]
    audit_head: Head
    audit: list[Head]


def checkpoint_payload(
    checkpoint_id: uuid.UUID,
    org_id: uuid.UUID,
    created_at: datetime,
    created_by: str,
    head: AuditRecord,
    rows: Sequence[AuditRecord],
) -> bytes:
    """The canonical JSON a checkpoint signs: `head` and the hashes of `rows` (oldest first, `head` last)."""
    return canonical_json(
        {
            "format": signing.CHECKPOINT_FORMAT,
            "id": checkpoint_id,
            "org_id": org_id,
            "created_at": created_at,
            "created_by": created_by,
            "head": {"seq": head.seq, "hash": head.hash},
            "rows": [{"seq": row.seq, "hash": row.hash} for row in rows],
        }
    )


@dataclass(frozen=True)
class SignedDocument:
    """A checkpoint or a pack as stored: its payload bytes and their digest and signature; `expect`, the fields its
    row shows that the payload must hold (`signing.verify`); `head`, the head a checkpoint's row shows."""

    kind: DocumentKind
    id: uuid.UUID
    org_id: uuid.UUID
    payload: bytes = field(repr=False)
    sha256: str
    signature: str
    key_id: str
    expect: Mapping[str, signing.Expected] = field(default_factory=dict)
    head: tuple[int, str] | None = None


def checkpoint_document(checkpoint: Checkpoint) -> SignedDocument:
    expect: dict[str, signing.Expected] = {
        "format": signing.CHECKPOINT_FORMAT,
        "id": str(checkpoint.id),
        "org_id": str(checkpoint.org_id),
        "created_at": checkpoint.created_at,
        "created_by": checkpoint.created_by,
    }
    return SignedDocument(
        "checkpoint",
        checkpoint.id,
        checkpoint.org_id,
        checkpoint.payload,
        checkpoint.sha256,
        checkpoint.signature,
        checkpoint.key_id,
        expect,
        (checkpoint.seq, checkpoint.hash),
    )


def pack_document(pack: Pack) -> SignedDocument:
    return SignedDocument(
        "pack", pack.id, pack.org_id, pack.payload, pack.sha256, pack.signature, pack.key_id, signing.pack_fields(pack)
    )


@dataclass(frozen=True)
class InvalidAnchor:
    """A document that failed its own verification (`check` names the first check that failed) and was not used."""

    kind: DocumentKind
    id: uuid.UUID
    check: str
    reason: str


@dataclass(frozen=True)
class AnchorSet:
    """The anchors of every document that verified; `used` counts those documents, `latest_seq` is the highest
    head among them (None: none), `invalid` lists the others."""

    anchors: tuple[Anchor, ...]
    used: int
    latest_seq: int | None
    invalid: tuple[InvalidAnchor, ...]


_NAMES: Mapping[DocumentKind, str] = {"checkpoint": "signed checkpoint", "pack": "evidence pack"}


def _links(document: SignedDocument) -> tuple[Head, list[Head]]:
    """(head, recorded rows) of a document whose signature held; `ValidationError` when it records no head."""
    if document.kind == "checkpoint":
        checkpoint = CheckpointPayload.model_validate_json(document.payload)
        return checkpoint.head, checkpoint.rows
    pack = _PackAnchors.model_validate_json(document.payload)
    return pack.audit_head, pack.audit


def collect_anchors(documents: Iterable[SignedDocument], keys: Mapping[str, Ed25519PublicKey]) -> AnchorSet:
    """Every link the documents vouch for, from those whose digest and signature verify under `keys` and whose
    payload holds what their row shows (`SignedDocument.expect`, a checkpoint's head)."""
    anchors: list[Anchor] = []
    invalid: list[InvalidAnchor] = []
    used, latest = 0, None
    for document in documents:
        expect = {"id": str(document.id), "org_id": str(document.org_id), **document.expect}
        verification = signing.verify(
            document.payload, document.sha256, document.signature, document.key_id, keys, expect=expect
        )
        failed = verification.failed
        if failed is not None:
            invalid.append(InvalidAnchor(document.kind, document.id, failed.name, failed.reason or "failed"))
            continue
        try:
            head, rows = _links(document)
        except ValidationError:
            reason = "the payload does not record the audit chain's head"
            invalid.append(InvalidAnchor(document.kind, document.id, signing.CHECK_PAYLOAD, reason))
            continue
        if document.head is not None and document.head != (head.seq, head.hash):
            row_seq, row_hash = document.head
            reason = f"the payload's head is record {head.seq}, not the record {row_seq} its row shows"
            if row_seq == head.seq:
                reason = f"the payload's head hash is not the {row_hash} its row shows"
            invalid.append(InvalidAnchor(document.kind, document.id, signing.CHECK_PAYLOAD, reason))
            continue
        source = f"{_NAMES[document.kind]} {document.id} (head record {head.seq})"
        anchors.extend(Anchor(link.seq, link.hash, source) for link in (*rows, head))
        used += 1
        latest = head.seq if latest is None else max(latest, head.seq)
    return AnchorSet(tuple(anchors), used, latest, tuple(invalid))
