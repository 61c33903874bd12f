"""Issuing and revoking regulator credentials, each change audited in the chain of every org it affects (in the
caller's transaction, after the change): what the admins' routes (`credentials.py`) and `apgms regulator` share.

An org's chain records the credential's id, name, expiry and how many orgs it covers, never the other orgs' ids
(one org's auditors need not learn which other orgs a regulator views).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg
from starlette.concurrency import run_in_threadpool

from services.regulator import codes, store
from services.regulator.models import Credential
from shared import audit
from shared.passwords import HASHER

__all__ = ["IssuedCredential", "hash_code", "issue", "name_taken", "revoke_everywhere", "revoke_for_org"]


def name_taken(name: str) -> str:
    """Why a name is refused (the admins' 409 and the CLI's exit 1): names are unique and never reused, revoked or
    not, because the audit trail's `regulator:<name>` must name one credential forever."""
    return (
        f"A regulator credential named {name!r} exists already. Names are never reused, even after revocation "
        f"(the audit trail's regulator:{name} must name one credential forever): choose another name"
    )


class IssuedCredential:
    """A new credential and its access code, which exists only here and in the answer that shows it once."""

    def __init__(self, credential: Credential, access_code: str) -> None:
        self.credential = credential
        self.access_code = access_code

    def __repr__(self) -> str:
        return f"IssuedCredential({self.credential!r})"


async def hash_code(code: codes.AccessCode) -> str:
    """The argon2id hash of the whole code (~70 ms of CPU: off the event loop)."""
    return await run_in_threadpool(HASHER.hash, code.text)


def _detail(credential: Credential, **extra: str | int) -> dict[str, str | int]:
    return {
        "credential_id": str(credential.id),
        "name": credential.name,
        "expires_at": credential.expires_at.isoformat(),
        "org_count": len(credential.org_ids),
        **extra,
    }


async def issue(
    conn: asyncpg.Connection,
    *,
    name: str,
    org_ids: Sequence[uuid.UUID],
    expires_at: datetime,
    actor: str,
    code: codes.AccessCode,
    code_hash: str,
) -> IssuedCredential | None:
    """Insert the credential and audit `regulator.credential.create` in each org's chain; None when the name is
    taken (nothing written)."""
    credential = await store.insert_credential(
        conn,
        name=name,
        lookup=code.lookup,
        code_hash=code_hash,
        org_ids=list(dict.fromkeys(org_ids)),
        created_by=actor,
        expires_at=expires_at,
    )
    if credential is None:
        return None
    # In one order, so two changes spanning the same orgs never wait on each other's chain locks.
    for org_id in sorted(credential.org_ids):
        await audit.append(
            conn,
            org_id=org_id,
            actor=actor,
            action="regulator.credential.create",
            target=f"regulator_credential:{credential.id}",
            detail=_detail(credential),
        )
    return IssuedCredential(credential, code.text)


async def revoke_for_org(conn: asyncpg.Connection, credential: Credential, org_id: uuid.UUID, actor: str) -> str:
    """What an org's admin may do: take the org off a credential that spans several (its sessions for the org end),
    or revoke a credential of this org alone. Audited `regulator.credential.revoke` in the org's chain; `credential`
    must be locked (`store.lock_credential`). The scope changed: "org" or "credential"."""
    if len(credential.org_ids) > 1:
        await store.remove_org(conn, credential.id, org_id)
        scope = "org"
    else:
        await store.revoke(conn, credential.id)
        scope = "credential"
    await audit.append(
        conn,
        org_id=org_id,
        actor=actor,
        action="regulator.credential.revoke",
        target=f"regulator_credential:{credential.id}",
        detail=_detail(credential, scope=scope),
    )
    return scope


async def revoke_everywhere(conn: asyncpg.Connection, credential: Credential, actor: str) -> int:
    """Revoke the credential for all its orgs (its sessions end), audited in each org's chain; `credential` must
    be locked. How many sessions were live."""
    ended = await store.revoke(conn, credential.id)
    # In one order, so two changes spanning the same orgs never wait on each other's chain locks.
    for org_id in sorted(credential.org_ids):
        await audit.append(
            conn,
            org_id=org_id,
            actor=actor,
            action="regulator.credential.revoke",
            target=f"regulator_credential:{credential.id}",
            detail=_detail(credential, scope="credential"),
        )
    return ended
