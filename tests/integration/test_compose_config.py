"""docker-compose.yml as docker-compose itself reads it: `docker-compose config` (Debian's docker-compose, installed
by `python -m apgms.devservers` when missing; `config` needs no container engine) resolves the file with a `.env`
made by `apgms dev-secrets` in a temporary project directory, and the resolved services are checked against the
code, not against a hand-kept list:

- every long-running service has a healthcheck, and each service waits (service_healthy, or the migrate job's
  service_completed_successfully, which itself waits for a healthy db) for the database and Redis its settings
  point at;
- each service of our image is given every variable its own settings loader requires: the real loaders
  (`load_auth_settings`, ..., `load_proxy_settings`; the migrate job's `apgms db migrate` reader) load the service's
  resolved environment without ConfigError as compose runs it (APGMS_ENV=dev) and with APGMS_ENV=production;
- what production alone requires (found by leaving each variable out in turn) is named in the README's compose
  section;
- the URLs the settings use to reach another service name a compose service on the port it listens on;
- the scrape credential the proxy gets is the one in Prometheus's compose secret, which prometheus.yml reads.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from typer.testing import CliRunner

from apgms import common, devstack
from apgms.cli import COMPOSE_SECRET_FILES, app
from apgms.devservers import DevServerError, ensure_docker_compose
from proxy.config import load_proxy_settings
from services.auth.config import load_auth_settings
from services.compliance.config import load_compliance_settings
from services.core.config import load_core_settings
from services.regulator.config import load_regulator_settings
from shared.config import ConfigError, Settings, read_dotenv

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
README = ROOT / "README.md"
README_COMPOSE_SECTION = "### In containers: docker compose"
CONFIG_TIMEOUT_S = 60

# What each process of our image runs, by its compose command, and the loader that reads its settings at start-up
# (its __main__ passes the same loader to shared.runner.run_service).
Loader = Callable[[Mapping[str, str]], Settings]
LOADERS: dict[tuple[str, ...], Loader] = {
    ("python", "-m", "services.auth"): load_auth_settings,
    ("python", "-m", "services.core"): load_core_settings,
    ("python", "-m", "services.compliance"): load_compliance_settings,
    ("python", "-m", "services.regulator"): load_regulator_settings,
    ("python", "-m", "proxy"): load_proxy_settings,
}
MIGRATE_COMMAND = ("apgms", "db", "migrate")
WAITS = frozenset({"service_healthy", "service_completed_successfully"})


@dataclass(frozen=True)
class Resolved:
    """The file as `docker-compose config` printed it, and the project directory it was resolved in."""

    project: Path
    services: dict[str, dict[str, Any]]
    secrets: dict[str, dict[str, Any]]
    dotenv: dict[str, str]


def docker_compose() -> Path:
    try:
        return ensure_docker_compose()
    except DevServerError as error:
        pytest.fail(f"These tests need docker-compose: {error}")


def run_config(project: Path, env_file: Path) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with nothing of the caller's environment (a developer's shell variables must not fill
    what .env lacks), the repository's file and `project` as the directory relative paths resolve in."""
    argv = [str(docker_compose()), "--env-file", str(env_file), "-f", str(COMPOSE_FILE)]
    argv += ["--project-directory", str(project), "config"]
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(project)}
    return subprocess.run(argv, capture_output=True, text=True, env=environ, timeout=CONFIG_TIMEOUT_S, check=False)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resolved]:
    project = tmp_path_factory.mktemp("compose")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(devstack, "PROJECT_ROOT", project)
        result = CliRunner().invoke(app, ["dev-secrets"])
    assert result.exit_code == 0, result.output
    config = run_config(project, project / ".env")
    assert config.returncode == 0, config.stderr
    document = yaml.safe_load(config.stdout)
    yield Resolved(project, document["services"], document.get("secrets") or {}, read_dotenv(project / ".env"))


@pytest.fixture
def no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loaders read `.env` of the working directory outside production: none here, as in the container."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(devstack, "PROJECT_ROOT", tmp_path)


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):  # the list form, NAME=value
        raw = dict(item.partition("=")[::2] for item in raw)
    return {name: "" if value is None else str(value) for name, value in raw.items()}


def dependencies(service: dict[str, Any]) -> dict[str, str]:
    """Service name -> the condition it is waited for with (the short list form is service_started)."""
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in raw.items()}


def ours(resolved: Resolved) -> dict[str, tuple[str, ...]]:
    """The services built from our image, with their commands."""
    return {name: tuple(service["command"]) for name, service in resolved.services.items() if "build" in service}


def one_shot_jobs(resolved: Resolved) -> set[str]:
    """Services others wait for to exit successfully: jobs, not servers."""
    return {
        name
        for service in resolved.services.values()
        for name, condition in dependencies(service).items()
        if condition == "service_completed_successfully"
    }


