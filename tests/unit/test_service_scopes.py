"""Service scopes: every calling service's token carries the scopes its part of the architecture needs, and a guard
with scopes checks them on service tokens as it does on org API clients' (a user's rights stay its role)."""

from __future__ import annotations

import time

import pytest
from joserfc.jwk import KeySet, OKPKey

from services.auth.config import SERVICE_CLIENT_SCOPES, SERVICE_SCOPES
from services.auth.oauth import Grantee, granted_scopes, token_response
from shared.authz import authorize
from shared.config import CALLING_SERVICES, service_client_id
from shared.errors import ApiError
from shared.tokens import SERVICE_AUDIENCE, Principal, verify

ISSUER = "urn:apgms:auth"
CORE_READ = "core:read"


def principal(kind: str, scopes: frozenset[str]) -> Principal:
    return Principal(
        subject="service-compliance" if kind == "service" else "someone",
        kind=kind,
        org_id="" if kind == "service" else "org-1",
        role="admin" if kind == "user" else None,
        scopes=scopes,
        amr=(),
        auth_time=None,
        token_id="jti-1",
        audience=SERVICE_AUDIENCE,
    )


def test_every_calling_service_has_scopes_and_only_those_services() -> None:
    assert set(SERVICE_SCOPES) == set(CALLING_SERVICES)
    assert SERVICE_SCOPES["compliance"] == ("core:read",)
    assert SERVICE_SCOPES["regulator"] == ("core:read", "compliance:read")
    assert SERVICE_SCOPES["core"] == ("auth:read", "auth:admin")
    assert SERVICE_CLIENT_SCOPES[service_client_id("regulator")] == SERVICE_SCOPES["regulator"]


def test_a_service_token_carries_its_services_scopes() -> None:
    key = OKPKey.generate_key("Ed25519", parameters={"kid": "k1"})
    grantee = Grantee.service(service_client_id("regulator"))
    body = token_response(grantee, granted_scopes(None, grantee.scopes) or [], key, ISSUER, time.time())
    token = verify(body["access_token"], KeySet([key]), issuer=ISSUER, audience=SERVICE_AUDIENCE)
    assert body["scope"] == "core:read compliance:read"
    assert (token.kind, token.scopes) == ("service", frozenset({"core:read", "compliance:read"}))


def test_a_service_may_narrow_its_scopes_but_not_widen_them() -> None:
    compliance = Grantee.service(service_client_id("compliance"))
    assert granted_scopes("core:read", compliance.scopes) == ["core:read"]
    assert granted_scopes("compliance:read", compliance.scopes) is None
    assert Grantee.service("service-unknown").scopes == []


@pytest.mark.parametrize("kind", ["service", "client"])
def test_a_scoped_guard_admits_a_token_with_the_scope(kind: str) -> None:
    who = principal(kind, frozenset({CORE_READ, "other"}))
    authorize(who, kinds=(kind,), roles=None, scopes=(CORE_READ,), step_up=False, now=time.time())


@pytest.mark.parametrize("kind", ["service", "client"])
@pytest.mark.parametrize("scopes", [frozenset(), frozenset({"auth:read"}), frozenset({"core:write"})])
def test_a_scoped_guard_refuses_a_token_without_the_scope_with_403(kind: str, scopes: frozenset[str]) -> None:
    with pytest.raises(ApiError) as refused:
        authorize(principal(kind, scopes), kinds=(kind,), roles=None, scopes=(CORE_READ,), step_up=False, now=0)
    assert (refused.value.kind.status, refused.value.code) == (403, "forbidden")
    assert CORE_READ in refused.value.detail


def test_a_users_rights_are_its_role_not_scopes() -> None:
    authorize(
        principal("user", frozenset()), kinds=("user",), roles={"admin"}, scopes=(CORE_READ,), step_up=False, now=0
    )
