"""Path normalisation and the prefix table of the routing proxy, as plain functions."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.routing import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PREFIXES,
    DEFAULT_TIMEOUT_S,
    MAX_PATH_CHARS,
    BadPath,
    MiB,
    ProxyRoute,
    RouteTable,
    build_route_table,
    encode_path,
    normalise_path,
)

SERVICE_OF_FIRST_SEGMENT = {prefix.lstrip("/"): service for prefix, service in DEFAULT_PREFIXES}


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("/auth/../admin", "/admin"),
        ("/auth/%2e%2e/internal/x", "/internal/x"),
        ("/auth/..%2finternal", "/internal"),
        ("/auth/%2E%2E%2Finternal", "/internal"),
        ("/auth/.%2E/admin/export", "/admin/export"),
        ("//internal/x", "/internal/x"),
        ("/./auth", "/auth"),
        ("/auth/./me", "/auth/me"),
        ("/auth//me", "/auth/me"),
        ("/../../auth/me", "/auth/me"),
        ("/auth/x/..", "/auth/"),
        ("/auth/", "/auth/"),
        ("/auth//", "/auth/"),
        ("/auth/me/", "/auth/me/"),
        ("/auth", "/auth"),
        ("/", "/"),
        ("/auth/..", "/"),
        ("/auth/%C3%A9", "/auth/\u00e9"),
        ("/auth/100%25", "/auth/100%"),
    ],
)
def test_normalise_path_removes_dots_decodes_and_collapses_slashes(raw: str, normalised: str) -> None:
    assert normalise_path(raw) == normalised


@pytest.mark.parametrize(
    "raw",
    [
        "/auth/%252e%252e/internal",  # double encoding
        "/auth/%252F",
        "/auth/%25%32%65",  # `%`, `2`, `e` decode to `%2e`
        "/auth\\..\\internal",  # backslash
        "/auth/%5c../internal",  # encoded backslash
        "/auth/%00",
        "/auth/%0d%0aX-Injected:1",
        "/auth/\x00",
        "/auth/\t",
        "/auth/%7f",
        "/auth/\u00e9",  # raw non-ASCII
        "/auth/\xff",
        "/auth/%ff",  # invalid UTF-8 once decoded
        "/auth/%c3",
        "auth/me",  # not absolute
        "/" + "a" * MAX_PATH_CHARS,
    ],
)
def test_normalise_path_refuses_input_no_honest_client_sends(raw: str) -> None:
    with pytest.raises(BadPath):
        normalise_path(raw)


def test_longest_path_accepted_is_the_limit() -> None:
    raw = "/auth/" + "a" * (MAX_PATH_CHARS - len("/auth/"))
    assert normalise_path(raw) == raw


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return build_route_table(body_limits={"/bank-lines/import": 20 * MiB}, timeouts={"/alerts": 0.5})


@pytest.mark.parametrize(
    ("path", "service"),
    [
        ("/auth", "auth"),
        ("/auth/", "auth"),
        ("/auth/login", "auth"),
        ("/users", "auth"),
        ("/bank-lines", "core"),
        ("/alerts/1/resolve", "core"),
        ("/bas/preview", "core"),
        ("/org/obligations/current", "core"),
        ("/admin/export/1", "core"),
        ("/compliance/report", "compliance"),
        ("/monitoring/snapshots", "compliance"),
        ("/audit/verify", "compliance"),
        ("/regulator", "regulator"),
        ("/regulator/portal/login", "regulator"),
    ],
)
def test_match_routes_each_prefix_to_its_service(table: RouteTable, path: str, service: str) -> None:
    route = table.match(path)
    assert route is not None
    assert route.service == service


@pytest.mark.parametrize(
    "path",
    ["/authx", "/auth-admin", "/userslist", "/bank-linesx", "/", "/metrics", "/health", "/regulators", "/Auth"],
)
def test_match_respects_segment_boundaries(table: RouteTable, path: str) -> None:
    assert table.match(path) is None


@pytest.mark.parametrize("path", ["/internal", "/internal/", "/internal/users/1", "/internal/bank-lines"])
def test_internal_is_never_matched(table: RouteTable, path: str) -> None:
    assert table.match(path) is None


def test_internal_is_never_matched_even_when_a_route_claims_it() -> None:
    table = RouteTable([ProxyRoute("/", "core"), ProxyRoute("/internal", "core")])
    assert table.match("/internal/x") is None
    assert table.match("/internal") is None
    assert table.match("/internalx") is not None


def test_longest_prefix_wins_for_an_override(table: RouteTable) -> None:
    imported = table.match("/bank-lines/import")
    assert imported is not None
    assert (imported.prefix, imported.service, imported.max_body_bytes) == ("/bank-lines/import", "core", 20 * MiB)
    nested = table.match("/bank-lines/import/batch")
    assert nested is not None and nested.prefix == "/bank-lines/import"
    listing = table.match("/bank-lines")
    assert listing is not None
    assert (listing.prefix, listing.max_body_bytes) == ("/bank-lines", DEFAULT_MAX_BODY_BYTES)
    sibling = table.match("/bank-lines/importer")
    assert sibling is not None and sibling.prefix == "/bank-lines"


def test_build_route_table_applies_overrides_to_their_prefix_only(table: RouteTable) -> None:
    alerts = table.match("/alerts/1")
    assert alerts is not None
    assert (alerts.prefix, alerts.timeout_s, alerts.max_body_bytes) == ("/alerts", 0.5, DEFAULT_MAX_BODY_BYTES)
    imported = table.match("/bank-lines/import")
    assert imported is not None and imported.timeout_s == DEFAULT_TIMEOUT_S
    assert len([route for route in table.routes if route.prefix == "/alerts"]) == 1
    assert table.services == ["auth", "compliance", "core", "regulator"]


def test_build_route_table_combines_limit_and_timeout_on_one_prefix() -> None:
    table = build_route_table(body_limits={"/bank-lines/import": 5}, timeouts={"/bank-lines/import": 30.0})
    route = table.match("/bank-lines/import")
    assert route is not None
    assert (route.max_body_bytes, route.timeout_s, route.service) == (5, 30.0, "core")


def test_build_route_table_defaults_reach_every_route() -> None:
    table = build_route_table(default_max_body_bytes=7, default_timeout_s=3.0)
    for prefix, _ in DEFAULT_PREFIXES:
        route = table.match(prefix)
        assert route is not None
        assert (route.max_body_bytes, route.timeout_s) == (7, 3.0)


def test_a_sub_prefix_override_inherits_its_parents_override() -> None:
    # PROXY_TIMEOUTS=/bank-lines=30 with the default 20 MiB limit on /bank-lines/import: the import route is
    # under /bank-lines, so its timeout must be the 30 s given for /bank-lines, not the global default.
    table = build_route_table(body_limits={"/bank-lines/import": 20 * MiB}, timeouts={"/bank-lines": 30.0})
    listing = table.match("/bank-lines")
    imported = table.match("/bank-lines/import")
    assert listing is not None and imported is not None
    assert listing.timeout_s == 30.0
    assert imported.max_body_bytes == 20 * MiB
    assert imported.timeout_s == 30.0


@pytest.mark.parametrize("prefix", ["/unknown", "/internal/x", "/authx"])
def test_build_route_table_refuses_an_override_outside_every_prefix(prefix: str) -> None:
    with pytest.raises(ValueError, match=prefix):
        build_route_table(body_limits={prefix: 10})
    with pytest.raises(ValueError, match=prefix):
        build_route_table(timeouts={prefix: 1.0})


def test_regulator_route_is_flagged() -> None:
    table = build_route_table()
    regulator = table.match("/regulator/login")
    core = table.match("/bas")
    assert regulator is not None and regulator.is_regulator
    assert core is not None and not core.is_regulator


# --- properties ---------------------------------------------------------------------------------------------------

SEGMENTS = st.sampled_from(
    [
        "",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2e%2e",
        ".%2e",
        "%2E.",
        "..%2f",
        "%2f..",
        "%2F",
        "%2f%2e%2e%2f",
        "auth",
        "users",
        "bank-lines",
        "import",
        "alerts",
        "admin",
        "compliance",
        "audit",
        "regulator",
        "internal",
        "metrics",
        "x",
        "authx",
        "%61uth",
        "%69nternal",
        "a%20b",
        "%3f",
        "%23",
        "%25",
        ";",
        "%C3%A9",
    ]
)
PATHS = st.lists(SEGMENTS, min_size=0, max_size=8).map(lambda segments: "/" + "/".join(segments))


def first_segment_service(path: str) -> str | None:
    return SERVICE_OF_FIRST_SEGMENT.get(path.split("/")[1])


@settings(max_examples=400, deadline=None)
@given(PATHS)
def test_no_path_is_matched_as_one_service_and_forwarded_as_another(raw: str) -> None:
    table = build_route_table(body_limits={"/bank-lines/import": 20 * MiB})
    path = normalise_path(raw)
    assert path.startswith("/")
    assert all(segment not in (".", "..") for segment in path.split("/"))
    assert "//" not in path
    route = table.match(path)
    service = route.service if route else None
    assert service == first_segment_service(path)
    if path.split("/")[1] == "internal":
        assert route is None
    wire = encode_path(path)
    # What the upstream decodes from the wire is exactly what was matched here.
    assert unquote(wire) == path
    assert normalise_path(wire) == path
    upstream_route = table.match(normalise_path(wire))
    assert (upstream_route.service if upstream_route else None) == service


@settings(max_examples=200, deadline=None)
@given(PATHS)
def test_encode_then_normalise_is_idempotent(raw: str) -> None:
    once = normalise_path(raw)
    twice = normalise_path(encode_path(once))
    assert twice == once
    assert encode_path(twice) == encode_path(once)
