"""Helpers for end-to-end tests of core's high-risk routes (issue #12): a user's TOTP enrolment and a stepped-up
access token through a real auth process, and alert rows written straight into the test database.

    stepped = await stepped_up(http, stack.auth.url, org.email("admin"))   # enrols TOTP, then steps up
    stepped.token          # access token with `otp` in amr (valid for step-up routes for 10 minutes)
    stepped.plain_token    # the same user's token from the password login alone (401 mfa_required there)
    again = await step_up(http, stack.auth.url, stepped.plain_token, stepped.recovery_codes[1])
    alert_id = await insert_alert(stack.database_url, org.id, severity="LOW", resolved=True)

Stepping up uses a recovery code (the first by default), not a TOTP code, so it never waits for the next
30-second step; the enrolment itself waits at most STEP_MARGIN_S so its code's step stays valid while it is sent.
Each recovery code works once: pass another index (up to RECOVERY_CODES - 1) to step up the same user again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import pyotp
from auth_support import PASSWORD, call, login
from core_support import connect

__all__ = [
    "RECOVERY_CODES",
    "Enrolment",
    "SteppedUp",
    "enrol_totp",
    "insert_alert",
    "step_up",
    "stepped_up",
    "totp_code",
]

STEP_S = 30
# The enrolment is confirmed with the code of the step before the current one, which the server only accepts
# while it is still in the current step: wait for a fresh step when fewer than this many seconds remain.
STEP_MARGIN_S = 3.0
RECOVERY_CODES = 10


@dataclass(frozen=True)
class Enrolment:
    secret: str
    recovery_codes: tuple[str, ...]
    # The TOTP step whose predecessor confirmed the enrolment: codes of this step and later are still unused.
    step: int


@dataclass(frozen=True)
class SteppedUp:
    email: str
    token: str  # with `otp` in amr
    plain_token: str  # the password login's token (no step-up)
    enrolment: Enrolment

    @property
    def recovery_codes(self) -> tuple[str, ...]:
        return self.enrolment.recovery_codes


def totp_code(secret: str, step: int) -> str:
    return str(pyotp.TOTP(secret).generate_otp(step))


async def _settled_step() -> int:
    remaining = STEP_S - time.time() % STEP_S
    if remaining < STEP_MARGIN_S:
        await asyncio.sleep(remaining + 0.05)
    return int(time.time() // STEP_S)


async def _post(http: aiohttp.ClientSession, url: str, token: str, body: Any) -> Any:
    status, answer, _ = await call(http, "POST", url, token=token, json=body)
    assert status == 200, (url, status, answer)
    return answer


async def enrol_totp(http: aiohttp.ClientSession, auth_url: str, token: str, password: str = PASSWORD) -> Enrolment:
    """Enrol a TOTP authenticator for the token's user (who has none yet) at the real auth process."""
    begun = await _post(http, f"{auth_url}/auth/mfa/totp/begin", token, {"password": password})
    secret = str(begun["secret"])
    step = await _settled_step()
    confirmed = await _post(http, f"{auth_url}/auth/mfa/totp/confirm", token, {"code": totp_code(secret, step - 1)})
    return Enrolment(secret=secret, recovery_codes=tuple(confirmed["recovery_codes"]), step=step)


async def step_up(http: aiohttp.ClientSession, auth_url: str, token: str, code: str) -> str:
    """A stepped-up access token for the token's user, with a TOTP or recovery code (asserting auth accepts it)."""
    answer = await _post(http, f"{auth_url}/auth/mfa/step-up", token, {"code": code})
    return str(answer["access_token"])


async def stepped_up(http: aiohttp.ClientSession, auth_url: str, email: str, *, recovery_index: int = 0) -> SteppedUp:
    """Log in, enrol TOTP and step up with a recovery code: the user's plain and stepped-up tokens."""
    plain = str((await login(http, auth_url, email))["access_token"])
    enrolment = await enrol_totp(http, auth_url, plain)
    token = await step_up(http, auth_url, plain, enrolment.recovery_codes[recovery_index])
    return SteppedUp(email=email, token=token, plain_token=plain, enrolment=enrolment)


async def insert_alert(
    database_url: str,
    org_id: uuid.UUID,
    *,
    type: str = "TEST_ALERT",
    severity: str = "MEDIUM",
    message: str = "An alert written by a test",
    detail: dict[str, Any] | None = None,
    created_at: datetime | None = None,
    resolved: bool = False,
    created_by: str = "test:fixture",
) -> uuid.UUID:
    """Write one alert row directly (open unless `resolved`; created now unless `created_at`): its id."""
    alert_id = uuid.uuid4()
    async with connect(database_url) as conn:
        await conn.execute(
            "INSERT INTO core.alerts (id, org_id, type, severity, message, detail, created_at, created_by, "
            "resolved_at, resolved_by, resolution_note) "
            "VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, coalesce($7, now()), $8, "
            "CASE WHEN $9 THEN now() END, CASE WHEN $9 THEN $8 END, CASE WHEN $9 THEN 'resolved by a test' END)",
            alert_id,
            org_id,
            type,
            severity,
            message,
            orjson.dumps(detail or {}).decode(),
            created_at,
            created_by,
            resolved,
        )
    return alert_id
