"""SPEC section 4's core table, route by route and caller by caller, against a real auth and a real core process.

`TABLE` is the SPEC's table written out (plus the internal read API, which only services with `core:read` may
call): who may call each route, and whether it is high-risk (step-up). A route in services/core/app.py that the
table does not list fails `test_the_table_lists_every_route_of_core`, so a new route cannot go unchecked.

Callers: a user of each role (every one enrolled in TOTP and stepped up, so a refusal is the role's and not a
missing step-up), an org API client (with `core:read` among its scopes, which opens no user route), a service with
`core:read` (compliance's), a service without it (core's own) and no token at all. Expected answers:

    user route      role listed → anything but 401/403 (and no 5xx); role not listed → 403 forbidden;
                    API client → 403 forbidden; service → 401 invalid_token (another audience); none → 401
    internal route  service with core:read → allowed; without it → 403 forbidden; any user or client token →
                    401 invalid_token; none → 401 unauthorized

An allowed call must not spoil the others, so writes are sent so that they stop after authorization (an empty
body, a path id that does not exist, a deletion whose confirmation does not match). Then every high-risk route
answers 401 `mfa_required` to each role it allows that has not stepped up: a user enrolled in TOTP holding the
password login's token, and a user who never enrolled.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest
from auth_support import PASSWORD, Org, login
from core2_support import stepped_up
from core_support import start_core
from test_core_internal import service_token, token_of

from services.auth import store as auth_store
from services.auth.oauth import create_client
from services.auth.passwords import hash_password
from services.core.app import create_app
from services.core.config import load_core_settings
from services.core.designated import account_id
from shared.roles import ROLES

pytestmark = pytest.mark.e2e

ANY = frozenset(ROLES)
READERS = frozenset({"admin", "finance", "analyst"})
MONEY = frozenset({"admin", "finance"})
ADMIN = frozenset({"admin"})
# Public by design (probes, metrics, the API description): not part of SPEC's table.
OPERATIONAL = {("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"), ("GET", "/openapi.json")}


@dataclass(frozen=True)
class Rule:
    method: str
    path: str  # as services/core/app.py spells it
    allowed: frozenset[str] = frozenset()  # roles (user routes)
    step_up: bool = False
    internal: bool = False  # service tokens with core:read only
    ok: int | None = None  # the exact status an allowed call gets, where it is known


TABLE: tuple[Rule, ...] = (
    Rule("GET", "/bank-lines", READERS, ok=200),
    Rule("POST", "/bank-lines", MONEY),
    Rule("POST", "/bank-lines/import", MONEY),
    Rule("GET", "/bank-lines/{line_id}", READERS, ok=404),
    Rule("GET", "/alerts", ANY, ok=200),
    Rule("POST", "/alerts/{id}/resolve", MONEY, step_up=True),
    Rule("GET", "/bas/preview", MONEY, ok=200),
    Rule("POST", "/bas/lodge", MONEY, step_up=True),
    Rule("GET", "/bas/payment-plans", MONEY, ok=200),
    Rule("POST", "/bas/payment-plans", MONEY),
    Rule("POST", "/bas/payment-plans/{id}/approve", ADMIN, step_up=True),
    Rule("POST", "/bas/payment-plans/{id}/reject", ADMIN, step_up=True),
    Rule("GET", "/org/obligations/current", ANY, ok=200),
    Rule("GET", "/org/designated-accounts", MONEY, ok=200),
    Rule("POST", "/org/designated-accounts/{account_id}/deposits", MONEY),
    Rule("POST", "/org/designated-accounts/{account_id}/withdrawals", MONEY),
    Rule("GET", "/org/designated-accounts/{account_id}/sources", MONEY, ok=200),
    Rule("PUT", "/org/designated-accounts/{account_id}/sources", ADMIN, step_up=True),
    Rule("GET", "/admin/export/{org}", ADMIN, step_up=True, ok=200),
    Rule("DELETE", "/admin/delete/{org}", ADMIN, step_up=True, ok=400),
    Rule("GET", "/internal/orgs/{org_id}/bank-lines/summary", internal=True, ok=400),
    Rule("GET", "/internal/orgs/{org_id}/alerts", internal=True, ok=200),
    Rule("GET", "/internal/orgs/{org_id}/report-inputs", internal=True, ok=200),
)


def core_routes() -> set[tuple[str, str]]:
    """(method, path) of every route core's app serves (HEAD aside), from services/core/app.py itself."""
    environ = {
        "APGMS_ENV": "test",
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",  # never connected: the app is only built
        "AUTH_URL": "http://127.0.0.1:1",
        "SERVICE_CLIENT_SECRET": "s" * 43,
        "APGMS_KEK": "A" * 43 + "=",
    }
    app = create_app(load_core_settings(environ))
    return {
        (method, route.path)
        for route in app.routes
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"
    }


