"""JSON-lines logging: one object per line with `time`, `level`, `service`, `event`, `request_id`.

Request-scoped fields (request ID, traceparent, regulator traffic tag) come from contextvars bound by the request
context middleware, so every line written while serving a request carries them. Every event passes through
`shared.redact` before it is rendered.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
import structlog

from shared.redact import redact_event

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _add_time(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["time"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return event


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return redact_event(event)


def _ordered(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    head = {key: event.pop(key) for key in ("time", "level", "service", "event", "request_id") if key in event}
    head.setdefault("request_id", None)
    return {**head, **event}


def _render(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
    return orjson.dumps(event, default=str).decode()


def configure_logging(service: str, level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog and the stdlib `logging` tree to JSON lines on `stream` (stdout by default)."""
    out = stream or sys.stdout
    numeric_level = _LEVELS[level]
    shared_processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_time,
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[
            *shared_processors,
            lambda _, __, event: {"service": service, **event},
            _redact,
            _ordered,
            _render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared_processors, lambda _, __, event: {"service": service, **event}],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _redact,
                _ordered,
                _render,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric_level)
    # hypercorn's own access log duplicates ours, and asyncpg/aiohttp chatter is not ours to ship.
    logging.getLogger("hypercorn.access").disabled = True
    for noisy in ("asyncio", "hypercorn.error"):
        logging.getLogger(noisy).setLevel(max(numeric_level, logging.WARNING))


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; fields passed as keyword arguments become JSON fields."""
    return structlog.get_logger(name)
