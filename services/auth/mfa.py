"""TOTP enrolment and step-up (RFC 6238 codes, or a one-time recovery code) for a fresh `otp` access token.

The TOTP secret is sealed with the master key and bound to its user's row. Each accepted 30-second step is stored,
so a code works once and an older step never works again. Recovery codes are stored as salted PBKDF2 hashes and
shown once, at confirmation. Wrong codes count per user: the `MFA_MAX_FAILURES`-th wrong code within
`MFA_FAILURE_WINDOW_S` locks out every code (right ones too, or the lock would not slow a guesser) for
`MFA_LOCKOUT_S`.

Enrolling needs the password again (checked under the login guard, like a login), so a stolen access token cannot
enrol the thief's authenticator. Replacing an enrolled authenticator needs that and a recent step-up with the
current one, which keeps working until the new one is confirmed. An admin (with step-up) can remove a user's
authenticator in their org; the user then enrols again. A confirmed enrolment or replacement and an admin's
removal write their audit records (`shared.audit.append`) in the change's transaction; a begun enrolment does not,
as its secret opens nothing until it is confirmed.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import time
import uuid
from collections.abc import Sequence

import asyncpg
import pyotp
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.auth import store
from services.auth.models import (
    RecoveryCodes,
    StepUpRequest,
    TokenResponse,
    TotpBeginRequest,
    TotpBeginResponse,
    TotpConfirmRequest,
)
from services.auth.passwords import salted_hash, salted_matches
from services.auth.sessions import current_user, guarded_password_check
from shared import audit
from shared.authz import guard
from shared.crypto import SecretBox
from shared.errors import ApiError, FieldError
from shared.metrics import record_security_event
from shared.openapi import documented
from shared.ratelimit import LoginGuard, make_backend, rate_limited_error
from shared.tokens import ACCESS_TOKEN_TTL_S, Principal
from shared.validation import parse_body, path_uuid

TOTP_ISSUER = "APGMS"
TOTP_STEP_S = 30
# One step either side absorbs clock drift and a code typed as it rolls over (RFC 6238 section 5.2).
TOTP_WINDOW_STEPS = 1
TOTP_SECRET_CHARS = 32  # base32: 160 bits, the HMAC-SHA1 key length RFC 4226 recommends
RECOVERY_CODE_COUNT = 10
# Crockford's base32: no I, L, O or U, so a code read aloud or off paper is unambiguous; 12 characters = 60 bits.
RECOVERY_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
RECOVERY_GROUPS = 3
RECOVERY_GROUP_CHARS = 4
RECOVERY_SALT_BYTES = 16
MFA_MAX_FAILURES = 5
MFA_FAILURE_WINDOW_S = 300.0
MFA_LOCKOUT_S = 300.0

_TOTP_CODE = re.compile(r"[0-9]{6}")
# What people type for the letters Crockford's alphabet leaves out.
_HEX_OR_HYPHEN = frozenset("0123456789abcdef-")
_RECOVERY_LOOKALIKES = str.maketrans({"o": "0", "i": "1", "l": "1", "-": None, " ": None})
_ENROL_FIRST = "Enrol an authenticator first: POST /auth/mfa/totp/begin"
_ALREADY_ENROLLED = "An authenticator is already enrolled; to replace it, POST /auth/mfa/totp/begin again"
_REPLACE_NEEDS_STEP_UP = (
    "An authenticator is already enrolled: step up with it (POST /auth/mfa/step-up), then begin again to replace it"
)
_ENROLMENT_CHANGED = "The enrolment changed meanwhile; begin again"


# --- codes: plain functions over plain data -----------------------------------------------------------------------


def new_totp_secret() -> str:
    return pyotp.random_base32(length=TOTP_SECRET_CHARS)


def otpauth_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=TOTP_ISSUER)


def is_totp_code(text: str) -> bool:
    return _TOTP_CODE.fullmatch(text) is not None


def totp_step(at: float) -> int:
    return int(at // TOTP_STEP_S)


def matching_step(
    secret: str, code: str, at: float, *, after: int | None, window: int = TOTP_WINDOW_STEPS
) -> int | None:
    """The earliest step within `window` steps of time `at` whose code is `code` and that is later than `after`."""
    totp = pyotp.TOTP(secret, interval=TOTP_STEP_S)
    current = totp_step(at)
    for step in range(current - window, current + window + 1):
        if (after is None or step > after) and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def new_recovery_code() -> str:
    """`xxxx-xxxx-xxxx` in lower-case Crockford base32: 60 random bits, less the 1 in 4096 codes made only of hex
    digits, which are drawn again: log redaction (shared/redact.py) tells a code from a hex request id by a
    letter after `f`."""
    while True:
        groups = (
            "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_GROUP_CHARS))
            for _ in range(RECOVERY_GROUPS)
        )
        code = "-".join(groups)
        if not set(code) <= _HEX_OR_HYPHEN:
            return code


def normalise_recovery_code(text: str) -> str | None:
    """The canonical form that is hashed (lower case, no hyphens, look-alikes mapped), or None if it cannot be one."""
    canonical = text.strip().lower().translate(_RECOVERY_LOOKALIKES)
    if len(canonical) != RECOVERY_GROUPS * RECOVERY_GROUP_CHARS or not set(canonical) <= set(RECOVERY_ALPHABET):
        return None
    return canonical


def hash_recovery_codes(codes: Sequence[str]) -> list[tuple[bytes, bytes]]:
    """(salt, hash) of each code's canonical form, each with its own random salt."""
    hashed = []
    for code in codes:
        canonical = normalise_recovery_code(code)
        if canonical is None:
            raise ValueError("not a recovery code")
        salt = os.urandom(RECOVERY_SALT_BYTES)
        hashed.append((salt, salted_hash(canonical, salt)))
    return hashed


