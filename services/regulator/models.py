"""What the regulator's modules pass between them: a credential as stored and a live session."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["Credential", "RegulatorSession"]


@dataclass(frozen=True)
class Credential:
    id: uuid.UUID
    name: str
    lookup: str
    code_hash: str = field(repr=False)
    org_ids: tuple[uuid.UUID, ...]
    created_at: datetime
    created_by: str
    expires_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class RegulatorSession:
    """A live session, as the guard found it for this request: one credential, one org."""

    id: uuid.UUID
    credential_id: uuid.UUID
    credential_name: str
    org_id: uuid.UUID
    expires_at: datetime

    @property
    def actor(self) -> str:
        """Who the audit chain records: `regulator:<credential name>`."""
        return f"regulator:{self.credential_name}"
