"""Configuration is read once, typed, fails naming the variable, and never prints a secret."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from shared.config import (
    PUBLIC_DEV_MASTER_KEY,
    ConfigError,
    Secret,
    environ_with_dotenv,
    load_settings,
    new_service_client_secret,
    read_dotenv,
)

DB_PASSWORD = "hunter2-Sup3r"
PRODUCTION_KEY = base64.b64encode(bytes(range(32))).decode()
DATABASE_URL = f"postgresql://apgms:{DB_PASSWORD}@db.internal:5432/apgms"


@pytest.fixture(autouse=True)
def empty_workdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """load_settings reads `.env` from the working directory; start each test without one."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def config_error(environ: dict[str, str], *, database_required: bool = True) -> str:
    """The error of loading the auth service's settings (it seals secrets, so it reads the master key)."""
    with pytest.raises(ConfigError) as caught:
        load_settings("auth", environ, database_required=database_required, master_key_required=True)
    return str(caught.value)


def test_defaults_for_a_service() -> None:
    settings = load_settings("core", {"DATABASE_URL": DATABASE_URL})
    assert settings.service == "core"
    assert settings.env == "dev"
    assert settings.host == "127.0.0.1"
    assert settings.port == 3002
    assert settings.redis_url is None
    assert settings.trusted_hops == 0
    assert settings.is_production is False
    assert settings.database_url is not None
    assert settings.database_url.reveal() == DATABASE_URL


def test_values_are_typed() -> None:
    settings = load_settings(
        "auth",
        {
            "DATABASE_URL": DATABASE_URL,
            "APGMS_ENV": "production",
            "APGMS_MASTER_KEY": PRODUCTION_KEY,
            "PORT": "8080",
            "LOG_LEVEL": "warning",
            "READY_CHECK_TIMEOUT_S": "0.25",
            "TRUSTED_PROXY_HOPS": "2",
            "REDIS_URL": "redis://cache:6379/0",
        },
    )
    assert settings.port == 8080
    assert settings.is_production is True
    assert settings.log_level == "warning"
    assert settings.ready_timeout_s == 0.25
    assert settings.trusted_hops == 2
    assert settings.redis_url == Secret("redis://cache:6379/0")


def test_empty_value_counts_as_unset() -> None:
    assert load_settings("auth", {"DATABASE_URL": DATABASE_URL, "PORT": ""}).port == 3001


def test_missing_database_url_names_the_variable() -> None:
    assert "DATABASE_URL" in config_error({})


def test_database_url_is_optional_when_not_required() -> None:
    assert load_settings("auth", {}, database_required=False).database_url is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "-1"),
        ("APGMS_ENV", "staging"),
        ("DATABASE_URL", "mysql://x"),
        ("DATABASE_URL", "not a url"),
        ("LOG_LEVEL", "verbose"),
        ("REDIS_URL", "http://cache:6379"),
        ("TRUSTED_PROXY_HOPS", "-1"),
        ("DB_POOL_MAX_SIZE", "0"),
        ("READY_CHECK_TIMEOUT_S", "fast"),
        ("GRACEFUL_TIMEOUT_S", "-5"),
    ],
)
def test_malformed_variable_is_named(name: str, value: str) -> None:
    environ = {"DATABASE_URL": DATABASE_URL, name: value}
    message = config_error(environ)
    assert name in message
    assert DB_PASSWORD not in message


def test_port_out_of_range_is_rejected() -> None:
    # 70000 cannot be bound; it must fail at start-up with the variable's name, not later inside hypercorn.
    assert "PORT" in config_error({"DATABASE_URL": DATABASE_URL, "PORT": "70000"})


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://apgms:{DB_PASSWORD}@db.internal/apgms",
        f"postgresql://apgms:{DB_PASSWORD}@/apgms",
        f"postgres://apgms:{DB_PASSWORD}@",
        f"https://apgms:{DB_PASSWORD}@db.internal/apgms",
    ],
)
def test_bad_database_url_error_never_contains_the_password(url: str) -> None:
    message = config_error({"DATABASE_URL": url})
    assert "DATABASE_URL" in message
    assert DB_PASSWORD not in message
    assert url not in message