def find_recovery_code(canonical: str, stored: Sequence[store.RecoveryCode]) -> uuid.UUID | None:
    """The id of the stored code that `canonical` is, if any."""
    for candidate in stored:
        if salted_matches(canonical, candidate.salt, candidate.code_hash):
            return candidate.id
    return None


# --- adapters -------------------------------------------------------------------------------------------------------


def _attempts(request: Request) -> LoginGuard:
    """Per-user count of wrong codes and the lockout, in Redis when configured (shared by replicas)."""
    state = request.app.state
    attempts: LoginGuard | None = getattr(state, "mfa_attempts", None)
    if attempts is None:
        attempts = state.mfa_attempts = LoginGuard(
            make_backend(state.runtime.redis),
            max_failures=MFA_MAX_FAILURES,
            failure_window_s=MFA_FAILURE_WINDOW_S,
            lockout_s=MFA_LOCKOUT_S,
            name="mfa",
        )
    return attempts


async def _check_not_locked(request: Request, principal: Principal) -> LoginGuard:
    attempts = _attempts(request)
    decision = await attempts.check(principal.subject, None)
    if not decision.allowed:
        raise rate_limited_error(decision)
    return attempts


def _open(box: SecretBox, sealed: str, user_id: uuid.UUID) -> str:
    return box.open(sealed, associated=user_id.bytes).decode()


@documented(
    "Start TOTP enrolment (the password again; to replace an enrolled authenticator, a recent step-up too): "
    "a new secret and its otpauth URI",
    request=TotpBeginRequest,
    response=TotpBeginResponse,
    tags=["mfa"],
)
@guard()
async def totp_begin(request: Request, principal: Principal) -> Response:
    body = await parse_body(request, TotpBeginRequest)
    pool = request.app.state.runtime.db.pool
    async with pool.acquire() as conn:
        user = await current_user(conn, principal)
        credential = await store.totp_credential(conn, user.id)
    replacing = credential is not None and credential.confirmed
    if replacing and not principal.stepped_up(time.time()):
        record_security_event("mfa.denied", reason="replace_without_step_up", principal=principal.subject)
        raise ApiError("mfa_required", _REPLACE_NEEDS_STEP_UP)

    async def only_this_user() -> list[store.User]:
        return [user]

    await guarded_password_check(request, user.email_key, only_this_user, body.password)
    box: SecretBox = request.app.state.box
    secret = new_totp_secret()
    sealed = box.seal(secret.encode(), associated=user.id.bytes)
    async with pool.acquire() as conn:
        if replacing:
            started = await store.begin_totp_replacement(conn, user.id, sealed)
        else:
            started = await store.begin_totp(conn, user.id, sealed)
    if not started:
        raise ApiError("conflict", _ENROLMENT_CHANGED)
    return JSONResponse(TotpBeginResponse(secret=secret, otpauth_uri=otpauth_uri(secret, user.email)).model_dump())


