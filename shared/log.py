"""JSON-lines logging: one object per line with `time`, `level`, `service`, `event`, `request_id`.

The request ID and traceparent come from the contextvars the request context middleware sets, so every line
written while serving a request carries them. Every event passes through
`shared.redact` before it is rendered.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

from shared.context import current_request_id, current_traceparent
from shared.redact import redact_event

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
HEAD_FIELDS = ("time", "level", "service", "event", "request_id")


@functools.lru_cache(maxsize=2)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def utc_timestamp(now: float) -> str:
    """`2026-11-27T09:26:02.884Z`: ISO 8601 in UTC with milliseconds (the date part is formatted once a second),
    rounded to the microsecond first, as `datetime.fromtimestamp` does."""
    fraction, whole = math.modf(now)
    second, micros = int(whole), round(fraction * 1_000_000)
    if micros == 1_000_000:
        second, micros = second + 1, 0
    return f"{_utc_second(second)}.{micros // 1000:03d}Z"


def _finish(service: str) -> Any:
    """The last processor: request context, time and service added, every field redacted, the fixed fields
    first, rendered as one JSON line. One function rather than a processor each: the access line is written
    for every request, and each structlog processor is a call on that path."""

    def finish(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
        line = {
            "time": utc_timestamp(time.time()),
            "level": event.pop("level", None),
            "service": service,
            "event": event.pop("event", None),
            "request_id": event.pop("request_id") if "request_id" in event else current_request_id.get(),
        }
        event.pop("time", None)
        event.pop("service", None)
        line.update(event)
        if "traceparent" not in line and (traceparent := current_traceparent.get()) is not None:
            line["traceparent"] = traceparent
        return orjson.dumps(redact_event(line), default=str).decode()

    return finish


def configure_logging(service: str, level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog and the stdlib `logging` tree to JSON lines on `stream` (stdout by default)."""
    out = stream or sys.stdout
    numeric_level = _LEVELS[level]
    pre_chain: list[Any] = [structlog.processors.add_log_level, structlog.processors.format_exc_info]
    processors = [*pre_chain, _finish(service)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=pre_chain,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _finish(service)],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric_level)
    # hypercorn's own access log duplicates ours, and asyncpg/aiohttp chatter is not ours to ship.
    logging.getLogger("hypercorn.access").disabled = True
    for noisy in ("asyncio", "hypercorn.error"):
        logging.getLogger(noisy).setLevel(max(numeric_level, logging.WARNING))
    global _direct
    _direct = DirectMethods(processors, out, numeric_level)


def _drop(event: str, **fields: Any) -> None:
    pass


class DirectMethods:
    """`debug`, `info`, `warning` and `error` of our own configuration, as plain functions: the processors above
    applied in order and the line written, without structlog's per-call machinery (bound-logger lookup, context
    copy, processor loop, logger method lookup). The access line is written for every request; this is half its
    cost. Anything else (`exception`, a configuration of someone else's such as `capture_logs`) goes through
    structlog as usual."""

    def __init__(self, processors: list[Any], out: TextIO, level: int) -> None:
        self.processors = processors
        self.methods = {
            name: self._emitter(name, out) if number >= level else _drop for name, number in _LEVELS.items()
        }

    def _emitter(self, level: str, out: TextIO) -> Any:
        add_level, format_exc_info, finish = self.processors

        def emit(event: str, **fields: Any) -> None:
            fields["event"] = event
            fields = add_level(None, level, fields)
            if "exc_info" in fields:
                fields = format_exc_info(None, level, fields)
            out.write(finish(None, level, fields) + "\n")
            out.flush()

        return emit


_direct: DirectMethods | None = None


class Logger:
    """A structlog logger that is built once per configuration.

    structlog's own lazy proxy builds a new bound logger on every call, about 13 us: a fifth of the proxy's
    per-request budget for one access line. This one builds it again only when the configuration changed
    (`configure_logging`, or `structlog.testing.capture_logs` in tests).
    """

    def __init__(self, name: str | None) -> None:
        self._name = name
        # (configuration it was built for, bound logger): replaced as one, so a reconfiguration racing another
        # thread's call can never pair a logger with the wrong configuration.
        self._built: tuple[tuple[Any, ...], Any] = ((None, None, None), None)

    def __getattr__(self, method: str) -> Any:
        config = structlog.get_config()
        direct = _direct
        if direct is not None and config["processors"] is direct.processors and method in direct.methods:
            return direct.methods[method]
        built_for, bound = self._built
        processors, wrapper_class, logger_factory = built_for
        if (
            config["processors"] is not processors
            or config["wrapper_class"] is not wrapper_class
            or config["logger_factory"] is not logger_factory
        ):
            bound = structlog.get_logger(self._name).bind()
            self._built = ((config["processors"], config["wrapper_class"], config["logger_factory"]), bound)
        return getattr(bound, method)


def get_logger(name: str | None = None) -> Any:
    """A logger whose keyword arguments become JSON fields (`log.info("event", field=value)`)."""
    return Logger(name)
