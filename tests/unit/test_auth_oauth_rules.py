"""The pure rules of the client-credentials endpoint: granted scopes, presented credentials, the https check."""

from __future__ import annotations

import base64

import pytest

from services.auth.oauth import granted_scopes, presented_credentials, request_uri, valid_scope


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
    assert request_uri(url, "https", production=True).startswith("https://")
    assert request_uri(url, "http", production=True).startswith("http://")
    assert request_uri(url, None, production=True) == url
