"""The proxy's settings from a given environment (never the process's own, never a developer's `.env`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import DEFAULT_DEV_ORIGINS, SERVICE_NAME, load_proxy_settings
from proxy.routing import DEFAULT_MAX_BODY_BYTES, DEFAULT_TIMEOUT_S, MiB
from shared.config import ConfigError


@pytest.fixture(autouse=True)
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_defaults_route_four_services_on_their_ports() -> None:
    settings = load_proxy_settings(environ={})
    assert settings.service == SERVICE_NAME == "api-gateway"
    assert settings.port == 3000
    assert settings.upstream_urls == {
        "auth": ["http://127.0.0.1:3001"],
        "core": ["http://127.0.0.1:3002"],
        "compliance": ["http://127.0.0.1:3003"],
        "regulator": ["http://127.0.0.1:3004"],
    }
    imported = settings.routes.match("/bank-lines/import")
    listing = settings.routes.match("/bank-lines")
    assert imported is not None and listing is not None
    assert imported.max_body_bytes == 5 * MiB
    assert listing.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 1 * MiB
    assert listing.timeout_s == DEFAULT_TIMEOUT_S
    assert settings.cors_allowed_origins == frozenset(DEFAULT_DEV_ORIGINS)
    assert settings.trusted_hops == 0
    assert settings.database_url is None


def test_a_dotenv_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("UPSTREAM_AUTH_URLS=http://from-dotenv:9\n")
    assert load_proxy_settings(environ={}).upstream_urls["auth"] == ["http://from-dotenv:9"]
    overridden = load_proxy_settings(environ={"UPSTREAM_AUTH_URLS": "http://from-env:8"})
    assert overridden.upstream_urls["auth"] == ["http://from-env:8"]


def test_several_instances_per_service() -> None:
    settings = load_proxy_settings(environ={"UPSTREAM_CORE_URLS": " http://a:1 , http://b:2/ ,"})
    assert settings.upstream_urls["core"] == ["http://a:1", "http://b:2"]
    assert settings.upstream_urls["auth"] == ["http://127.0.0.1:3001"]


@pytest.mark.parametrize(
    "value",
    [
        "ftp://a:1",
        "a:1",
        "http://a",
        "http://a:1/prefix",
        "http://:1",
        "http://a:0",
        "http://a:1,https://b",
        ",",
        "http://a:notaport",
        "http://a:99999",
    ],
)
def test_bad_upstream_urls_name_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="UPSTREAM_CORE_URLS"):
        load_proxy_settings(environ={"UPSTREAM_CORE_URLS": value})


def test_body_limits_and_timeouts_override_per_route() -> None:
    settings = load_proxy_settings(
        environ={
            "PROXY_BODY_LIMITS": "/compliance/evidence=5000, /bank-lines/import/=100",
            "PROXY_TIMEOUTS": "/alerts=0.5",
            "PROXY_MAX_BODY_BYTES": "2048",
            "PROXY_TIMEOUT_S": "3",
        }
    )
    evidence = settings.routes.match("/compliance/evidence")
    report = settings.routes.match("/compliance/report")
    imported = settings.routes.match("/bank-lines/import")
    alerts = settings.routes.match("/alerts/1/resolve")
    assert evidence is not None and report is not None and imported is not None and alerts is not None
    assert (evidence.service, evidence.max_body_bytes, evidence.timeout_s) == ("compliance", 5000, 3.0)
    assert (report.max_body_bytes, report.timeout_s) == (2048, 3.0)
    assert imported.max_body_bytes == 100
    assert (alerts.timeout_s, alerts.max_body_bytes) == (0.5, 2048)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PROXY_BODY_LIMITS", "bank-lines=5"),
        ("PROXY_BODY_LIMITS", "/bank-lines"),
        ("PROXY_BODY_LIMITS", "/bank-lines=lots"),
        ("PROXY_BODY_LIMITS", "/bank-lines=1.5"),
        ("PROXY_BODY_LIMITS", "/nowhere=5"),
        ("PROXY_BODY_LIMITS", "/internal/x=5"),
        ("PROXY_TIMEOUTS", "/alerts=soon"),
        ("PROXY_TIMEOUTS", "alerts=1"),
        ("PROXY_TIMEOUTS", "/nowhere=1"),
    ],
)
def test_bad_override_entries_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_proxy_settings(environ={name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PROXY_BODY_LIMITS", "/bank-lines=-1"),
        ("PROXY_TIMEOUTS", "/alerts=-1"),
        ("PROXY_TIMEOUTS", "/alerts=0"),
        ("PROXY_TIMEOUTS", "/alerts=nan"),
    ],
)
def test_override_values_out_of_range_name_the_variable(name: str, value: str) -> None:
    # PROXY_MAX_BODY_BYTES and PROXY_TIMEOUT_S refuse these; a per-route override must too, or every request on
    # the route fails (a negative limit answers 413 to any body, a zero timeout 504 to everything).
    with pytest.raises(ConfigError, match=name):
        load_proxy_settings(environ={name: value})


def test_health_policy_and_limits_from_the_environment() -> None:
    settings = load_proxy_settings(
        environ={
            "PROXY_HEALTH_INTERVAL_S": "0.2",
            "PROXY_UNHEALTHY_THRESHOLD": "3",
            "PROXY_HEALTHY_THRESHOLD": "4",
            "PROXY_EJECT_AFTER_FAILURES": "1",
            "REGULATOR_MAX_CONCURRENCY": "2",
            "TRUSTED_PROXY_HOPS": "1",
        }
    )
    assert settings.health.interval_s == 0.2
    assert settings.health.unhealthy_threshold == 3
    assert settings.health.healthy_threshold == 4
    assert settings.health.eject_after_failures == 1
    assert settings.regulator_max_concurrency == 2
    assert settings.trusted_hops == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PROXY_UNHEALTHY_THRESHOLD", "0"),
        ("PROXY_HEALTH_INTERVAL_S", "fast"),
        ("PROXY_MAX_BODY_BYTES", "-1"),
        ("PROXY_TIMEOUT_S", "0"),
    ],
)
def test_bad_scalar_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_proxy_settings(environ={name: value})


# Everything the proxy needs in production, and nothing the services need (no master key, database, Redis or client
# secret): each process reads only the settings it uses.
PRODUCTION = {"APGMS_ENV": "production", "PUBLIC_HOSTS": "api.example"}
SCRAPE_TOKEN = "0123456789abcdef0123456789abcdef"


def test_production_needs_no_master_key_database_redis_or_client_secret() -> None:
    settings = load_proxy_settings(environ=PRODUCTION)
    assert settings.is_production
    assert (settings.master_key, settings.database_url, settings.redis_url) == (None, None, None)
    assert (settings.service_client_id, settings.service_client_secret) == (None, None)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("APGMS_MASTER_KEY", "not base64!"),
        ("APGMS_MASTER_KEY", "ZGV2LW9ubHktZGV2LW9ubHktZGV2LW9ubHktMDAwMDA="),
        ("DATABASE_URL", "postgresql://apgms:apgms-dev-only@db/apgms"),
        ("REDIS_URL", "mysql://nowhere"),
        ("SERVICE_CLIENT_SECRET", "dev-only"),
    ],
)
def test_the_services_settings_are_never_read_by_the_proxy(name: str, value: str) -> None:
    # Values a service would refuse in production: the proxy does not read them, so they cannot stop it.
    assert load_proxy_settings(environ={**PRODUCTION, name: value}).master_key is None


def test_production_has_no_default_cors_origins() -> None:
    settings = load_proxy_settings(environ=PRODUCTION)
    assert settings.is_production
    assert settings.cors_allowed_origins == frozenset()


def test_cors_origins_are_read_and_trailing_slashes_dropped() -> None:
    settings = load_proxy_settings(
        environ={**PRODUCTION, "CORS_ALLOWED_ORIGINS": "https://app.example/, https://b.example"}
    )
    assert settings.cors_allowed_origins == frozenset({"https://app.example", "https://b.example"})


def test_production_refuses_to_start_without_public_hosts() -> None:
    with pytest.raises(ConfigError, match="PUBLIC_HOSTS is required"):
        load_proxy_settings(environ={**PRODUCTION, "PUBLIC_HOSTS": ""})


def test_public_hosts_are_lowercased_bytes_and_optional_in_dev() -> None:
    settings = load_proxy_settings(environ={**PRODUCTION, "PUBLIC_HOSTS": "API.example, api.example:8443,[::1]:3000"})
    assert settings.public_hosts == frozenset({b"api.example", b"api.example:8443", b"[::1]:3000"})
    assert load_proxy_settings(environ={}).public_hosts == frozenset()


@pytest.mark.parametrize("value", ["https://api.example", "api.example/x", "api example", "a.example:port"])
def test_malformed_public_hosts_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="PUBLIC_HOSTS"):
        load_proxy_settings(environ={**PRODUCTION, "PUBLIC_HOSTS": value})


def test_the_scrape_token_is_a_secret_and_optional() -> None:
    settings = load_proxy_settings(environ={**PRODUCTION, "METRICS_BEARER_TOKEN": SCRAPE_TOKEN})
    assert settings.metrics_bearer_token is not None
    assert settings.metrics_bearer_token.reveal() == SCRAPE_TOKEN
    assert SCRAPE_TOKEN not in repr(settings)
    assert load_proxy_settings(environ=PRODUCTION).metrics_bearer_token is None


@pytest.mark.parametrize("value", ["short", "x" * 31, "has space " + "x" * 32, "dev-only-" + "x" * 32])
def test_weak_or_malformed_scrape_tokens_are_refused_in_production(value: str) -> None:
    with pytest.raises(ConfigError, match="METRICS_BEARER_TOKEN"):
        load_proxy_settings(environ={**PRODUCTION, "METRICS_BEARER_TOKEN": value})
