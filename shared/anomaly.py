"""Detection of repeated 401/403 answers to one client address or one principal (credential stuffing, token probing).

Counts live in the rate limiter's backend (Redis when configured, so replicas add up), in fixed windows: a count
reaches the threshold exactly once per window, which is when the `anomaly.auth` security event is raised.
"""

from __future__ import annotations

from redis.exceptions import RedisError

from shared.context import request_state, watch_response
from shared.log import get_logger
from shared.metrics import record_security_event
from shared.ratelimit import Backend, key_digest, to_window_ms
from shared.types import ASGIApp, Receive, Scope, Send

__all__ = ["ANOMALY_THRESHOLD", "ANOMALY_WINDOW_S", "WATCHED_STATUSES", "AnomalyDetector", "AnomalyMiddleware"]

ANOMALY_THRESHOLD = 10
ANOMALY_WINDOW_S = 60.0
WATCHED_STATUSES = frozenset({401, 403})

log = get_logger(__name__)


class AnomalyDetector:
    """Raises `anomaly.auth` when one address or principal collects `threshold` 401/403s within `window_s`."""

    def __init__(
        self, backend: Backend, *, threshold: int = ANOMALY_THRESHOLD, window_s: float = ANOMALY_WINDOW_S
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.backend = backend
        self.threshold = threshold
        self.window_s = window_s
        self._window_ms = to_window_ms(window_s)

    async def observe(self, status: int, *, address: str | None, principal: str | None) -> bool:
        """Count one response; True when it brought a key to the threshold (and the one event was raised)."""
        if status not in WATCHED_STATUSES:
            return False
        tripped = []
        for kind, value in (("address", address), ("principal", principal)):
            if value is None:
                continue
            counted = await self.backend.increment(f"anomaly:{kind}:{key_digest(value)}", self._window_ms)
            if counted.count == self.threshold:
                tripped.append(kind)
        if not tripped:
            return False
        # One line even when the address and the principal trip together: it is one incident, not two.
        record_security_event(
            "anomaly.auth",
            address=address,
            principal=principal,
            by=",".join(tripped),
            threshold=self.threshold,
            window_s=self.window_s,
        )
        return True


class AnomalyMiddleware:
    """Feeds every HTTP response status to the detector once the response has been sent.

    It must sit outside the middleware that sets the principal and inside `RequestContextMiddleware`'s scope (it
    reads both from the request's `RequestState` after the response). A failing backend never fails the request.
    """

    def __init__(self, app: ASGIApp, detector: AnomalyDetector) -> None:
        self.app = app
        self.detector = detector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange, send = watch_response(scope, send)
        await self.app(scope, receive, send)
        status = exchange.status
        if status not in WATCHED_STATUSES:
            return
        state = request_state(scope)
        address = state.context.client if state.context is not None else None
        subject = state.principal.subject if state.principal is not None else None
        try:
            await self.detector.observe(status, address=address, principal=subject)
        except (RedisError, OSError) as exc:
            log.warning("anomaly_observe_failed", error=type(exc).__name__, detail=str(exc))
