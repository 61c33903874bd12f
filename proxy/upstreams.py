"""Upstream instances, their health, and round-robin selection over the healthy ones.

An instance is taken out of rotation by active checks (`/ready` failing `unhealthy_threshold` times in a row,
which includes a draining service answering 503) or passively (`eject_after` consecutive connection failures
of real traffic). Only active checks put it back (`healthy_threshold` passes in a row): passive evidence can
say "down", never "up" (the Kong and APISIX lesson).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import Gauge

from shared.log import get_logger

HEALTH_INTERVAL_S = 0.5
# Above the services' own readiness timeout (1 s), so a slow-but-passing check is not counted as a failure.
HEALTH_TIMEOUT_S = 2.0
UNHEALTHY_THRESHOLD = 2
HEALTHY_THRESHOLD = 2
EJECT_AFTER_FAILURES = 2

UPSTREAM_UP = Gauge("apgms_proxy_upstream_up", "1 when the instance is in rotation, else 0.", ["service", "instance"])

log = get_logger(__name__)


@dataclass(frozen=True)
class HealthPolicy:
    interval_s: float = HEALTH_INTERVAL_S
    timeout_s: float = HEALTH_TIMEOUT_S
    unhealthy_threshold: int = UNHEALTHY_THRESHOLD
    healthy_threshold: int = HEALTHY_THRESHOLD
    eject_after_failures: int = EJECT_AFTER_FAILURES


@dataclass
class Instance:
    service: str
    url: str
    healthy: bool = True
    # None until the first active check: traffic may go there, but the proxy is not `/ready` on it yet.
    ready: bool | None = None
    check_failures: int = 0
    check_passes: int = 0
    connect_failures: int = 0

    @property
    def label(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port}"

    def _set_healthy(self, healthy: bool, reason: str) -> None:
        if healthy != self.healthy:
            log.warning(
                "upstream_admitted" if healthy else "upstream_ejected",
                upstream=self.service,
                instance=self.label,
                reason=reason,
            )
        self.healthy = healthy
        UPSTREAM_UP.labels(service=self.service, instance=self.label).set(1 if healthy else 0)

    def record_check(self, passed: bool, policy: HealthPolicy) -> None:
        self.ready = passed
        if passed:
            self.check_passes += 1
            self.check_failures = 0
            if not self.healthy and self.check_passes >= policy.healthy_threshold:
                self.connect_failures = 0
                self._set_healthy(True, "active check passed")
        else:
            self.check_failures += 1
            self.check_passes = 0
            if self.healthy and self.check_failures >= policy.unhealthy_threshold:
                self._set_healthy(False, "active check failed")

    def record_connect_failure(self, policy: HealthPolicy) -> None:
        self.connect_failures += 1
        self.check_passes = 0
        if self.healthy and self.connect_failures >= policy.eject_after_failures:
            self._set_healthy(False, "connection failures")

    def record_success(self) -> None:
        self.connect_failures = 0


@dataclass
class Upstream:
    """All instances of one service."""

    service: str
    instances: list[Instance]
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def pick(self, exclude: Iterable[Instance] = ()) -> Instance | None:
        """The next healthy instance in round-robin order, skipping `exclude`; None when there is none."""
        skip = {id(instance) for instance in exclude}
        candidates = [i for i in self.instances if i.healthy and id(i) not in skip]
        if not candidates:
            return None
        return candidates[next(self._turn) % len(candidates)]

    @property
    def ready(self) -> bool:
        return any(instance.ready and instance.healthy for instance in self.instances)


def build_upstreams(urls: Mapping[str, list[str]]) -> dict[str, Upstream]:
    upstreams = {
        service: Upstream(service, [Instance(service, url.rstrip("/")) for url in service_urls])
        for service, service_urls in urls.items()
    }
    for upstream in upstreams.values():
        for instance in upstream.instances:
            UPSTREAM_UP.labels(service=instance.service, instance=instance.label).set(1)
    return upstreams


async def check_instance(session: aiohttp.ClientSession, instance: Instance, policy: HealthPolicy) -> bool:
    try:
        async with session.get(
            f"{instance.url}/ready", timeout=aiohttp.ClientTimeout(total=policy.timeout_s)
        ) as response:
            await response.read()
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def run_health_checks(
    session: aiohttp.ClientSession, upstreams: Mapping[str, Upstream], policy: HealthPolicy
) -> None:
    """Check every instance each interval, forever (cancelled at shutdown)."""
    instances = [instance for upstream in upstreams.values() for instance in upstream.instances]
    while True:
        results = await asyncio.gather(*(check_instance(session, i, policy) for i in instances))
        for instance, passed in zip(instances, results, strict=True):
            instance.record_check(passed, policy)
        await asyncio.sleep(policy.interval_s)
