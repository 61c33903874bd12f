"""`make run`'s demo regulator credential: `demo-regulator` for the demo org, whose access code is derived from the
checkout's master key (HMAC-SHA256, like `devstack.dev_service_client_secrets`), so it is printed on every start
without being stored anywhere but as its argon2id hash. Dev only: refused when APGMS_ENV=production.

Each start makes sure the row accepts the derived code, covers the demo org, is not revoked and is valid for at
least another day; otherwise (a new master key, a revocation, an expiry) the row gets the code again, valid for
DEMO_VALID_DAYS, its old sessions end, and the change is audited in the demo org's chain.

Only a row make run could have made is ever reissued: created by DEMO_ACTOR and covering no org but the demo org. A
`demo-regulator` an org admin made (or one that covers another org) is left alone and DemoRegulatorRefused says
what to do, since reissuing it would hand the derived code another org's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import asyncpg
from starlette.concurrency import run_in_threadpool

from services.regulator import codes, lifecycle, store
from services.regulator.models import Credential
from shared import audit
from shared.passwords import verify_secret

__all__ = ["DEMO_CREDENTIAL_NAME", "DemoRegulatorRefused", "ensure_demo_credential"]

DEMO_CREDENTIAL_NAME = "demo-regulator"
DEMO_VALID_DAYS = 90
# Reissued when it would expire within this: a demo started today works all day.
DEMO_MIN_REMAINING = timedelta(days=1)
DEMO_ACTOR = "system"


class DemoRegulatorRefused(Exception):
    """The demo credential is for dev stacks only, and never takes over a credential make run did not make."""


def _refuse_unless_demo(credential: Credential, org_id: uuid.UUID) -> None:
    """DemoRegulatorRefused unless make run could have made `credential` (see the module docstring)."""
    if credential.created_by != DEMO_ACTOR:
        why = f"it was made by {credential.created_by}, not by make run"
    elif not set(credential.org_ids) <= {org_id}:
        why = f"it covers {len(credential.org_ids)} orgs, not the demo org alone"
    else:
        return
    raise DemoRegulatorRefused(
        f"make run left the regulator credential {DEMO_CREDENTIAL_NAME!r} alone and prints no demo access code: "
        f"{why}. Rename that credential (its name in the table regulator.credentials of the dev database), or "
        f"revoke it (apgms regulator revoke {DEMO_CREDENTIAL_NAME}) if it is not in use; names are never reused, "
        "so after a revocation the demo credential comes back only once the row is renamed or on a fresh dev "
        "database."
    )


async def _usable(credential: Credential, code: codes.AccessCode, org_id: uuid.UUID, now: datetime) -> bool:
    return (
        credential.lookup == code.lookup
        and credential.revoked_at is None
        and credential.expires_at > now + DEMO_MIN_REMAINING
        and org_id in credential.org_ids
        and await run_in_threadpool(verify_secret, credential.code_hash, code.text)
    )


async def ensure_demo_credential(
    conn: asyncpg.Connection, org_id: uuid.UUID, master_key: str, environ: Mapping[str, str]
) -> str:
    """The demo credential's access code, after making sure its row accepts it (module docstring)."""
    if environ.get("APGMS_ENV") == "production":
        raise DemoRegulatorRefused("the demo regulator credential is never created when APGMS_ENV=production")
    code = codes.derived_access_code(master_key.encode(), DEMO_CREDENTIAL_NAME)
    now = datetime.now(UTC)
    expires_at = now + timedelta(days=DEMO_VALID_DAYS)
    existing = await store.credential_by_name(conn, DEMO_CREDENTIAL_NAME)
    if existing is not None:
        _refuse_unless_demo(existing, org_id)
        if await _usable(existing, code, org_id, now):
            return code.text
    code_hash = await lifecycle.hash_code(code)
    async with conn.transaction():
        existing = await store.credential_by_name(conn, DEMO_CREDENTIAL_NAME)
        if existing is not None:
            existing = await store.lock_credential(conn, existing.id)
            assert existing is not None
            _refuse_unless_demo(existing, org_id)
        if existing is None:
            issued = await lifecycle.issue(
                conn,
                name=DEMO_CREDENTIAL_NAME,
                org_ids=[org_id],
                expires_at=expires_at,
                actor=DEMO_ACTOR,
                code=code,
                code_hash=code_hash,
            )
            assert issued is not None
            return code.text
        locked = existing  # locked FOR UPDATE above
        await store.replace_code_hash(conn, locked.id, lookup=code.lookup, code_hash=code_hash, expires_at=expires_at)
        await store.add_org(conn, locked.id, org_id)
        await audit.append(
            conn,
            org_id=org_id,
            actor=DEMO_ACTOR,
            action="regulator.credential.reissue",
            target=f"regulator_credential:{locked.id}",
            detail={"credential_id": str(locked.id), "name": locked.name, "expires_at": expires_at.isoformat()},
        )
    return code.text