@documented(
    "Confirm TOTP enrolment with a current code; returns the recovery codes, once",
    request=TotpConfirmRequest,
    response=RecoveryCodes,
    tags=["mfa"],
)
@guard()
async def totp_confirm(request: Request, principal: Principal) -> Response:
    body = await parse_body(request, TotpConfirmRequest)
    attempts = await _check_not_locked(request, principal)
    async with request.app.state.runtime.db.pool.acquire() as conn:
        user_id = (await current_user(conn, principal)).id
        credential = await store.totp_credential(conn, user_id)
        if credential is None:
            raise ApiError("conflict", "No enrolment in progress: POST /auth/mfa/totp/begin first")
        if credential.confirmed and credential.pending_sealed is None:
            raise ApiError("conflict", _ALREADY_ENROLLED)
        # A replacement's codes were never used, so its steps need no replay check against the current secret's.
        pending = credential.pending_sealed if credential.confirmed else credential.secret_sealed
        assert pending is not None
        after = None if credential.confirmed else credential.last_step
        step = matching_step(_open(request.app.state.box, pending, user_id), body.code, time.time(), after=after)
        accepted = False
        codes = [new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
        if step is not None:
            # Ten PBKDF2 hashes take ~0.2 s of CPU: off the event loop, and only once the code is known to be right.
            hashed = await run_in_threadpool(hash_recovery_codes, codes)
            async with conn.transaction():
                # Only the secret this code was checked against: a `begin` committed meanwhile put a newer one
                # there, which the user never saw.
                if credential.confirmed:
                    accepted = await store.confirm_totp_replacement(conn, user_id, pending, step)
                else:
                    accepted = await store.confirm_totp(conn, user_id, pending, step)
                if accepted:
                    await store.replace_recovery_codes(conn, user_id, hashed)
                    await audit.append(
                        conn,
                        org_id=uuid.UUID(principal.org_id),
                        actor=audit.actor_of(principal),
                        action="mfa.totp.replace" if credential.confirmed else "mfa.totp.enrol",
                        target=f"user:{user_id}",
                        detail={"user_id": str(user_id), "recovery_codes": RECOVERY_CODE_COUNT},
                    )
                elif await _enrolment_changed(conn, user_id, pending):
                    raise ApiError("conflict", _ENROLMENT_CHANGED)
    if not accepted:
        await attempts.record_failure(principal.subject, None)
        raise ApiError("mfa_invalid")
    await attempts.record_success(principal.subject)
    return JSONResponse(RecoveryCodes(recovery_codes=codes).model_dump())


async def _enrolment_changed(conn: asyncpg.Connection, user_id: uuid.UUID, pending: str) -> bool:
    """Whether the secret being confirmed is no longer the one waiting for confirmation."""
    credential = await store.totp_credential(conn, user_id)
    if credential is None:
        return True
    waiting = credential.pending_sealed if credential.confirmed else credential.secret_sealed
    return waiting != pending


def _classify(code: str) -> tuple[str | None, str | None]:
    """(TOTP code, None) or (None, canonical recovery code); 400 for anything else."""
    if is_totp_code(code):
        return code, None
    canonical = normalise_recovery_code(code)
    if canonical is None:
        raise ApiError(
            "invalid_body",
            "The request does not match the expected shape",
            errors=[FieldError("code", "Expected a 6-digit code or a recovery code such as abcd-efgh-jkmn")],
        )
    return None, canonical


async def _accept_code(
    conn: asyncpg.Connection, box: SecretBox, user_id: uuid.UUID, totp_code: str | None, recovery: str | None
) -> bool:
    credential = await store.totp_credential(conn, user_id)
    if credential is None or not credential.confirmed:
        raise ApiError("conflict", _ENROL_FIRST)
    if totp_code is not None:
        secret = _open(box, credential.secret_sealed, user_id)
        step = matching_step(secret, totp_code, time.time(), after=credential.last_step)
        return step is not None and await store.accept_totp_step(conn, user_id, step)
    assert recovery is not None
    stored = await store.unused_recovery_codes(conn, user_id)
    # Up to ten PBKDF2 checks: off the event loop.
    code_id = await run_in_threadpool(find_recovery_code, recovery, stored)
    return code_id is not None and await store.use_recovery_code(conn, code_id)


@documented(
    "Step up with a TOTP or recovery code: a fresh access token with `otp` in `amr`",
    request=StepUpRequest,
    response=TokenResponse,
    tags=["mfa"],
)
@guard()
async def step_up(request: Request, principal: Principal) -> Response:
    body = await parse_body(request, StepUpRequest)
    totp_code, recovery = _classify(body.code)
    attempts = await _check_not_locked(request, principal)
    async with request.app.state.runtime.db.pool.acquire() as conn:
        user = await current_user(conn, principal)
        accepted = await _accept_code(conn, request.app.state.box, user.id, totp_code, recovery)
    if not accepted:
        await attempts.record_failure(principal.subject, None)
        record_security_event(
            "mfa.denied",
            reason="invalid_code",
            method="totp" if totp_code is not None else "recovery_code",
            org_id=principal.org_id,
            principal=principal.subject,
        )
        raise ApiError("mfa_invalid")
    await attempts.record_success(principal.subject)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        token = await request.app.state.issuer.stepped_up_token(
            conn, user, auth_time=int(time.time()), session_id=principal.session_id
        )
    return JSONResponse(TokenResponse(access_token=token, expires_in=ACCESS_TOKEN_TTL_S).model_dump(exclude_none=True))


@documented(
    "Remove a user's authenticator and recovery codes (admin, needs a recent step-up)", status=204, tags=["mfa"]
)
@guard(roles={"admin"}, step_up=True)
async def reset_totp(request: Request, principal: Principal) -> Response:
    """`DELETE /users/{user_id}/mfa`: for a lost authenticator; the user logs in and enrols again."""
    user_id = path_uuid(request, "user_id")
    org_id = uuid.UUID(principal.org_id)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        # Another org's user is 404, exactly like a user that does not exist.
        if not await store.reset_mfa(conn, org_id, user_id):
            raise ApiError("not_found")
        # The authenticator may be in someone else's hands (or enrolled by them): their sessions end with it, and
        # so do the step-up tokens it granted.
        await store.revoke_user_refresh_tokens(conn, user_id)
        await audit.append(
            conn,
            org_id=org_id,
            actor=audit.actor_of(principal),
            action="mfa.reset",
            target=f"user:{user_id}",
            detail={"user_id": str(user_id)},
        )
    await request.app.state.runtime.revocations.revoke(user_id=str(user_id))
    return Response(status_code=204)
