"""The pure parts of `apgms dev`: restart backoff, the process table and each process's environment."""

from __future__ import annotations

import base64
import signal
import socket
import sys
from pathlib import Path

import pytest

from apgms.devstack import (
    BACKOFF_RESET_AFTER_S,
    DEFAULT_DEV_DIR,
    DEV_PROCESSES,
    KEK_SERVICES,
    ProcessSpec,
    child_env,
    describe_exit,
    dev_dir,
    dev_service_client_secrets,
    next_failure_count,
    port_in_use,
    restart_delay,
    with_dev_service_clients,
)
from services.auth.config import load_auth_settings
from shared.config import PROXY_PORT, SERVICE_PORTS, Secret, load_settings, new_master_key
from shared.kek import KEK_BYTES, LocalKekProvider, kek_provider_from_env, new_kek


def delays_for(run_durations_s: list[float]) -> list[float]:
    """The restart delays a supervisor waits after processes that crashed after these run times."""
    failures, delays = 0, []
    for ran_for_s in run_durations_s:
        failures = next_failure_count(failures, ran_for_s)
        delays.append(restart_delay(failures))
    return delays


def test_backoff_doubles_from_half_a_second_and_caps_at_ten() -> None:
    assert [restart_delay(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_backoff_resets_after_a_process_ran_long_enough() -> None:
    assert delays_for([0.1, 0.1, 0.1, BACKOFF_RESET_AFTER_S, 0.1, 5.0]) == [0.5, 1.0, 2.0, 0.5, 1.0, 2.0]
    assert delays_for([BACKOFF_RESET_AFTER_S - 0.01]) == [0.5]
    assert delays_for([0.1] * 3 + [BACKOFF_RESET_AFTER_S - 0.01]) == [0.5, 1.0, 2.0, 4.0]


def test_process_table_runs_every_service_on_its_default_port_then_the_proxy() -> None:
    assert {spec.name: spec.port for spec in DEV_PROCESSES} == {**SERVICE_PORTS, "api-gateway": PROXY_PORT}
    assert (DEV_PROCESSES[-1].name, DEV_PROCESSES[-1].module) == ("api-gateway", "proxy")
    auth = next(spec for spec in DEV_PROCESSES if spec.name == "auth")
    assert auth.argv("/venv/python") == ["/venv/python", "-m", "services.auth"]
    assert auth.argv() == [sys.executable, "-m", "services.auth"]
    assert auth.url == "http://127.0.0.1:3001"
    assert all(spec.module == f"services.{spec.name}" for spec in DEV_PROCESSES[:-1])


def test_child_env_sets_the_stack_settings_over_the_callers_environment() -> None:
    base = {"PATH": "/usr/bin", "APGMS_ENV": "production", "PORT": "9", "REDIS_URL": "redis://elsewhere"}
    spec = ProcessSpec("core", "services.core", 3002)

    env = child_env(base, spec, "postgresql://postgres@127.0.0.1:5555/postgres", "redis://127.0.0.1:6666/0")

    assert env == {
        "PATH": "/usr/bin",
        "APGMS_ENV": "dev",
        "HOST": "127.0.0.1",
        "PORT": "3002",
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:5555/postgres",
        "REDIS_URL": "redis://127.0.0.1:6666/0",
        "PYTHONUNBUFFERED": "1",
        "TRUSTED_PROXY_HOPS": "1",
    }
    assert base["APGMS_ENV"] == "production", "the caller's mapping is left alone"


def test_only_the_services_trust_the_proxys_forwarded_for() -> None:
    proxy = next(spec for spec in DEV_PROCESSES if spec.module == "proxy")
    assert "TRUSTED_PROXY_HOPS" not in child_env({}, proxy, "postgresql://h/db", None)


def test_child_env_without_redis_drops_any_inherited_redis_url() -> None:
    env = child_env({"REDIS_URL": "redis://stale"}, DEV_PROCESSES[0], "postgresql://h/db", None)
    assert "REDIS_URL" not in env


def test_only_the_services_holding_pii_are_given_the_kek() -> None:
    assert KEK_SERVICES == ("core",)
    for kek in ({"APGMS_KEK_FILE": "/checkout/.devdb/pii.kek"}, {"APGMS_KEK": new_kek()}):
        envs = {spec.name: child_env(kek, spec, "postgresql://h/db", None) for spec in DEV_PROCESSES}
        given = {name for name, env in envs.items() if env.items() >= kek.items()}
        assert given == {"core"}
        assert not any("APGMS_KEK" in env or "APGMS_KEK_FILE" in env for name, env in envs.items() if name not in given)


def test_a_new_kek_is_random_and_one_even_production_accepts() -> None:
    first, second = new_kek(), new_kek()
    assert first != second
    provider = kek_provider_from_env({"APGMS_ENV": "production", "APGMS_KEK": first})
    assert isinstance(provider, LocalKekProvider) and len(provider.kek_ids) == 1
    assert provider.current_kek_id != kek_provider_from_env({"APGMS_KEK": second}).current_kek_id
    assert len(base64.b64decode(first, validate=True)) == KEK_BYTES


def test_dev_dir_is_the_project_folder_unless_overridden(tmp_path: Path) -> None:
    assert dev_dir({}) == DEFAULT_DEV_DIR
    assert DEFAULT_DEV_DIR.name == ".devdb"
    assert dev_dir({"APGMS_DEV_DIR": str(tmp_path)}) == tmp_path


def test_exit_descriptions_name_the_signal() -> None:
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"


def test_port_in_use_sees_a_listener() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)


def test_port_in_use_ignores_time_wait_leftovers_of_a_stopped_server() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the server side closes first, so it is the side left in TIME_WAIT
            client.recv(1)
    assert not port_in_use(port)


def test_service_client_secrets_are_the_checkouts_own_and_stable() -> None:
    key = new_master_key()
    secrets = dev_service_client_secrets(key)
    assert set(secrets) == {
        "SERVICE_CLIENT_SECRET_CORE",
        "SERVICE_CLIENT_SECRET_COMPLIANCE",
        "SERVICE_CLIENT_SECRET_REGULATOR",
    }
    assert len(set(secrets.values())) == 3
    assert dev_service_client_secrets(key) == secrets
    assert set(dev_service_client_secrets(new_master_key()).values()).isdisjoint(secrets.values())
    given = {"APGMS_MASTER_KEY": key, "SERVICE_CLIENT_SECRET_CORE": "x" * 43}
    assert with_dev_service_clients(given)["SERVICE_CLIENT_SECRET_CORE"] == "x" * 43, "a given secret is kept"


def test_auth_and_each_calling_service_get_the_same_secret_and_the_proxy_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no developer's .env
    base = with_dev_service_clients({"APGMS_MASTER_KEY": new_master_key()})
    envs = {spec.name: child_env(base, spec, "postgresql://h/db", None) for spec in DEV_PROCESSES}
    auth = load_auth_settings({**envs["auth"], "DATABASE_URL": "postgresql://h/db"})
    for name in ("core", "compliance", "regulator"):
        settings = load_settings(name, envs[name], service_client=True)
        assert settings.service_client_secret is not None
        assert auth.service_clients[f"service-{name}"] == settings.service_client_secret
    assert "SERVICE_CLIENT_SECRET" not in envs["auth"] and "SERVICE_CLIENT_SECRET" not in envs["api-gateway"]
    assert all(isinstance(secret, Secret) for secret in auth.service_clients.values())