def test_the_table_lists_every_route_of_core() -> None:
    listed = {(rule.method, rule.path) for rule in TABLE}
    assert len(listed) == len(TABLE), "a route is listed twice"
    served = core_routes() - OPERATIONAL
    assert served - listed == set(), "routes of services/core/app.py missing from this test's TABLE"
    assert listed - served == set(), "routes in TABLE that core does not serve"


@dataclass(frozen=True)
class Caller:
    name: str
    token: str | None
    role: str | None = None  # a user's
    kind: str = "user"  # user, client, service, none
    core_read: bool = False  # a service's


def expected(rule: Rule, caller: Caller) -> tuple[int, str] | None:
    """The refusal `caller` gets from `rule`'s route, or None when it is allowed through."""
    if caller.token is None:
        return 401, "unauthorized"
    if rule.internal:
        if caller.kind != "service":
            return 401, "invalid_token"
        return None if caller.core_read else (403, "forbidden")
    if caller.kind == "service":
        return 401, "invalid_token"
    if caller.kind == "client" or caller.role not in rule.allowed:
        return 403, "forbidden"
    return None


def url_of(base: str, rule: Rule, org: Org) -> str:
    path = rule.path.format(
        line_id=uuid.uuid4(),
        id=uuid.uuid4(),
        account_id=account_id(org.id, "PAYGW"),
        org=org.id,
        org_id=org.id,
    )
    return base + path


async def send(http: aiohttp.ClientSession, rule: Rule, url: str, token: str | None) -> tuple[int, str | None]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    body: Any = None
    if rule.method in ("POST", "PUT", "DELETE"):
        # Stops after authorization: empty (invalid) bodies; a deletion confirmed with the wrong id.
        body = {"confirm": str(uuid.uuid4())} if rule.method == "DELETE" else {}
    async with http.request(rule.method, url, headers=headers, json=body) as response:
        problem = None
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            problem = (await response.json(content_type=None)).get("code")
        else:
            await response.read()
        return response.status, problem


async def add_user(database_url: str, org: Org, role: str) -> str:
    """A user of `role` who never enrolled in MFA: their email."""
    email = f"{role}.nomfa.{org.id.hex[:8]}@example.com"
    connection = await asyncpg.connect(database_url)
    try:
        created = await auth_store.create_user(connection, org.id, email, hash_password(PASSWORD), role)
        assert created is not None
    finally:
        await connection.close()
    return email


async def client_token(database_url: str, http: aiohttp.ClientSession, auth: Any, org: Org) -> str:
    connection = await asyncpg.connect(database_url)
    try:
        client_id, secret = await create_client(connection, org.id, "Matrix client", ["core:read", "bank-lines:read"])
    finally:
        await connection.close()
    token, _ = await token_of(http, auth, client_id, secret)
    return token


async def test_every_core_route_admits_exactly_whom_specs_table_lists_and_high_risk_ones_need_a_step_up(
    start_service: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    auth_url = stack.auth.url
    enrolled = dict(
        zip(ROLES, await asyncio.gather(*(stepped_up(http, auth_url, org.email(role)) for role in ROLES)), strict=True)
    )
    callers = [Caller(role, enrolled[role].token, role=role) for role in ROLES] + [
        Caller("org API client", await client_token(database_url, http, stack.auth, org), kind="client"),
        Caller(
            "service with core:read",
            await service_token(http, stack.auth, "compliance"),
            kind="service",
            core_read=True,
        ),
        Caller("service without core:read", await service_token(http, stack.auth, "core"), kind="service"),
        Caller("no token", None, kind="none"),
    ]

    mismatches: list[str] = []
    for rule in TABLE:
        url = url_of(stack.core.url, rule, org)
        for caller in callers:
            status, code = await send(http, rule, url, caller.token)
            refusal = expected(rule, caller)
            where = f"{rule.method} {rule.path} as {caller.name}: {status} {code}"
            if refusal is not None and (status, code) != refusal:
                mismatches.append(f"{where}, expected {refusal}")
            elif refusal is None and (status in (401, 403) or status >= 500 or (rule.ok and status != rule.ok)):
                mismatches.append(f"{where}, expected to be let through" + (f" ({rule.ok})" if rule.ok else ""))

    # High-risk routes: each allowed role without a recent step-up, enrolled (password login) or never enrolled.
    never_enrolled = {
        role: str((await login(http, auth_url, await add_user(database_url, org, role)))["access_token"])
        for role in ("admin", "finance")
    }
    for rule in (rule for rule in TABLE if rule.step_up):
        url = url_of(stack.core.url, rule, org)
        for role in sorted(rule.allowed):
            for who, token in (("enrolled", enrolled[role].plain_token), ("without MFA", never_enrolled[role])):
                status, code = await send(http, rule, url, token)
                if (status, code) != (401, "mfa_required"):
                    mismatches.append(f"{rule.method} {rule.path} as {role} {who}, not stepped up: {status} {code}")

    assert not mismatches, "\n".join(mismatches)
