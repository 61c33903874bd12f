"""The pure rules of the client-credentials endpoint: granted scopes, presented credentials, the https check."""

from __future__ import annotations

import base64
import time
import uuid

import pytest
from authlib.oauth2.rfc6749.errors import InsecureTransportError  # type: ignore[import-untyped]
from joserfc.jwk import KeySet, OKPKey

from services.auth.oauth import Grantee, granted_scopes, presented_credentials, request_uri, token_response, valid_scope
from shared.tokens import SERVICE_AUDIENCE, USER_AUDIENCE, verify


@pytest.mark.parametrize(
    ("requested", "allowed", "granted"),
    [
        (None, ["users:read", "reports:read"], ["users:read", "reports:read"]),
        ("", ["users:read"], ["users:read"]),
        ("reports:read users:read", ["users:read", "reports:read"], ["users:read", "reports:read"]),
        ("reports:read other", ["users:read", "reports:read"], ["reports:read"]),
        ("other", ["users:read"], None),
    ],
)
def test_granted_scopes_are_requested_and_allowed(
    requested: str | None, allowed: list[str], granted: list[str] | None
) -> None:
    assert granted_scopes(requested, allowed) == granted


def test_scope_tokens_follow_rfc6749() -> None:
    assert valid_scope("users:read") and valid_scope("a/b!")
    assert not valid_scope("") and not valid_scope("a b") and not valid_scope('a"b') and not valid_scope("a\\b")


def test_basic_credentials_win_over_form_fields() -> None:
    header = {"Authorization": "Basic " + base64.b64encode(b"id%3A1:s%2Fcret").decode()}
    assert presented_credentials(header, {"client_id": "x", "client_secret": "y"}) == ("id:1", "s/cret")
    assert presented_credentials({}, {"client_id": "x", "client_secret": "y"}) == ("x", "y")
    assert presented_credentials({"Authorization": "Basic !!!"}, {}) == (None, None)


def test_https_is_required_only_in_production_and_judged_by_the_edge() -> None:
    url = "http://auth.internal:3001/auth/oauth/token"
    assert request_uri(url, None, production=False).startswith("https://auth.internal:3001/")
    assert request_uri(url, "https", production=True) == "https://auth.internal:3001/auth/oauth/token"
    for scheme in ("http", None):
        with pytest.raises(InsecureTransportError):
            request_uri(url, scheme, production=True)


def test_in_production_a_loopback_host_does_not_make_http_secure() -> None:
    # authlib deems http to a loopback host secure; behind the proxy every request comes from one.
    with pytest.raises(InsecureTransportError):
        request_uri("http://127.0.0.1:3001/auth/oauth/token", "http", production=True)


def test_a_service_gets_a_service_token_and_an_org_client_an_api_token() -> None:
    key = OKPKey.generate_key("Ed25519", parameters={"kid": "k1"})
    keys = KeySet([key])
    service = token_response(Grantee.service("service-core"), [], key, "urn:apgms:auth", time.time())
    principal = verify(service["access_token"], keys, issuer="urn:apgms:auth", audience=SERVICE_AUDIENCE)
    assert (principal.kind, principal.org_id, service["scope"]) == ("service", "", "")
    org_id = uuid.uuid4()
    client = Grantee("apgms-client-1", org_id, ["users:read"])
    api = token_response(client, ["users:read"], key, "urn:apgms:auth", time.time())
    principal = verify(api["access_token"], keys, issuer="urn:apgms:auth", audience=USER_AUDIENCE)
    assert (principal.kind, principal.org_id, api["scope"]) == ("client", str(org_id), "users:read")
