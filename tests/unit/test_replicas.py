"""The pure parts of the multi-replica launcher (apgms/replicas.py): the balancer's choice of replica for a new
connection, its readiness rule, reading a proxy's rotation from /metrics, and a replica's environment."""

from __future__ import annotations

from apgms.devstack import ProcessSpec
from apgms.replicas import Backend, Readiness, next_backend, proxy_rotation, replica_env


def test_new_connections_go_round_robin_over_the_ready_replicas_only() -> None:
    ready = [True, False, True]
    assert [next_backend(ready, turn) for turn in range(4)] == [0, 2, 0, 2]
    assert [next_backend([True, True], turn) for turn in range(3)] == [0, 1, 0]


def test_no_ready_replica_means_no_backend() -> None:
    assert next_backend([False, False], 7) is None
    assert next_backend([], 0) is None


def test_readiness_is_lost_after_two_failures_in_a_row_and_regained_after_one_pass() -> None:
    readiness = Readiness(failures_out=2)
    assert not readiness.ready  # a new replica is out until its first pass
    readiness.record(True)
    assert readiness.ready
    readiness.record(False)
    assert readiness.ready  # one failure is not enough
    readiness.record(True)
    readiness.record(False)
    assert readiness.ready  # the pass between reset the count
    readiness.record(False)
    assert not readiness.ready
    readiness.record(True)
    assert readiness.ready


def test_a_withdrawn_replica_takes_no_new_connection_whatever_its_probe_says() -> None:
    backend = Backend(4001)
    backend.readiness.record(True)
    assert backend.in_service
    backend.withdrawn = True  # its Pod is being deleted: the endpoint leaves the Service before the probe fails
    assert not backend.in_service
    assert next_backend([b.in_service for b in (backend, Backend(4002))], 0) is None


METRICS = """\
# HELP apgms_proxy_upstream_up 1 when the instance is in rotation, else 0.
# TYPE apgms_proxy_upstream_up gauge
apgms_proxy_upstream_up{instance="127.0.0.1:4001",service="core"} 1.0
apgms_proxy_upstream_up{instance="127.0.0.1:4002",service="core"} 0.0
apgms_proxy_upstream_up{instance="127.0.0.1:4003",service="auth"} 1.0
"""


def test_a_proxys_rotation_is_read_per_service_and_instance() -> None:
    assert proxy_rotation(METRICS, "core", "127.0.0.1:4001") is True
    assert proxy_rotation(METRICS, "core", "127.0.0.1:4002") is False
    assert proxy_rotation(METRICS, "auth", "127.0.0.1:4001") is None  # not that service's instance
    assert proxy_rotation(METRICS, "core", "127.0.0.1:4009") is None


def test_a_replicas_environment_is_the_callers_with_the_stacks_settings_on_top() -> None:
    base = {
        "APGMS_MASTER_KEY": "k",
        "APGMS_KEK": "kek",
        "SERVICE_CLIENT_SECRET_CORE": "core-secret",
        "PYTHONPATH": "/elsewhere",
    }
    spec = ProcessSpec("core", "services.core", 4001)
    env = replica_env(base, spec, "postgresql://db", "redis://r", {"AUTH_URL": "http://127.0.0.1:5000"})
    assert env["APGMS_ENV"] == "test"
    assert env["PORT"] == "4001"
    assert env["DATABASE_URL"] == "postgresql://db"
    assert env["REDIS_URL"] == "redis://r"
    assert env["SERVICE_CLIENT_SECRET"] == "core-secret"
    assert env["AUTH_URL"] == "http://127.0.0.1:5000"
    assert env["PYTHONPATH"].endswith(":/elsewhere")
    assert env["APGMS_KEK"] == "kek"
    regulator = replica_env(base, ProcessSpec("regulator", "services.regulator", 4002), "postgresql://db", None, {})
    assert "APGMS_KEK" not in regulator  # only the services holding PII get the KEK
    assert "REDIS_URL" not in regulator
    assert replica_env({**base, "APGMS_ENV": "dev"}, spec, "postgresql://db", None, {})["APGMS_ENV"] == "dev"