def load(resolved: Resolved, name: str, env: str, drop: str | None = None) -> Settings | str:
    """The service's settings from its compose environment with APGMS_ENV=`env` (without `drop`), or for the
    migrate job the database URL `apgms db migrate` would use."""
    environ = {**environment(resolved.services[name]), "APGMS_ENV": env}
    environ.pop(drop or "", None)
    command = tuple(resolved.services[name]["command"])
    if command == MIGRATE_COMMAND:
        with pytest.MonkeyPatch.context() as patch:
            for variable in list(os.environ):
                patch.delenv(variable)
            for variable, value in environ.items():
                patch.setenv(variable, value)
            try:
                return common.database_url()
            except typer.Exit as exit_:
                raise ConfigError(f"apgms db migrate stops without {drop}") from exit_
    return LOADERS[command](environ)


def database_host(resolved: Resolved, name: str) -> str | None:
    settings = load(resolved, name, "dev")
    if isinstance(settings, str):
        return urlsplit(settings).hostname
    return urlsplit(settings.database_url.reveal()).hostname if settings.database_url else None


def redis_host(resolved: Resolved, name: str) -> str | None:
    settings = load(resolved, name, "dev")
    if isinstance(settings, str) or settings.redis_url is None:
        return None
    return urlsplit(settings.redis_url.reveal()).hostname


def waits_for(resolved: Resolved, name: str, target: str) -> bool:
    """Whether `name` starts only once `target` is healthy: directly, or through a job that waits for it."""
    for dependency, condition in dependencies(resolved.services[name]).items():
        if dependency == target and condition == "service_healthy":
            return True
        if condition == "service_completed_successfully" and waits_for(resolved, dependency, target):
            return True
    return False


