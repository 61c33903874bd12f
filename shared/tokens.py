"""Access tokens: Ed25519 JWTs with a `kid`, verified against the auth service's JWKS.

Tokens are signed `alg: EdDSA` (RFC 8037's name, the one PyJWT, authlib, Envoy and Kong know) with `typ: at+jwt`
(RFC 9068). Verification pins the signature to Ed25519 on an OKP key: our own JWS registry holds only `EdDSA`
restricted to the Ed25519 curve and `Ed25519` (RFC 9864's name for the same signature, which tokens minted before
the switch carry), so `alg: none`, HS256-with-the-public-key and Ed448 are refused. It requires `typ: at+jwt`,
`iss`, `aud`, `exp`, `sub`, `org_id` (which a service's token never has) and `jti`, and allows `LEEWAY_S` of clock
skew on `exp`/`nbf`/`iat`. The JWKS is cached; an unknown `kid` triggers at most one refetch per
`JWKS_REFETCH_INTERVAL_S`, and cached keys keep verifying while the auth service is down.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc import jws, jwt
from joserfc.errors import InvalidKeyCurveError, JoseError
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import KeySet, OKPKey
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from shared.log import get_logger

__all__ = [
    "ACCESS_TOKEN_TTL_S",
    "ALGORITHMS",
    "JWS_REGISTRY",
    "LEEWAY_S",
    "PRINCIPAL_KINDS",
    "REGULATOR_AUDIENCE",
    "SERVICE_AUDIENCE",
    "STEP_UP_MAX_AGE_S",
    "USER_AUDIENCE",
    "JwksCache",
    "JwksFetcher",
    "Principal",
    "TokenError",
    "Verifier",
    "access_claims",
    "principal_from_claims",
    "sign",
    "token_kid",
    "verification_keys",
    "verify",
]

SIGNING_ALGORITHM = "EdDSA"
LEGACY_ALGORITHM = "Ed25519"
ALGORITHMS = [SIGNING_ALGORITHM, LEGACY_ALGORITHM]
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
SIGNING_CURVE = "Ed25519"
ACCESS_TOKEN_TTL_S = 15 * 60
LEEWAY_S = 30
STEP_UP_MAX_AGE_S = 10 * 60
JWKS_REFETCH_INTERVAL_S = 5.0
# Who a token is for. User and org API-client tokens are for the API; a service's client-credentials token is
# only for other services' internal routes, so a leaked one opens no user route and a user's none of those.
USER_AUDIENCE = "urn:apgms:api"
SERVICE_AUDIENCE = "urn:apgms:service"
REGULATOR_AUDIENCE = "urn:apgms:regulator"
# A service principal acts for no org of its own: it names the org in what it calls, so it has no org_id claim.
PRINCIPAL_KINDS = ("user", "client", "service", "regulator")
ORG_LESS_KINDS = ("service",)
MAX_TOKEN_CHARS = 8192

log = get_logger(__name__)


class TokenError(Exception):
    """The token is not acceptable; the message is safe to show (it never echoes the token)."""


class Ed25519Signature(JWSAlgModel):
    """EdDSA on an Ed25519 OKP key and nothing else: joserfc's own `EdDSA` also accepts Ed448 keys (and warns that
    the name is deprecated), its `Ed25519` is not what most verifiers know."""

    key_type = "OKP"

    def __init__(self, name: str) -> None:
        self.name = name
        self.description = f"EdDSA with Ed25519, as alg {name}"

    def check_key(self, key: Any) -> None:
        super().check_key(key)
        if key.curve_name != SIGNING_CURVE:
            raise InvalidKeyCurveError(f"only {SIGNING_CURVE} keys are accepted")

    def sign(self, msg: bytes, key: Any) -> bytes:
        op_key = key.get_op_key("sign")
        assert isinstance(op_key, Ed25519PrivateKey)
        return op_key.sign(msg)

    def verify(self, msg: bytes, sig: bytes, key: Any) -> bool:
        op_key = key.get_op_key("verify")
        if not isinstance(op_key, Ed25519PublicKey):
            return False
        try:
            op_key.verify(sig, msg)
        except InvalidSignature:
            return False
        return True


class _Ed25519Registry(JWSRegistry):
    algorithms = {name: Ed25519Signature(name) for name in (SIGNING_ALGORITHM, LEGACY_ALGORITHM)}
    recommended: list[str] = []


JWS_REGISTRY = _Ed25519Registry(algorithms=ALGORITHMS)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (`kind="user"`) or an org's API client (`kind="client"`), always inside one org, or
    one of our services (`kind="service"`, audience SERVICE_AUDIENCE), whose `org_id` is empty: it acts for
    whichever org it names in the call."""

    subject: str
    kind: str
    org_id: str
    role: str | None
    scopes: frozenset[str]
    amr: tuple[str, ...]
    auth_time: int | None
    token_id: str
    audience: str
    # `iat`, and `sid` (the refresh family a user token descends from): what revocations compare against.
    issued_at: int = 0
    session_id: str | None = None

    @property
    def user_id(self) -> str | None:
        return self.subject if self.kind == "user" else None

    @property
    def client_id(self) -> str | None:
        return self.subject if self.kind == "client" else None

    def stepped_up(self, now: float, max_age_s: int = STEP_UP_MAX_AGE_S) -> bool:
        """Whether an `otp` step-up happened within `max_age_s`."""
        return "otp" in self.amr and self.auth_time is not None and now - self.auth_time <= max_age_s


