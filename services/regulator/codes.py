"""Pure rules of regulator credentials: access codes, credential names and expiry periods. No I/O.

An access code is `rgc.<lookup>.<secret>`: `lookup` (16 hex digits) finds the credential's row without a scan and
is not secret; `secret` (32 random bytes, base64url) is what makes the code hard to guess. The row stores the
argon2id hash of the whole code, so a code is checked against exactly one hash. A session token is
`rgs_<32 random bytes, base64url>`, stored as its SHA-256 only; the prefix lets the guard refuse anything else (a
user's JWT, a refresh token) without a database query.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

__all__ = [
    "ACCESS_CODE_PREFIX",
    "DEFAULT_EXPIRES_DAYS",
    "MAX_ACCESS_CODE_CHARS",
    "MAX_EXPIRES_DAYS",
    "NAME_PATTERN",
    "SESSION_TOKEN_PREFIX",
    "AccessCode",
    "derived_access_code",
    "is_session_token",
    "new_access_code",
    "new_session_token",
    "parse_expires",
    "parse_lookup",
    "valid_name",
]

ACCESS_CODE_PREFIX = "rgc"
SESSION_TOKEN_PREFIX = "rgs_"  # noqa: S105 (a prefix, not a secret)
LOOKUP_BYTES = 8
SECRET_BYTES = 32
SESSION_TOKEN_BYTES = 32
# A real code is 64 characters; past this a body is an attempt to make argon2 hash megabytes.
MAX_ACCESS_CODE_CHARS = 200
DEFAULT_EXPIRES_DAYS = 90
# A credential is reissued at least every two years: a forgotten one must not stay valid for ever.
MAX_EXPIRES_DAYS = 730
# The credential's handle in the audit chain (`regulator:<name>`), as the schema's CHECK has it: no PII, no spaces.
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")

_LOOKUP = re.compile(rf"{ACCESS_CODE_PREFIX}\.([0-9a-f]{{{2 * LOOKUP_BYTES}}})\.[A-Za-z0-9_-]{{43}}")
_SESSION_TOKEN = re.compile(rf"{SESSION_TOKEN_PREFIX}[A-Za-z0-9_-]{{43}}")
_EXPIRES = re.compile(r"([1-9][0-9]{0,3})([dw])")
_DAYS_PER_UNIT = {"d": 1, "w": 7}


@dataclass(frozen=True)
class AccessCode:
    lookup: str
    secret: str

    @property
    def text(self) -> str:
        """The code as a regulator types it, shown once."""
        return f"{ACCESS_CODE_PREFIX}.{self.lookup}.{self.secret}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def new_access_code() -> AccessCode:
    return AccessCode(secrets.token_hex(LOOKUP_BYTES), _b64url(secrets.token_bytes(SECRET_BYTES)))


def derived_access_code(key: bytes, name: str) -> AccessCode:
    """The same code for the same `key` and `name` every time (HMAC-SHA256): `make run` prints the demo
    credential's code on each start without storing it, from the checkout's master key."""
    lookup = hmac.new(key, f"regulator-lookup:{name}".encode(), hashlib.sha256).hexdigest()[: 2 * LOOKUP_BYTES]
    secret = hmac.new(key, f"regulator-secret:{name}".encode(), hashlib.sha256).digest()
    return AccessCode(lookup, _b64url(secret))


def parse_lookup(code: str) -> str | None:
    """The lookup part of a well-formed access code; None for anything else (which is checked against the dummy
    hash all the same, so a malformed code costs what a wrong one does)."""
    match = _LOOKUP.fullmatch(code)
    return match.group(1) if match else None


def new_session_token() -> str:
    return SESSION_TOKEN_PREFIX + _b64url(secrets.token_bytes(SESSION_TOKEN_BYTES))


def is_session_token(token: str) -> bool:
    """Whether `token` has a session token's shape; a JWT or anything else is refused before any lookup."""
    return _SESSION_TOKEN.fullmatch(token) is not None


def valid_name(name: str) -> str:
    """`name` when it is a valid credential name; ValueError saying the rule otherwise."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            "a credential name is 1 to 64 letters, digits, '.', '_' or '-' (it is shown in the audit trail)"
        )
    return name


def parse_expires(text: str) -> timedelta:
    """`90d` or `12w` → the period; ValueError saying the rule for anything else or past MAX_EXPIRES_DAYS."""
    match = _EXPIRES.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expiry must be a number of days or weeks such as 90d or 12w, not {text!r}")
    days = int(match.group(1)) * _DAYS_PER_UNIT[match.group(2)]
    if days > MAX_EXPIRES_DAYS:
        raise ValueError(f"expiry must be at most {MAX_EXPIRES_DAYS} days")
    return timedelta(days=days)
