"""docker-compose.yml: only the proxy, Prometheus and Grafana are published (on loopback), no credential is written
in it, Redis needs a password, each secret goes only to the services that use it (the master key to auth and
compliance, which seal signing keys with it, the KEK to core and compliance, each service client secret to its
service and to auth, the scrape credential to the proxy and, as a compose secret file, to Prometheus), and every
secret it takes is one `apgms dev-secrets` generates and compose refuses to start without. The file as
docker-compose resolves it is checked against the settings loaders in tests/integration/test_compose_config.py."""

from __future__ import annotations

import base64
import re
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from typer.testing import CliRunner

from apgms import devstack
from apgms.cli import COMPOSE_SECRET_FILES, COMPOSE_SECRETS, app
from shared.config import MIN_SERVICE_CLIENT_SECRET_CHARS, Env, read_dotenv
from shared.kek import KEK_BYTES, kek_provider_from_env

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
# `${NAME:?message}`: compose refuses to start while NAME has no value.
REQUIRED_VARIABLE = re.compile(r"\$\{(\w+):\?[^}]*\}")


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def interpolate(text: str, values: dict[str, str]) -> str:
    return REQUIRED_VARIABLE.sub(lambda match: values[match.group(1)], text)


def test_only_the_proxy_prometheus_and_grafana_publish_ports_and_only_on_loopback() -> None:
    services = compose()["services"]
    published = {name: service["ports"] for name, service in services.items() if service.get("ports")}
    assert published == {
        "proxy": ["127.0.0.1:3000:3000"],
        "prometheus": ["127.0.0.1:9090:9090"],
        "grafana": ["127.0.0.1:3030:3000"],
    }
    assert not any("network_mode" in service for service in services.values())


SECRET_VARIABLES = {
    "POSTGRES_PASSWORD",
    "APGMS_MASTER_KEY",
    "REDISCLI_AUTH",
    "APGMS_KEK",
    "SERVICE_CLIENT_SECRET",
    "SERVICE_CLIENT_SECRET_CORE",
    "SERVICE_CLIENT_SECRET_COMPLIANCE",
    "SERVICE_CLIENT_SECRET_REGULATOR",
    "METRICS_BEARER_TOKEN",
    "GF_SECURITY_ADMIN_PASSWORD",
}


def test_no_credential_is_written_in_the_file() -> None:
    assert "dev-only" not in COMPOSE_FILE.read_text()
    services = compose()["services"]
    for name, service in services.items():
        for variable, value in (service.get("environment") or {}).items():
            if variable in SECRET_VARIABLES:
                assert REQUIRED_VARIABLE.fullmatch(value), f"{name}: {variable} is a literal"
            elif "://" in str(value):
                # A URL's password, if any, is a variable: with it taken out, none is left.
                assert urlsplit(REQUIRED_VARIABLE.sub("", str(value))).password in (None, ""), f"{name}: {variable}"
    found = {variable for service in services.values() for variable in service.get("environment") or {}}
    assert found >= SECRET_VARIABLES


def test_redis_requires_the_password_the_services_use() -> None:
    services = compose()["services"]
    command = services["redis"]["command"]
    password = command[command.index("--requirepass") + 1]
    assert REQUIRED_VARIABLE.fullmatch(password)
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == password  # the healthcheck's redis-cli
    values = {name: f"generated-{name.lower()}" for name in COMPOSE_SECRETS}
    for name in ("auth", "core", "compliance", "regulator"):
        environment = {key: interpolate(str(value), values) for key, value in services[name]["environment"].items()}
        redis_url = Env(environment).url("REDIS_URL", ("redis",), required=True)
        assert redis_url is not None and f":{interpolate(password, values)}@redis:" in redis_url.reveal()
        database_url = Env(environment).url("DATABASE_URL", ("postgresql",), required=True)
        db_password = interpolate(services["db"]["environment"]["POSTGRES_PASSWORD"], values)
        assert database_url is not None and f":{db_password}@db:" in database_url.reveal()


def test_only_the_services_that_seal_signing_keys_get_the_master_key() -> None:
    services = compose()["services"]
    holders = [name for name, service in services.items() if "APGMS_MASTER_KEY" in (service.get("environment") or {})]
    assert holders == ["auth", "compliance"]
    for name in holders:
        assert REQUIRED_VARIABLE.fullmatch(services[name]["environment"]["APGMS_MASTER_KEY"])


def test_dev_secrets_generates_every_variable_the_file_requires() -> None:
    assert set(REQUIRED_VARIABLE.findall(COMPOSE_FILE.read_text())) == set(COMPOSE_SECRETS)


