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
    previous    {"id", "sha256"} of the org's checkpoint before this one (null for its first); checkpoints taken
                before chaining lack the field

Checkpoints chain to each other like the records they cover: `AnchorCollector` checks, for the org's checkpoints
in head order, that each one's `previous` is the checkpoint right before it with that digest, so a checkpoint
deleted from the middle of the sequence, or replaced, is reported (`InvalidAnchor` with check CHECK_CHAIN) by the
one after it, which the deleter cannot re-sign. The NEWEST checkpoint has no successor to name it: deleting it (and
the packs after it) cannot be seen from inside the database; only copies held elsewhere (packs a regulator
downloaded, `apgms backup evidence-pack` files) show it. A checkpoint without `previous` (made before chaining) is
not checked against the one before it.

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
    "CHECK_CHAIN",
    "MAX_CHECKPOINT_ROWS",
    "AnchorCollector",
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
# The check an `InvalidAnchor` names when the sequence of checkpoints is broken (one deleted, replaced or out of place).
CHECK_CHAIN = "chain"


class Head(BaseModel):
    """A link of the chain as a signed document records it: record `seq` has `hash` (seq 0: no record yet)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    seq: int = Field(ge=0, le=MAX_SEQ, strict=True)
    hash: str = Field(pattern=_HASH_PATTERN)

    @classmethod
    def of(cls, record: AuditRecord | None) -> Head:
        return cls(seq=0, hash=GENESIS_HASH) if record is None else cls(seq=record.seq, hash=record.hash)


class Previous(BaseModel):
    """The checkpoint before this one, as a checkpoint's payload names it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: uuid.UUID
    sha256: str = Field(pattern=_HASH_PATTERN)


