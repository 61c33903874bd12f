"""CSRF protection for the portal's forms: a double-submit token bound to a random per-browser cookie.

The first page a browser gets sets a cookie holding a random browser id (32 bytes); every form carries a hidden
`csrf_token`, the HMAC-SHA256 of that id under a server key. A POST is accepted only when the token in its body is
the HMAC of the browser id in its cookie (constant-time comparison). A cross-site form cannot read the cookie (nor,
under SameSite=Strict, even send it) and cannot compute the HMAC without the key, so it cannot forge a token; a
token copied from another browser does not match this browser's cookie. The login form is protected too (login
CSRF would sign a victim in as the attacker's regulator).

The key must be the same on every replica (a form rendered by one, posted to another), so it is derived, not drawn:
HMAC-SHA256 of a fixed label under the service's SERVICE_CLIENT_SECRET (every replica has it; production requires
it). A process started without one (dev only, one replica, and then it cannot read anything anyway) uses a random
key of its own for its lifetime.

Pure functions; the portal reads the cookie and the form and sets the cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from shared.config import Secret

__all__ = [
    "BROWSER_ID_BYTES",
    "CSRF_FIELD",
    "browser_id_is_valid",
    "csrf_cookie_name",
    "derive_key",
    "new_browser_id",
    "token_for",
    "token_matches",
]

BROWSER_ID_BYTES = 32
# The hidden form field that carries the token.
CSRF_FIELD = "csrf_token"
# Separates this key from every other use of the service client secret.
KEY_LABEL = b"apgms regulator portal csrf key v1"
TOKEN_LABEL = b"csrf:"
# base64url without padding of BROWSER_ID_BYTES bytes: 43 characters.
_BROWSER_ID = re.compile(r"[A-Za-z0-9_-]{43}")
# Used only by a process without a service client secret (see the module docstring).
_PROCESS_KEY = secrets.token_bytes(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def csrf_cookie_name(secure: bool) -> str:
    """`__Host-` prefixed when the cookie is Secure: the browser then refuses it from a subdomain or another path,
    so a sibling site cannot plant a browser id of its choosing."""
    return "__Host-apgms_regulator_csrf" if secure else "apgms_regulator_csrf"


def derive_key(service_client_secret: Secret | None) -> bytes:
    """The token key: derived from the service client secret (the same on every replica), else this process's own."""
    if service_client_secret is None:
        return _PROCESS_KEY
    return hmac.new(service_client_secret.reveal().encode(), KEY_LABEL, hashlib.sha256).digest()


def new_browser_id() -> str:
    return _b64(secrets.token_bytes(BROWSER_ID_BYTES))


def browser_id_is_valid(value: str | None) -> bool:
    """Whether a cookie value has the shape of a browser id we issue (anything else is replaced, never used)."""
    return value is not None and _BROWSER_ID.fullmatch(value) is not None


def token_for(key: bytes, browser_id: str) -> str:
    """The form token of this browser."""
    return _b64(hmac.new(key, TOKEN_LABEL + browser_id.encode("ascii"), hashlib.sha256).digest())


def token_matches(key: bytes, browser_id: str | None, token: str | None) -> bool:
    """Whether `token` (from the form) is the token of `browser_id` (from the cookie); False when either is missing
    or malformed."""
    if token is None or browser_id is None or not browser_id_is_valid(browser_id):
        return False
    try:
        given = token.encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(given, token_for(key, browser_id).encode("ascii"))