def test_dev_secrets_writes_each_secret_once_into_a_private_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devstack, "PROJECT_ROOT", tmp_path)
    (tmp_path / ".env").write_text("LOG_LEVEL=debug")  # a developer's own, without a final newline
    result = CliRunner().invoke(app, ["dev-secrets"])
    assert result.exit_code == 0, result.output
    written = read_dotenv(tmp_path / ".env")
    assert written["LOG_LEVEL"] == "debug"
    assert set(written) == {"LOG_LEVEL", *COMPOSE_SECRETS}
    assert len(base64.b64decode(written["APGMS_COMPOSE_MASTER_KEY"], validate=True)) == 32
    assert len(base64.b64decode(written["APGMS_COMPOSE_KEK"], validate=True)) == KEK_BYTES
    # The KEK is one that even production accepts (no dev-only marker), as core and compliance read it.
    kek_provider_from_env({"APGMS_ENV": "production", "APGMS_KEK": written["APGMS_COMPOSE_KEK"]})
    for name in ("CORE", "COMPLIANCE", "REGULATOR"):
        assert len(written[f"APGMS_COMPOSE_{name}_CLIENT_SECRET"]) >= MIN_SERVICE_CLIENT_SECRET_CHARS
    assert len({written[name] for name in COMPOSE_SECRETS}) == len(COMPOSE_SECRETS) == 9
    for name in COMPOSE_SECRETS:
        assert written[name] not in result.output, "secrets are written to the file, never printed"
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600
    # The scrape credential is also the compose secret's file: in a directory only its owner may enter, readable
    # by the Prometheus container's `nobody` through the bind mount.
    secret_file = tmp_path / COMPOSE_SECRET_FILES["APGMS_COMPOSE_METRICS_BEARER_TOKEN"]
    assert secret_file.read_text() == written["APGMS_COMPOSE_METRICS_BEARER_TOKEN"]
    assert stat.S_IMODE(secret_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o644

    again = CliRunner().invoke(app, ["dev-secrets"])
    assert again.exit_code == 0 and "nothing changed" in again.output
    assert read_dotenv(tmp_path / ".env") == written, "the database volume keeps its first password"

    secret_file.unlink()  # e.g. the dev dir removed: the file is written again from .env, not from a new value
    restored = CliRunner().invoke(app, ["dev-secrets"])
    assert restored.exit_code == 0 and "nothing changed" not in restored.output
    assert secret_file.read_text() == written["APGMS_COMPOSE_METRICS_BEARER_TOKEN"]
    assert read_dotenv(tmp_path / ".env") == written


def test_dev_secrets_adds_only_what_an_earlier_env_file_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devstack, "PROJECT_ROOT", tmp_path)
    earlier = {"APGMS_COMPOSE_DB_PASSWORD": "db-pw", "APGMS_COMPOSE_REDIS_PASSWORD": "redis-pw"}
    (tmp_path / ".env").write_text("".join(f"{name}={value}\n" for name, value in earlier.items()))
    result = CliRunner().invoke(app, ["dev-secrets"])
    assert result.exit_code == 0, result.output
    written = read_dotenv(tmp_path / ".env")
    assert set(written) == set(COMPOSE_SECRETS) and written.items() >= earlier.items()
    added = result.output.replace("\n", " ")
    assert "APGMS_COMPOSE_KEK" in added and "APGMS_COMPOSE_CORE_CLIENT_SECRET" in added
    assert "APGMS_COMPOSE_DB_PASSWORD" not in added, "the volume's password is kept, not rewritten"


def test_each_calling_service_and_auth_share_one_required_client_secret_variable() -> None:
    services = compose()["services"]
    auth = services["auth"]["environment"]
    for name in ("core", "compliance", "regulator"):
        given = REQUIRED_VARIABLE.fullmatch(services[name]["environment"]["SERVICE_CLIENT_SECRET"])
        known = REQUIRED_VARIABLE.fullmatch(auth[f"SERVICE_CLIENT_SECRET_{name.upper()}"])
        assert given and known and given.group(1) == known.group(1) == f"APGMS_COMPOSE_{name.upper()}_CLIENT_SECRET"
    for name in ("auth", "proxy"):
        assert "SERVICE_CLIENT_SECRET" not in services[name]["environment"]
    assert "SERVICE_CLIENT_SECRET_CORE" not in services["core"]["environment"], "auth alone knows every secret"


def test_only_the_services_holding_pii_get_the_kek() -> None:
    services = compose()["services"]
    holders = {
        name: service["environment"]["APGMS_KEK"]
        for name, service in services.items()
        if "APGMS_KEK" in (service.get("environment") or {})
    }
    assert list(holders) == ["core"]
    assert {REQUIRED_VARIABLE.fullmatch(value).group(1) for value in holders.values()} == {"APGMS_COMPOSE_KEK"}
    assert not any("APGMS_KEK_FILE" in (service.get("environment") or {}) for service in services.values())


def test_prometheus_reads_the_proxy_s_scrape_credential_from_the_file_dev_secrets_writes() -> None:
    document = compose()
    services = document["services"]
    token = REQUIRED_VARIABLE.fullmatch(services["proxy"]["environment"]["METRICS_BEARER_TOKEN"])
    assert token and token.group(1) == "APGMS_COMPOSE_METRICS_BEARER_TOKEN"
    assert services["prometheus"]["secrets"] == ["metrics_bearer_token"]
    assert Path(document["secrets"]["metrics_bearer_token"]["file"]) == COMPOSE_SECRET_FILES[token.group(1)]
    holders = [
        name for name, service in services.items() if "METRICS_BEARER_TOKEN" in (service.get("environment") or {})
    ]
    assert holders == ["proxy"]


def test_grafana_s_admin_password_is_generated_and_sign_up_is_off() -> None:
    grafana = compose()["services"]["grafana"]["environment"]
    password = REQUIRED_VARIABLE.fullmatch(grafana["GF_SECURITY_ADMIN_PASSWORD"])
    assert password and password.group(1) in COMPOSE_SECRETS
    assert grafana["GF_USERS_ALLOW_SIGN_UP"] == "false" and grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_the_build_context_is_what_the_dockerfile_copies_and_no_secret() -> None:
    root = COMPOSE_FILE.parent
    copied = {
        source
        for line in (root / "deploy" / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    }
    rules = [line for line in (root / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*", "everything is left out unless named"
    assert {rule[1:] for rule in rules if rule.startswith("!")} == copied
    assert not copied & {".env", ".devdb", ".venv", "artifacts"}