def access_claims(
    *,
    issuer: str,
    audience: str,
    subject: str,
    kind: str,
    org_id: str | None,
    role: str | None,
    scopes: Sequence[str],
    amr: Sequence[str],
    auth_time: int | None,
    now: float,
    ttl_s: int = ACCESS_TOKEN_TTL_S,
    session_id: str | None = None,
) -> dict[str, Any]:
    issued = int(now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "kind": kind,
        "scope": " ".join(scopes),
        "amr": list(amr),
        "jti": str(uuid.uuid4()),
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_s,
    }
    if org_id is not None:
        claims["org_id"] = org_id
    if role is not None:
        claims["role"] = role
    if auth_time is not None:
        claims["auth_time"] = auth_time
    if session_id is not None:
        claims["sid"] = session_id
    return claims


def sign(claims: Mapping[str, Any], key: OKPKey) -> str:
    header = {"alg": SIGNING_ALGORITHM, "kid": key.kid, "typ": "at+jwt"}
    return jwt.encode(header, dict(claims), key, algorithms=ALGORITHMS, registry=JWS_REGISTRY)


def verification_keys(jwks: Mapping[str, Any]) -> KeySet:
    """The Ed25519 signing keys of a JWKS, without their `alg` member: the algorithm is pinned by `JWS_REGISTRY`,
    and a key published as `EdDSA` must still verify a token minted as `Ed25519` before the switch."""
    return KeySet(
        [
            OKPKey.import_key({name: value for name, value in jwk.items() if name != "alg"})
            for jwk in jwks.get("keys", [])
            if isinstance(jwk, Mapping) and jwk.get("kty") == "OKP" and jwk.get("crv") == SIGNING_CURVE
        ]
    )


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    kind = claims.get("kind", "user")
    if kind not in PRINCIPAL_KINDS:
        raise TokenError("unknown principal kind")
    scopes = claims.get("scope", "")
    amr = claims.get("amr", [])
    if not isinstance(scopes, str) or not isinstance(amr, list) or not all(isinstance(m, str) for m in amr):
        raise TokenError("malformed scope or amr claim")
    auth_time = claims.get("auth_time")
    if auth_time is not None and not isinstance(auth_time, int):
        raise TokenError("malformed auth_time claim")
    issued_at, session_id = claims.get("iat", 0), claims.get("sid")
    if not isinstance(issued_at, int) or (session_id is not None and not isinstance(session_id, str)):
        raise TokenError("malformed iat or sid claim")
    for name in ("sub", "jti") if kind in ORG_LESS_KINDS else ("sub", "org_id", "jti"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise TokenError(f"missing {name} claim")
    if kind in ORG_LESS_KINDS and "org_id" in claims:
        raise TokenError("a service token names no org")
    audience = claims["aud"] if isinstance(claims["aud"], str) else claims["aud"][0]
    return Principal(
        subject=claims["sub"],
        kind=kind,
        org_id=claims.get("org_id", ""),
        role=claims.get("role"),
        scopes=frozenset(scopes.split()),
        amr=tuple(amr),
        auth_time=auth_time,
        token_id=claims["jti"],
        audience=audience,
        issued_at=issued_at,
        session_id=session_id,
    )


def verify(token: str, keys: KeySet, *, issuer: str, audience: str, now: float | None = None) -> Principal:
    """The principal of a valid token for `audience`; raises `TokenError` for anything else."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise TokenError("malformed token")
    try:
        decoded = jwt.decode(token, keys, algorithms=ALGORITHMS, registry=JWS_REGISTRY)
        typ = decoded.header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
            raise TokenError("not an access token (typ)")
        registry = JWTClaimsRegistry(
            now=int(now) if now is not None else None,
            leeway=LEEWAY_S,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            sub={"essential": True},
            jti={"essential": True},
        )
        registry.validate(decoded.claims)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise TokenError(type(exc).__name__) from None
    return principal_from_claims(decoded.claims)


def token_kid(token: str) -> str | None:
    """The `kid` of a token's header, without verifying anything (to decide whether to refetch the JWKS)."""
    try:
        header = jws.extract_compact(token.encode()).protected if token.count(".") == 2 else {}
    except (JoseError, ValueError):
        return None
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None


JwksFetcher = Callable[[], Awaitable[Mapping[str, Any]]]


@dataclass
class JwksCache:
    """The auth service's public keys, fetched lazily, refetched on an unknown `kid` at most every few seconds."""

    fetch: JwksFetcher
    refetch_interval_s: float = JWKS_REFETCH_INTERVAL_S
    _keys: KeySet | None = None
    _kids: frozenset[str] = frozenset()
    _fetched_at: float = -1e9
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def keys_for(self, kid: str | None) -> KeySet:
        if self._keys is not None and (kid is None or kid in self._kids):
            return self._keys
        async with self._lock:
            stale = time.monotonic() - self._fetched_at >= self.refetch_interval_s
            if (self._keys is None or (kid is not None and kid not in self._kids)) and stale:
                self._fetched_at = time.monotonic()
                try:
                    jwks = await self.fetch()
                    self._keys = verification_keys(jwks)
                    self._kids = frozenset(k.kid for k in self._keys.keys if k.kid)
                except Exception as exc:
                    log.warning("jwks_fetch_failed", error=type(exc).__name__)
        if self._keys is None:
            raise TokenError("signing keys unavailable")
        return self._keys


@dataclass
class Verifier:
    """Verifies bearer tokens for one audience against a JWKS cache."""

    jwks: JwksCache
    issuer: str
    audience: str = USER_AUDIENCE
    # `shared.revocation.Revocations.refuses`: a lookup in a snapshot, no I/O.
    revoked: Callable[[Principal], bool] | None = None

    async def principal(self, token: str) -> Principal:
        keys = await self.jwks.keys_for(token_kid(token))
        principal = verify(token, keys, issuer=self.issuer, audience=self.audience)
        if self.revoked is not None and self.revoked(principal):
            raise TokenError("revoked")
        return principal