def test_unparseable_database_url_is_a_config_error_naming_it() -> None:
    # urlsplit raises ValueError("Invalid IPv6 URL") on an unclosed "["; the runner only catches ConfigError.
    message = config_error({"DATABASE_URL": f"postgresql://apgms:{DB_PASSWORD}@[db.internal/apgms"})
    assert "DATABASE_URL" in message
    assert DB_PASSWORD not in message


def test_production_refuses_dev_only_credentials() -> None:
    url = "postgresql://apgms:dev-only-password@db.internal/apgms"
    message = config_error({"APGMS_ENV": "production", "DATABASE_URL": url})
    assert "DATABASE_URL" in message
    assert "dev-only-password" not in message
    assert load_settings("auth", {"APGMS_ENV": "dev", "DATABASE_URL": url}).database_url == Secret(url)


def test_settings_repr_never_contains_secrets() -> None:
    redis_password = "r3dis-Secret"
    settings = load_settings(
        "auth", {"DATABASE_URL": DATABASE_URL, "REDIS_URL": f"redis://:{redis_password}@cache:6379/0"}
    )
    for text in (repr(settings), str(settings), repr(settings.database_url), f"{settings.database_url}"):
        assert DB_PASSWORD not in text
        assert redis_password not in text
    assert "Secret('**********')" in repr(settings)


def test_database_url_with_socket_host_in_query_is_accepted() -> None:
    url = "postgresql:///apgms?host=/var/run/postgresql"
    settings = load_settings("auth", {"DATABASE_URL": url})
    assert settings.database_url == Secret(url)


def test_unix_socket_redis_url_is_accepted() -> None:
    # "unix" is an accepted REDIS_URL scheme, and a unix socket URL has a path, not a host.
    settings = load_settings("auth", {"REDIS_URL": "unix:///run/redis/redis.sock?db=0"}, database_required=False)
    assert settings.redis_url == Secret("unix:///run/redis/redis.sock?db=0")


def test_dotenv_is_read_in_dev_and_the_environment_wins(empty_workdir: Path) -> None:
    dotenv = empty_workdir / ".env"
    dotenv.write_text(f"DATABASE_URL={DATABASE_URL}\nPORT=4000\nLOG_LEVEL=debug\n")
    merged = environ_with_dotenv({"APGMS_ENV": "dev", "PORT": "5000"}, dotenv=dotenv)
    assert merged["DATABASE_URL"] == DATABASE_URL
    assert merged["PORT"] == "5000"
    assert merged["LOG_LEVEL"] == "debug"
    settings = load_settings("auth", {"PORT": "5000"})
    assert settings.port == 5000
    assert settings.log_level == "debug"
    assert settings.database_url == Secret(DATABASE_URL)


def test_dotenv_is_ignored_in_production(empty_workdir: Path) -> None:
    dotenv = empty_workdir / ".env"
    dotenv.write_text(f"DATABASE_URL={DATABASE_URL}\nPORT=4000\n")
    assert environ_with_dotenv({"APGMS_ENV": "production"}, dotenv=dotenv) == {"APGMS_ENV": "production"}
    assert "DATABASE_URL" in config_error({"APGMS_ENV": "production"})
    settings = load_settings(
        "auth", {"APGMS_ENV": "production", "APGMS_MASTER_KEY": PRODUCTION_KEY}, database_required=False
    )
    assert settings.port == 3001
    assert settings.database_url is None


def test_read_dotenv_syntax(tmp_path: Path) -> None:
    dotenv = tmp_path / "example.env"
    dotenv.write_text(
        "# a comment\n"
        "\n"
        "PLAIN=value\n"
        'DOUBLE="quoted value"\n'
        "SINGLE='single'\n"
        "export EXPORTED=yes\n"
        "  SPACED  =  padded  \n"
        "WITH_EQUALS=a=b=c\n"
        "not a pair\n"
    )
    assert read_dotenv(dotenv) == {
        "PLAIN": "value",
        "DOUBLE": "quoted value",
        "SINGLE": "single",
        "EXPORTED": "yes",
        "SPACED": "padded",
        "WITH_EQUALS": "a=b=c",
    }
    assert read_dotenv(tmp_path / "missing.env") == {}


def test_secret_compares_by_value_but_prints_masked() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert "hunter2" not in repr(Secret("hunter2"))
    assert "hunter2" not in str(Secret("hunter2"))
    assert Secret("hunter2").reveal() == "hunter2"