def published(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each published port, from the short or the long form."""
    found = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            found.append((port.get("host_ip", ""), str(port.get("published", "")), str(port["target"])))
        else:
            parts = str(port).split("/")[0].rsplit(":", 2)
            found.append(("", *parts) if len(parts) == 2 else (parts[0], parts[1], parts[2]))
    return found


@pytest.mark.usefixtures("no_dotenv")
def test_every_service_has_a_healthcheck_and_waits_for_the_database_and_redis_it_reads(resolved: Resolved) -> None:
    jobs = one_shot_jobs(resolved)
    assert jobs == {"migrate"}
    for name, service in resolved.services.items():
        if name in jobs:
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        # Waiting means a condition: the short form (service_started) would start it next to a booting database.
        assert set(dependencies(service).values()) <= WAITS, f"{name}: {dependencies(service)}"
    assert resolved.services["db"]["container_name"] == "apgms-db"

    readers = {}
    for name in ours(resolved):
        host = database_host(resolved, name)
        if host is not None:
            readers[name] = host
            assert host in resolved.services, f"{name}'s DATABASE_URL names {host}, no compose service"
            assert waits_for(resolved, name, host), f"{name} does not wait for a healthy {host}"
        cache = redis_host(resolved, name)
        if cache is not None:
            assert cache in resolved.services and waits_for(resolved, name, cache), f"{name} and {cache}"
    # Everything but the stateless proxy reads the database, the migrate job first.
    assert set(readers) == set(ours(resolved)) - {"proxy"} and set(readers.values()) == {"db"}
    for name in ("auth", "core", "compliance", "regulator"):
        assert dependencies(resolved.services[name])["migrate"] == "service_completed_successfully"
        assert waits_for(resolved, "proxy", name), f"the proxy starts before {name} is healthy"


@pytest.mark.usefixtures("no_dotenv")
@pytest.mark.parametrize("env", ["dev", "production"])
def test_each_service_gets_every_variable_its_settings_loader_requires(resolved: Resolved, env: str) -> None:
    commands = ours(resolved)
    assert set(commands.values()) == {*LOADERS, MIGRATE_COMMAND}, "a process of our image with no loader here"
    assert {environment(resolved.services[name])["APGMS_ENV"] for name in commands} == {"dev"}, "compose runs dev"
    for name in commands:
        try:
            settings = load(resolved, name, env)
        except ConfigError as error:
            pytest.fail(f"{name} does not start with APGMS_ENV={env}: {error}")
        if isinstance(settings, Settings):
            assert settings.env == env
            assert settings.port == int(environment(resolved.services[name])["PORT"])
    proxy = load(resolved, "proxy", env)
    assert isinstance(proxy, Settings)
    assert getattr(proxy, "metrics_bearer_token", None) is not None, "Prometheus could not scrape the proxy"


@pytest.mark.usefixtures("no_dotenv")
def test_what_production_alone_requires_is_given_and_named_in_the_readme(resolved: Resolved) -> None:
    text = README.read_text()
    section = text[text.index(README_COMPOSE_SECTION) :]
    section = section[: section.index("\n## ")]
    production_only: dict[str, set[str]] = {}
    for name in ours(resolved):
        for variable in environment(resolved.services[name]):
            if variable == "APGMS_ENV":
                continue
            try:
                load(resolved, name, "production", drop=variable)
            except ConfigError:
                try:
                    load(resolved, name, "dev", drop=variable)
                except ConfigError:
                    continue  # required everywhere: the dev run of the stack proves it is given
                production_only.setdefault(variable, set()).add(name)
    # Not vacuous: service client secrets, the KEK and the proxy's public hosts are production's alone.
    assert {"SERVICE_CLIENT_SECRET", "APGMS_KEK", "PUBLIC_HOSTS"} <= set(production_only), production_only
    missing = {variable: names for variable, names in production_only.items() if f"`{variable}`" not in section}
    assert not missing, f"required in production only, not named in the README's compose section: {missing}"


@pytest.mark.usefixtures("no_dotenv")
def test_services_reach_each_other_by_compose_name_and_port(resolved: Resolved) -> None:
    ports = {
        name: int(environment(service)["PORT"])
        for name, service in resolved.services.items()
        if "PORT" in environment(service)
    }
    urls: list[tuple[str, str]] = []
    for name in ours(resolved):
        settings = load(resolved, name, "dev")
        if not isinstance(settings, Settings):
            continue
        for field, value in vars(settings).items():
            if field.endswith("_url") and isinstance(value, str):
                urls.append((f"{name}.{field}", value))
            if field == "upstream_urls":
                urls += [(f"{name}.upstream {service}", url) for service, found in value.items() for url in found]
    assert len(urls) >= 11, urls  # AUTH_URL x4, compliance's 2, the regulator's 2, the proxy's 4 upstreams
    for where, url in urls:
        parts = urlsplit(url)
        assert parts.hostname in ports and parts.port == ports[parts.hostname], f"{where} = {url}"


def test_only_the_proxy_prometheus_and_grafana_are_published_on_loopback(resolved: Resolved) -> None:
    found = {name: published(service) for name, service in resolved.services.items() if published(service)}
    assert found == {
        "proxy": [("127.0.0.1", "3000", "3000")],
        "prometheus": [("127.0.0.1", "9090", "9090")],
        "grafana": [("127.0.0.1", "3030", "3000")],
    }


def test_prometheus_scrapes_the_proxy_with_the_proxy_s_own_credential(resolved: Resolved) -> None:
    prometheus = resolved.services["prometheus"]
    sources = [secret["source"] if isinstance(secret, dict) else secret for secret in prometheus["secrets"]]
    assert sources == ["metrics_bearer_token"]
    secret_file = Path(resolved.secrets["metrics_bearer_token"]["file"])
    assert secret_file == resolved.project / COMPOSE_SECRET_FILES["APGMS_COMPOSE_METRICS_BEARER_TOKEN"]
    token = environment(resolved.services["proxy"])["METRICS_BEARER_TOKEN"]
    assert secret_file.read_text() == token == resolved.dotenv["APGMS_COMPOSE_METRICS_BEARER_TOKEN"]

    mounts = {target: source for source, target, *_ in (volume.split(":") for volume in prometheus["volumes"])}
    config_dir = ROOT / Path(mounts["/etc/prometheus"]).relative_to(resolved.project)
    config = yaml.safe_load((config_dir / "prometheus.yml").read_text())
    flags = dict(flag.partition("=")[::2] for flag in prometheus["command"])
    assert flags["--config.file"] == "/etc/prometheus/prometheus.yml"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["api-gateway"]["authorization"]["credentials_file"] == "/run/secrets/metrics_bearer_token"
    # Every target is a compose service on the port it listens on.
    ports = {name: environment(service).get("PORT") for name, service in resolved.services.items()}
    targets = [target for job in jobs.values() for group in job["static_configs"] for target in group["targets"]]
    assert sorted(targets) == sorted(f"{name}:{ports[name]}" for name in ours(resolved) if name != "migrate")

    grafana = resolved.services["grafana"]
    grafana_mounts = {target: source for source, target, *_ in (volume.split(":") for volume in grafana["volumes"])}
    for target in ("/etc/grafana/provisioning", "/var/lib/grafana/dashboards"):
        assert (ROOT / Path(grafana_mounts[target]).relative_to(resolved.project)).is_dir(), target
    admin_password = environment(grafana)["GF_SECURITY_ADMIN_PASSWORD"]
    assert admin_password == resolved.dotenv["APGMS_COMPOSE_GRAFANA_ADMIN_PASSWORD"] and len(admin_password) >= 32
    datasource = ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml"
    url = urlsplit(yaml.safe_load(datasource.read_text())["datasources"][0]["url"])
    assert url.hostname == "prometheus" and flags["--web.listen-address"].endswith(f":{url.port}")


def test_compose_refuses_to_start_without_the_generated_values(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("")
    result = run_config(tmp_path, tmp_path / ".env")
    assert result.returncode != 0
    assert "apgms dev-secrets" in result.stderr
