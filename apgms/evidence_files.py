"""The files `apgms evidence verify` reads and `apgms backup evidence-pack` writes, pure: no I/O here.

    export file   `GET /compliance/evidence/{id}` saved as it is (`shared.contracts.compliance.Export`)
    backup file   one `apgms backup evidence-pack` run (format BACKUP_FORMAT):
                  {"format", "org_id", "taken_at", "base_url", "export": <core's admin export>,
                   "report": <the compliance report>, "evidence": <an export>, "evidence_keys": <the JWKS>}

A backup file records the JWKS as it was when it was taken, so it verifies with nothing but itself; that proves the
file is whole, not that the keys are the service's, which is what `--keys` with the published keys adds.
"""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.contracts.compliance import EXPORT_FORMAT, Export

__all__ = [
    "BACKUP_FORMAT",
    "EvidenceFile",
    "EvidenceFileError",
    "backup_file_name",
    "parse_evidence_file",
    "printable",
]

BACKUP_FORMAT = "apgms.backup.evidence-pack/1"
BACKUP_FILE_PREFIX = "evidence-pack"


class EvidenceFileError(ValueError):
    """A file that is not an evidence export or backup; the message says what is wrong with it."""


class _BackupFile(BaseModel):
    """The parts of a backup file that verification reads (the export and the report are kept, not checked)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: Literal["apgms.backup.evidence-pack/1"]
    org_id: uuid.UUID
    taken_at: datetime
    base_url: str
    evidence: Export
    evidence_keys: dict[str, Any]


@dataclass(frozen=True)
class EvidenceFile:
    """A pack to verify; `recorded_keys` and `taken_at` come from a backup file, None for a plain export."""

    export: Export
    recorded_keys: dict[str, Any] | None = None
    taken_at: datetime | None = None
    base_url: str | None = None


# Characters that steer a terminal rather than show: controls (ANSI escapes start with ESC), format characters
# (bidi overrides, zero-width ones) and line and paragraph separators.
_UNPRINTABLE = frozenset(("Cc", "Cf", "Zl", "Zp"))


def printable(text: object) -> str:
    """`text` as a terminal can show it safely: each control, format or separator character written as its
    escape (`\\x1b`, `\\u202e`), so a value read from a file cannot clear the screen, recolour the output or
    reorder what follows it. Everything else, non-Latin letters included, is left as it is."""
    return "".join(
        char.encode("unicode_escape").decode("ascii") if unicodedata.category(char) in _UNPRINTABLE else char
        for char in str(text)
    )


def backup_file_name(org_id: uuid.UUID, taken_at: datetime) -> str:
    """`evidence-pack_<org>_<UTC timestamp>.json`, e.g. evidence-pack_<uuid>_20261128T031500Z.json."""
    return f"{BACKUP_FILE_PREFIX}_{org_id}_{taken_at:%Y%m%dT%H%M%SZ}.json"


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the document"
    return f"{where}: {first['msg']}"


def parse_evidence_file(data: bytes) -> EvidenceFile:
    """The pack in an export or backup file; `EvidenceFileError` for anything else."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise EvidenceFileError(f"the file is not JSON ({error})") from None
    if not isinstance(document, dict):
        raise EvidenceFileError("the file is not a JSON object, so not an evidence pack")
    file_format = document.get("format")
    try:
        if file_format == EXPORT_FORMAT:
            return EvidenceFile(Export.model_validate(document))
        if file_format == BACKUP_FORMAT:
            backup = _BackupFile.model_validate(document)
            if backup.evidence.org_id != backup.org_id:
                raise EvidenceFileError(
                    f"the backup is of org {backup.org_id} but its pack is of org {backup.evidence.org_id}"
                )
            return EvidenceFile(backup.evidence, backup.evidence_keys, backup.taken_at, backup.base_url)
    except ValidationError as error:
        raise EvidenceFileError(f"the file is not a valid {file_format} document: {_first_error(error)}") from None
    raise EvidenceFileError(
        f"the file is not an evidence pack: its format is {file_format!r}, expected {EXPORT_FORMAT!r} "
        f"(GET /compliance/evidence/{{id}}) or {BACKUP_FORMAT!r} (apgms backup evidence-pack)"
    )