class CheckpointPayload(BaseModel):
    """A signed checkpoint's payload (the module docstring gives each field); `previous` left unset (not in
    `model_fields_set`) when the checkpoint was made before chaining."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: Literal["apgms.audit-checkpoint/1"]
    id: uuid.UUID
    org_id: uuid.UUID
    created_at: datetime
    created_by: str
    head: Head
    rows: list[Head]
    previous: Previous | None = None


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
    previous: Checkpoint | None,
) -> bytes:
    """The canonical JSON a checkpoint signs: `head`, the hashes of `rows` (oldest first, `head` last) and the id
    and digest of `previous`, the org's checkpoint before it (None: its first)."""
    return canonical_json(
        {
            "format": signing.CHECKPOINT_FORMAT,
            "id": checkpoint_id,
            "org_id": org_id,
            "created_at": created_at,
            "created_by": created_by,
            "head": {"seq": head.seq, "hash": head.hash},
            "rows": [{"seq": row.seq, "hash": row.hash} for row in rows],
            "previous": None if previous is None else {"id": previous.id, "sha256": previous.sha256},
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


@dataclass(frozen=True)
class _Links:
    """What a verified document's payload anchors: its head and recorded rows; a checkpoint's `previous` too
    (`chained` False: made before chaining, it names none)."""

    head: Head
    rows: list[Head]
    chained: bool = False
    previous: Previous | None = None


def _links(document: SignedDocument) -> _Links:
    """The links of a document whose signature held; `ValidationError` when it records no head."""
    if document.kind == "checkpoint":
        checkpoint = CheckpointPayload.model_validate_json(document.payload)
        chained = "previous" in checkpoint.model_fields_set
        return _Links(checkpoint.head, checkpoint.rows, chained, checkpoint.previous)
    pack = _PackAnchors.model_validate_json(document.payload)
    return _Links(pack.audit_head, pack.audit)


@dataclass(frozen=True)
class _Before:
    """The checkpoint before the next one, as its row shows it."""

    id: uuid.UUID
    sha256: str
    seq: int | None


class AnchorCollector:
    """Collects the anchors of documents fed one at a time (`add`), keeping only the anchors and the findings, so a
    caller can read an org's documents in batches; checkpoints must come in head order (their rows' seq), packs
    in any order, interleaved or not. `result()` is the `AnchorSet`."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._keys = keys
        self._anchors: list[Anchor] = []
        self._invalid: list[InvalidAnchor] = []
        self._used = 0
        self._latest: int | None = None
        self._before: _Before | None = None  # the last checkpoint added

    def add(self, document: SignedDocument) -> None:
        links = self._verified_links(document)
        if document.kind != "checkpoint":
            return
        if links is not None and links.chained:
            self._check_previous(document, links)
        self._before = _Before(document.id, document.sha256, None if document.head is None else document.head[0])

    def result(self) -> AnchorSet:
        return AnchorSet(tuple(self._anchors), self._used, self._latest, tuple(self._invalid))

    def _verified_links(self, document: SignedDocument) -> _Links | None:
        """The document's links, its anchors kept, when it verifies and its payload holds what its row shows;
        else None, reported."""
        expect = {"id": str(document.id), "org_id": str(document.org_id), **document.expect}
        verification = signing.verify(
            document.payload, document.sha256, document.signature, document.key_id, self._keys, expect=expect
        )
        failed = verification.failed
        if failed is not None:
            self._invalid.append(InvalidAnchor(document.kind, document.id, failed.name, failed.reason or "failed"))
            return None
        try:
            links = _links(document)
        except ValidationError:
            reason = "the payload does not record the audit chain's head"
            self._invalid.append(InvalidAnchor(document.kind, document.id, signing.CHECK_PAYLOAD, reason))
            return None
        head = links.head
        if document.head is not None and document.head != (head.seq, head.hash):
            row_seq, row_hash = document.head
            reason = f"the payload's head is record {head.seq}, not the record {row_seq} its row shows"
            if row_seq == head.seq:
                reason = f"the payload's head hash is not the {row_hash} its row shows"
            self._invalid.append(InvalidAnchor(document.kind, document.id, signing.CHECK_PAYLOAD, reason))
            return None
        source = f"{_NAMES[document.kind]} {document.id} (head record {head.seq})"
        self._anchors.extend(Anchor(link.seq, link.hash, source) for link in (*links.rows, head))
        self._used += 1
        self._latest = head.seq if self._latest is None else max(self._latest, head.seq)
        return links

    def _check_previous(self, document: SignedDocument, links: _Links) -> None:
        """Report a break in the sequence of checkpoints: the checkpoint `document` names as its predecessor is not
        the one before it (deleted), has another digest (replaced), or it names none yet one comes before it."""
        named, before = links.previous, self._before
        this = f"signed checkpoint {document.id} (head record {links.head.seq})"
        if named is None:
            if before is not None:
                reason = (
                    f"out of place: {this} was the org's first checkpoint when it was taken, yet this one comes "
                    "before it"
                )
                self._invalid.append(InvalidAnchor("checkpoint", before.id, CHECK_CHAIN, reason))
            return
        if before is None or before.id != named.id:
            instead = "none comes before it" if before is None else f"the one before it is {before.id}"
            if before is not None and before.seq is not None:
                instead += f" (head record {before.seq})"
            reason = (
                f"missing: {this} names it (sha256 {named.sha256}) as the checkpoint before it, but {instead}: "
                "it was deleted from the database"
            )
            self._invalid.append(InvalidAnchor("checkpoint", named.id, CHECK_CHAIN, reason))
        elif before.sha256 != named.sha256:
            reason = (
                f"replaced: {this} records its sha256 as {named.sha256}, but its row holds {before.sha256}: "
                "it is not the checkpoint that was signed"
            )
            self._invalid.append(InvalidAnchor("checkpoint", named.id, CHECK_CHAIN, reason))


def collect_anchors(documents: Iterable[SignedDocument], keys: Mapping[str, Ed25519PublicKey]) -> AnchorSet:
    """Every link the documents vouch for, from those whose digest and signature verify under `keys` and whose
    payload holds what their row shows (`SignedDocument.expect`, a checkpoint's head); checkpoints in head order,
    each checked against the one before it (`AnchorCollector`)."""
    collector = AnchorCollector(keys)
    for document in documents:
        collector.add(document)
    return collector.result()
