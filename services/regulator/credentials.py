"""The admins' routes for their org's regulator credentials (user tokens of an admin with a recent step-up; a
regulator session token is not a user token and is refused like any other bad token):

    GET  /regulator/credentials                          the credentials that include the admin's org (no hashes)
    POST /regulator/credentials {name, expires_in_days?} a credential for the admin's org: 201 with its access code,
                                                         shown this once; 409 `conflict` for a name in use
    POST /regulator/credentials/{id}/revoke              the admin's org comes off the credential (revoked outright
                                                         when it is its only org); its sessions for the org end at once

Changes are audited in the org's chain (`services.regulator.lifecycle`) and honour `Idempotency-Key`. A replayed
create answers the credential without its access code: the stored answer must not hold a working secret, so the
code is added to the first answer only, after the idempotency record is written.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.regulator import codes, lifecycle, store
from services.regulator.deps import POOL_ACQUIRE_TIMEOUT_S, regulator_deps
from services.regulator.models import Credential
from shared import audit
from shared.authz import guard
from shared.errors import ApiError
from shared.idempotency import REPLAY_HEADER, idempotent
from shared.openapi import documented
from shared.tokens import Principal
from shared.validation import parse_body, path_uuid

__all__ = ["MAX_LISTED", "create_credential", "list_credentials", "revoke_credential"]

ADMINS = ("admin",)
# An org has a handful of regulator credentials; the listing is bounded all the same.
MAX_LISTED = 500


class NewCredential(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(pattern=f"^{codes.NAME_PATTERN.pattern}$", max_length=64)
    expires_in_days: StrictInt = Field(codes.DEFAULT_EXPIRES_DAYS, ge=1, le=codes.MAX_EXPIRES_DAYS)


class CredentialView(BaseModel):
    id: str
    name: str
    created_at: datetime
    created_by: str
    expires_at: datetime
    revoked_at: datetime | None
    org_count: int
    live_sessions: int | None = None

    @classmethod
    def of(cls, credential: Credential, live_sessions: int | None = None) -> CredentialView:
        view = cls(
            id=str(credential.id),
            name=credential.name,
            created_at=credential.created_at,
            created_by=credential.created_by,
            expires_at=credential.expires_at,
            revoked_at=credential.revoked_at,
            org_count=len(credential.org_ids),
        )
        if live_sessions is not None:
            view.live_sessions = live_sessions
        return view


class CredentialList(BaseModel):
    items: list[CredentialView]


class CreatedCredential(BaseModel):
    credential: CredentialView
    access_code: str | None = None
    login: str | None = None


class RevokedCredential(BaseModel):
    credential: CredentialView
    scope: str  # "org": the org came off a credential of several; "credential": revoked outright


def _json(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json", exclude_unset=True), status_code=status)


@documented("The regulator credentials that include the admin's org", response=CredentialList, tags=["regulator"])
@guard(roles=ADMINS, step_up=True)
async def list_credentials(request: Request, principal: Principal) -> Response:
    org_id = uuid.UUID(principal.org_id)
    async with regulator_deps(request).pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S) as conn:
        listed = await store.credentials(conn, org_id, limit=MAX_LISTED)
    items = [CredentialView.of(entry.credential, entry.live_sessions) for entry in listed]
    return _json(CredentialList(items=items))


@documented(
    "Create a regulator credential for the admin's org (the access code is shown once)",
    request=NewCredential,
    response=CreatedCredential,
    status=201,
    tags=["regulator"],
)
@guard(roles=ADMINS, step_up=True)
async def create_credential(request: Request, principal: Principal) -> Response:
    body = await parse_body(request, NewCredential)
    org_id = uuid.UUID(principal.org_id)
    actor = audit.actor_of(principal)
    code = codes.new_access_code()
    code_hash = await lifecycle.hash_code(code)
    issued: lifecycle.IssuedCredential | None = None
    async with regulator_deps(request).pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S) as conn, conn.transaction():

        async def work() -> Response:
            nonlocal issued
            issued = await lifecycle.issue(
                conn,
                name=body.name,
                org_ids=[org_id],
                expires_at=datetime.now(UTC) + timedelta(days=body.expires_in_days),
                actor=actor,
                code=code,
                code_hash=code_hash,
            )
            if issued is None:
                raise ApiError("conflict", lifecycle.name_taken(body.name))
            return _json(CreatedCredential(credential=CredentialView.of(issued.credential)), 201)

        response = await idempotent(request, conn, work, org_id=org_id, actor=actor, body=body)
    if issued is None or response.headers.get(REPLAY_HEADER):
        return response
    shown = CreatedCredential(
        credential=CredentialView.of(issued.credential),
        access_code=issued.access_code,
        login=f"POST /regulator/login {{access_code, org_id: {org_id}}}, or the portal at /regulator/portal/",
    )
    return _json(shown, 201)


@documented("Revoke a regulator credential for the admin's org", response=RevokedCredential, tags=["regulator"])
@guard(roles=ADMINS, step_up=True)
async def revoke_credential(request: Request, principal: Principal) -> Response:
    credential_id = path_uuid(request, "credential_id")
    org_id = uuid.UUID(principal.org_id)
    actor = audit.actor_of(principal)
    async with regulator_deps(request).pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S) as conn, conn.transaction():

        async def work() -> Response:
            credential = await store.lock_credential(conn, credential_id)
            if credential is None or org_id not in credential.org_ids:
                raise ApiError("not_found", "No regulator credential with this id includes your org")
            if credential.revoked_at is not None:
                return _json(RevokedCredential(credential=CredentialView.of(credential), scope="credential"))
            scope = await lifecycle.revoke_for_org(conn, credential, org_id, actor)
            after = await store.credential_by_id(conn, credential_id)
            assert after is not None
            return _json(RevokedCredential(credential=CredentialView.of(after), scope=scope))

        return await idempotent(request, conn, work, org_id=org_id, actor=actor, body=b"")
