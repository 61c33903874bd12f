"""Slow and fast hashing of secrets that services check: argon2id for what a person types (passwords, access
codes), SHA-256 for random bearer tokens looked up by their hash.

    HASHER                         the one argon2id parameter set (about 69 ms of CPU per check)
    verify_secret(hash | None, s)  constant-cost check: with no hash it verifies against DUMMY_HASH and says False
    token_hash(token)              SHA-256 of a high-entropy token, for lookup by hash

A check against a missing row must cost what a wrong secret costs, or the time tells which names exist: that is
why `verify_secret` takes `None` and spends one argon2 verification anyway.
"""

from __future__ import annotations

import hashlib
import os

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = [
    "ARGON2_MEMORY_KIB",
    "ARGON2_PARALLELISM",
    "ARGON2_TIME_COST",
    "DUMMY_HASH",
    "HASHER",
    "token_hash",
    "verify_secret",
]

# One verification costs about 69 ms of CPU on the reference machine (measured: t=2 with 32/46/64 MiB gave
# 47/69/103 ms; bench/auth.py reports it). 46 MiB is OWASP's argon2id memory figure; parallelism 1 keeps a
# check on one core.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 46 * 1024
ARGON2_PARALLELISM = 1

HASHER = PasswordHasher(time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB, parallelism=ARGON2_PARALLELISM)
# Verified against when there is no row to check, so "unknown" and "wrong" take the same time.
DUMMY_HASH = HASHER.hash(os.urandom(16).hex())


def verify_secret(secret_hash: str | None, secret: str, *, hasher: PasswordHasher | None = None) -> bool:
    """True when `secret` matches `secret_hash`; with `secret_hash=None` it spends the same time and says False.
    `hasher` (HASHER unless given) is what verifies: a caller that counts computations passes its own."""
    try:
        return (hasher or HASHER).verify(secret_hash or DUMMY_HASH, secret) and secret_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def token_hash(token: str) -> bytes:
    """Bearer tokens (refresh tokens, regulator sessions) are 256-bit random values: a fast hash is enough, and
    lets them be looked up by hash."""
    return hashlib.sha256(token.encode()).digest()
