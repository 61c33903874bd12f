"""Upstream instances: round-robin over the healthy ones, active and passive health, the `up` gauge."""

from __future__ import annotations

import uuid

import aiohttp
from aiohttp import web
from prometheus_client import REGISTRY

from proxy.upstreams import HealthPolicy, Instance, Upstream, build_upstreams, check_instance

POLICY = HealthPolicy(unhealthy_threshold=3, healthy_threshold=2, eject_after_failures=2)


def unique_service() -> str:
    """Gauge labels are process-wide; every test uses its own service name so values never leak between tests."""
    return f"svc-{uuid.uuid4().hex[:8]}"


def gauge(instance: Instance) -> float | None:
    return REGISTRY.get_sample_value(
        "apgms_proxy_upstream_up", {"service": instance.service, "instance": instance.label}
    )


def three(service: str | None = None) -> Upstream:
    service = service or unique_service()
    return build_upstreams({service: ["http://a.test:1", "http://b.test:2/", "http://c.test:3"]})[service]


def test_build_upstreams_strips_slashes_labels_instances_and_marks_them_up() -> None:
    upstream = three()
    assert [i.url for i in upstream.instances] == ["http://a.test:1", "http://b.test:2", "http://c.test:3"]
    assert [i.label for i in upstream.instances] == ["a.test:1", "b.test:2", "c.test:3"]
    assert all(i.healthy and i.ready is None for i in upstream.instances)
    assert [gauge(i) for i in upstream.instances] == [1.0, 1.0, 1.0]


def test_pick_is_round_robin_over_healthy_instances() -> None:
    upstream = three()
    picked = [upstream.pick() for _ in range(6)]
    labels = [i.label for i in picked if i is not None]
    assert labels == ["a.test:1", "b.test:2", "c.test:3"] * 2


def test_pick_skips_ejected_instances_and_spreads_over_the_rest() -> None:
    upstream = three()
    a, b, c = upstream.instances
    for _ in range(POLICY.unhealthy_threshold):
        b.record_check(False, POLICY)
    picked = [upstream.pick() for _ in range(6)]
    assert b not in picked
    assert picked.count(a) == 3 and picked.count(c) == 3


def test_pick_skips_excluded_instances_and_returns_none_when_nothing_is_left() -> None:
    upstream = three()
    a, b, c = upstream.instances
    for _ in range(5):
        assert upstream.pick(exclude=[a, c]) is b
    assert upstream.pick(exclude=[a, b, c]) is None
    second = upstream.pick(exclude=[a])
    assert second in (b, c)


def test_pick_returns_none_when_every_instance_is_ejected() -> None:
    upstream = three()
    for instance in upstream.instances:
        for _ in range(POLICY.eject_after_failures):
            instance.record_connect_failure(POLICY)
    assert upstream.pick() is None


def test_active_checks_eject_only_at_the_threshold() -> None:
    instance = three().instances[0]
    for _ in range(POLICY.unhealthy_threshold - 1):
        instance.record_check(False, POLICY)
        assert instance.healthy
        assert gauge(instance) == 1.0
    instance.record_check(False, POLICY)
    assert not instance.healthy
    assert instance.ready is False
    assert gauge(instance) == 0.0


def test_a_pass_between_failures_resets_the_failure_count() -> None:
    instance = three().instances[0]
    for _ in range(4):
        instance.record_check(False, POLICY)
        instance.record_check(False, POLICY)
        instance.record_check(True, POLICY)
    assert instance.healthy


def test_connection_failures_eject_at_the_threshold() -> None:
    instance = three().instances[1]
    instance.record_connect_failure(POLICY)
    assert instance.healthy
    instance.record_connect_failure(POLICY)
    assert not instance.healthy
    assert gauge(instance) == 0.0


def test_a_success_resets_the_connection_failure_count() -> None:
    instance = three().instances[1]
    for _ in range(5):
        instance.record_connect_failure(POLICY)
        instance.record_success()
    assert instance.healthy


def test_passive_evidence_never_readmits() -> None:
    instance = three().instances[2]
    for _ in range(POLICY.eject_after_failures):
        instance.record_connect_failure(POLICY)
    assert not instance.healthy
    for _ in range(10):
        instance.record_success()
    assert not instance.healthy
    assert gauge(instance) == 0.0


def test_readmission_needs_consecutive_passing_checks() -> None:
    instance = three().instances[0]
    for _ in range(POLICY.unhealthy_threshold):
        instance.record_check(False, POLICY)
    instance.record_check(True, POLICY)
    assert not instance.healthy
    instance.record_check(False, POLICY)
    instance.record_check(True, POLICY)
    assert not instance.healthy
    assert gauge(instance) == 0.0
    instance.record_check(True, POLICY)
    assert instance.healthy
    assert gauge(instance) == 1.0


def test_passes_before_a_passive_ejection_do_not_count_towards_readmission() -> None:
    instance = three().instances[0]
    for _ in range(5):
        instance.record_check(True, POLICY)
    for _ in range(POLICY.eject_after_failures):
        instance.record_connect_failure(POLICY)
    assert not instance.healthy
    instance.record_check(True, POLICY)
    assert not instance.healthy
    instance.record_check(True, POLICY)
    assert instance.healthy
    # Re-admitted with a clean slate: one more connection failure is not enough to eject again.
    instance.record_connect_failure(POLICY)
    assert instance.healthy


def test_upstream_ready_needs_a_passing_check_on_a_healthy_instance() -> None:
    upstream = three()
    a, b, _ = upstream.instances
    assert not upstream.ready  # no active check yet
    a.record_check(True, POLICY)
    assert upstream.ready
    a.record_check(False, POLICY)
    assert not upstream.ready  # last check failed, even though still in rotation
    b.record_check(True, POLICY)
    assert upstream.ready
    for _ in range(POLICY.eject_after_failures):
        b.record_connect_failure(POLICY)
    assert not upstream.ready  # ready per its check but ejected


async def test_check_instance_passes_only_on_ready_200() -> None:
    status = {"code": 200}

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"ready": status["code"] == 200}, status=status["code"])

    app = web.Application()
    app.router.add_get("/ready", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    service = unique_service()
    try:
        async with aiohttp.ClientSession() as session:
            up = Instance(service, f"http://127.0.0.1:{port}")
            policy = HealthPolicy(timeout_s=1.0)
            assert await check_instance(session, up, policy) is True
            status["code"] = 503
            assert await check_instance(session, up, policy) is False
            await runner.cleanup()
            assert await check_instance(session, up, policy) is False
    finally:
        await runner.cleanup()