def test_there_is_no_built_in_master_key() -> None:
    # A key in the repository would be everyone's key: outside production a process that seals nothing has none,
    # and one that seals (auth) must be given one.
    assert load_settings("core", {"APGMS_ENV": "dev"}, database_required=False).master_key is None
    with pytest.raises(ConfigError) as caught:
        load_settings("auth", {}, database_required=False, master_key_required=True)
    assert "APGMS_MASTER_KEY is required" in str(caught.value) and ".devdb/master.key" in str(caught.value)
    with pytest.raises(ConfigError, match="APGMS_MASTER_KEY is required"):
        load_settings("core", {"APGMS_ENV": "dev"}, database_required=False).require_master_key()


def test_a_given_master_key_is_used_and_never_printed() -> None:
    settings = load_settings(
        "auth", {"APGMS_MASTER_KEY": PRODUCTION_KEY}, database_required=False, master_key_required=True
    )
    assert settings.require_master_key() == Secret(PRODUCTION_KEY)
    assert PRODUCTION_KEY not in repr(settings)


@pytest.mark.parametrize("env", ["dev", "test", "production"])
def test_the_published_dev_key_of_earlier_versions_is_refused_everywhere(env: str) -> None:
    message = config_error({"APGMS_ENV": env, "APGMS_MASTER_KEY": PUBLIC_DEV_MASTER_KEY}, database_required=False)
    assert "APGMS_MASTER_KEY is the dev key published in earlier versions" in message


DEV_ONLY_KEY = base64.b64encode(b"my-dev-only-key-of-32-bytes-long").decode()


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"APGMS_ENV": "production"}, "APGMS_MASTER_KEY is required"),
        ({"APGMS_ENV": "production", "APGMS_MASTER_KEY": DEV_ONLY_KEY}, "dev-only key"),
        ({"APGMS_MASTER_KEY": "not base64!"}, "32 bytes, base64"),
        ({"APGMS_MASTER_KEY": base64.b64encode(b"short").decode()}, "32 bytes, base64"),
    ],
)
def test_master_key_problems_name_the_variable(environ: dict[str, str], fragment: str) -> None:
    message = config_error(environ, database_required=False)
    assert "APGMS_MASTER_KEY" in message
    assert fragment in message


def test_a_process_that_seals_nothing_never_reads_the_master_key() -> None:
    # Not even in production, and not even a malformed or published one: each process reads what it uses.
    for key in ("", "not base64!", PUBLIC_DEV_MASTER_KEY):
        settings = load_settings("core", {"APGMS_ENV": "production", "APGMS_MASTER_KEY": key}, database_required=False)
        assert settings.master_key is None


def test_stateless_processes_read_no_database_or_redis() -> None:
    settings = load_settings(
        "api-gateway",
        {"APGMS_ENV": "production", "DATABASE_URL": "postgresql://apgms:apgms-dev-only@db/x", "REDIS_URL": "x"},
        stateless=True,
    )
    assert (settings.database_url, settings.redis_url) == (None, None)


CLIENT_SECRET = new_service_client_secret()


def test_a_calling_service_reads_its_client_id_and_secret() -> None:
    settings = load_settings(
        "core", {"SERVICE_CLIENT_SECRET": CLIENT_SECRET}, database_required=False, service_client=True
    )
    assert settings.service_client_id == "service-core"
    assert settings.service_client_secret == Secret(CLIENT_SECRET)
    assert CLIENT_SECRET not in repr(settings)
    assert load_settings("core", {}, database_required=False).service_client_secret is None


def test_the_client_secret_is_optional_outside_production_and_required_in_it() -> None:
    assert load_settings("core", {}, database_required=False, service_client=True).service_client_secret is None
    with pytest.raises(ConfigError, match="SERVICE_CLIENT_SECRET is required"):
        load_settings("core", {"APGMS_ENV": "production"}, database_required=False, service_client=True)


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"SERVICE_CLIENT_SECRET": "short"}, "at least 43 characters"),
        ({"APGMS_ENV": "production", "SERVICE_CLIENT_SECRET": "dev-only-" + "x" * 40}, "dev-only value"),
    ],
)
def test_weak_or_dev_only_client_secrets_are_refused(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings("core", environ, database_required=False, service_client=True)
    assert "SERVICE_CLIENT_SECRET" in str(caught.value) and fragment in str(caught.value)
    assert "x" * 40 not in str(caught.value)
