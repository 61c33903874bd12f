"""Password hashing for user accounts: argon2id from `shared.passwords` (HASHER, the dummy hash, token hashes),
plus what only accounts need: one salt shared by the accounts of one address, and the recovery codes' PBKDF2."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

from shared.passwords import (
    ARGON2_MEMORY_KIB,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    DUMMY_HASH,
    HASHER,
    token_hash,
    verify_secret,
)

__all__ = [
    "ARGON2_MEMORY_KIB",
    "ARGON2_PARALLELISM",
    "ARGON2_TIME_COST",
    "HASHER",
    "MIN_PASSWORD_CHARS",
    "hash_password",
    "passwords_match",
    "salted_hash",
    "salted_matches",
    "token_hash",
    "verify_password",
]

MIN_PASSWORD_CHARS = 12

# What every hash made by HASHER starts with: `$argon2id$v=19$m=47104,t=2,p=1`.
_HASHER_PARAMETERS = "$".join(DUMMY_HASH.split("$")[:4])


def hash_password(password: str, *, salt_of: str | None = None) -> str:
    """An argon2id hash; with `salt_of` (the hash of another account with the same email address) made with its
    salt, so that `passwords_match` checks the accounts of one address with a single argon2 computation."""
    return HASHER.hash(password, salt=_salt(salt_of) if salt_of else None)


def _salt(encoded: str) -> bytes | None:
    """The salt of a hash made with HASHER's parameters; None for any other hash."""
    parts = encoded.split("$")  # "", "argon2id", "v=19", "m=...,t=...,p=...", salt, hash
    if len(parts) != 6 or "$".join(parts[:4]) != _HASHER_PARAMETERS:
        return None
    try:
        return base64.b64decode(parts[4] + "=" * (-len(parts[4]) % 4), validate=True)
    except binascii.Error:
        return None


def passwords_match(password_hashes: Sequence[str], password: str) -> list[bool]:
    """Whether `password` is the password of each hash. Hashes with one salt (the accounts of one address in
    several orgs) cost one argon2 computation together, so the time does not tell how many accounts an address
    has; without hashes one dummy check is made, the cost of a wrong password."""
    if not password_hashes:
        passwords_match([DUMMY_HASH], password)
        return []
    computed: dict[bytes, str] = {}
    matches = []
    for encoded in password_hashes:
        salt = _salt(encoded)
        if salt is None:
            matches.append(verify_password(encoded, password))
            continue
        if salt not in computed:
            computed[salt] = HASHER.hash(password, salt=salt)
        matches.append(hmac.compare_digest(computed[salt].encode(), encoded.encode()))
    return matches


def salted_hash(code: str, salt: bytes) -> bytes:
    """Recovery codes: short, so each gets its own salt and a slow-ish PBKDF2 (codes are checked rarely)."""
    return hashlib.pbkdf2_hmac("sha256", code.encode(), salt, 100_000)


def salted_matches(code: str, salt: bytes, expected: bytes) -> bool:
    return hmac.compare_digest(salted_hash(code, salt), expected)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when `password` matches; with `password_hash=None` it spends the same time and returns False."""
    return verify_secret(password_hash, password, hasher=HASHER)
