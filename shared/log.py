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
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, TextIO

import orjson
import structlog
import structlog.testing

from shared.context import current_request_id, current_traceparent
from shared.redact import redact_fields, redact_text, redact_value

__all__ = [
    "HEAD_FIELDS",
    "DirectMethods",
    "Logger",
    "capture_logs",
    "configure_logging",
    "get_logger",
    "render_line",
    "reset_logging",
    "utc_timestamp",
    "write_access_line",
]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
HEAD_FIELDS = ("time", "level", "service", "event", "request_id")


@functools.lru_cache(maxsize=2)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


_MILLISECONDS = tuple(f".{millisecond:03d}Z" for millisecond in range(1000))


def utc_timestamp(now: float) -> str:
    """`2026-11-27T09:26:02.884Z`: ISO 8601 in UTC with milliseconds (the date part is formatted once a second),
    rounded to the microsecond first, as `datetime.fromtimestamp` does."""
    fraction, whole = math.modf(now)
    second, micros = int(whole), round(fraction * 1_000_000)
    if micros == 1_000_000:
        second, micros = second + 1, 0
    return _utc_second(second) + _MILLISECONDS[micros // 1000]


def render_line(
    level: str | None,
    service: str,
    event: Any,
    request_id: str | None,
    fields: Mapping[str, Any] | None = None,
    *,
    safe: Mapping[str, Any] | None = None,
) -> str:
    """One log line, as JSON without the newline: the one renderer, which structlog's processors, `DirectMethods`
    and `write_access_line` all end in.

    The head fields first, in HEAD_FIELDS order (`time` is now; `event` as given, which a caller that did not
    choose it redacts); then `safe`, the caller's own fields, written as they are (holding no head field; the
    caller redacted what needed it); then each field of
    `fields` the line does not have yet, redacted (`shared.redact`: trusted fields such as ids, timings and
    statuses are left alone); then the current request's traceparent, unless a field gave one."""
    line = {
        "time": utc_timestamp(time.time()),
        "level": level,
        "service": service,
        "event": event,
        "request_id": request_id,
    }
    if safe:
        line.update(safe)
    if fields:
        added = {key: value for key, value in fields.items() if key not in line}  # never the line's own
        redact_fields(added)
        line.update(added)
    if "traceparent" not in line and (traceparent := current_traceparent.get()) is not None:
        line["traceparent"] = traceparent
    return orjson.dumps(line, default=str).decode()


def _finish(service: str) -> Any:
    """The last processor: the head fields taken out of the event (the request ID from the request context unless
    the event has one; the event's text redacted) and the line rendered (`render_line`; a `time` or `service` of
    the event's own is dropped there). One function rather than a processor each: each structlog processor is a
    call on every line's path."""

    def finish(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
        request_id = event.pop("request_id") if "request_id" in event else current_request_id.get()
        level, name = event.pop("level", None), redact_value("event", event.pop("event", None))
        return render_line(level, service, name, request_id, event)

    return finish


def configure_logging(service: str, level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog and the stdlib `logging` tree to JSON lines on `stream` (stdout by default)."""
    out = stream or sys.stdout
    numeric_level = _LEVELS[level]
    pre_chain: list[Any] = [structlog.processors.add_log_level, structlog.processors.format_exc_info]
    finish = _finish(service)
    structlog.configure(
        processors=[*pre_chain, finish],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=pre_chain,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, finish],
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
    _direct = DirectMethods(service, finish, out, numeric_level)
    _reconfigured()


# Bumped whenever the logging configuration changes (`configure_logging`, `capture_logs`): each `Logger` rebuilds
# what it calls when it sees a new value.
_generation = 0


def _reconfigured() -> None:
    global _generation
    _generation += 1


def reset_logging() -> None:
    """structlog's defaults again, and none of ours (tests that configured logging undo it with this)."""
    global _direct
    _direct = None
    structlog.reset_defaults()
    _reconfigured()


@contextmanager
def capture_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """structlog's `capture_logs` (for tests), noticed by the loggers here."""
    global _direct
    ours, _direct = _direct, None
    with structlog.testing.capture_logs() as logs:
        _reconfigured()
        try:
            yield logs
        finally:
            _direct = ours
            _reconfigured()


def _drop(event: str, *args: Any, **fields: Any) -> None:
    pass


class DirectMethods:
    """`debug`, `info`, `warning` and `error` of our own configuration, as plain functions: the processors of
    `configure_logging` applied in order and the line written, without structlog's per-call machinery
    (bound-logger lookup, context copy, processor loop, logger method lookup). The access line is written for
    every request; this is half its cost. Anything else (`exception`, `bind`) goes through structlog as usual."""

    def __init__(self, service: str, finish: Any, out: TextIO, level: int) -> None:
        self.service = service
        self.out = out
        self.level = level
        self.methods = {
            name: self._emitter(name, finish) if number >= level else _drop for name, number in _LEVELS.items()
        }

    def _emitter(self, level: str, finish: Any) -> Any:
        def emit(event: str, *args: Any, **fields: Any) -> None:
            fields["event"] = event % args if args else event  # as structlog formats positional arguments
            fields["level"] = level  # as structlog's add_log_level does for these four
            line: MutableMapping[str, Any] = fields
            if "exc_info" in line:
                line = structlog.processors.format_exc_info(None, level, line)
            self.write(finish(None, level, line))

        return emit

    def write(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()


_direct: DirectMethods | None = None
_access_fallback = structlog.get_logger("shared.access")


def write_access_line(
    level: str,
    method: str,
    route: str,
    path: str,
    status: int,
    duration_ms: float,
    client: str | None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """The access line of one request (event `request`), exactly as `log.<level>("request", method=..., route=...,
    path=..., status=..., duration_ms=..., client=..., **extra)` would write it, rendered by `render_line` straight
    from these arguments: it is the one line written for every request, and the general path (a keyword dict,
    the head fields taken out of it again) costs more. `extra` never replaces a field the line has already. Under
    any configuration other than ours (`capture_logs`), it is that call. Written without a lock: request handling
    runs on the event loop's thread."""
    direct = _direct
    if direct is None:
        own = {"method": method, "route": route, "path": path, "status": status, "duration_ms": duration_ms}
        own["client"] = client
        fields = {key: value for key, value in (extra or {}).items() if key not in own and key not in HEAD_FIELDS}
        getattr(_access_fallback, level)("request", **own, **fields)
        return
    if _LEVELS[level] < direct.level:
        return
    own = {"method": method, "route": route, "path": redact_text(path), "status": status, "duration_ms": duration_ms}
    own["client"] = client
    direct.write(render_line(level, direct.service, "request", current_request_id.get(), extra, safe=own))


class Logger:
    """A structlog logger that is built once per logging configuration.

    structlog's own lazy proxy builds a new bound logger on every call, about 13 us: a fifth of the proxy's
    per-request budget for one access line. This one builds it again only when the configuration changed
    (`configure_logging`, or `capture_logs` in tests), and `debug`/`info`/`warning`/`error` are our
    `DirectMethods` while our configuration is the one in force.
    """

    def __init__(self, name: str | None) -> None:
        self._name = name
        # (generation it was built for, direct methods, bound logger): replaced as one, so a reconfiguration
        # racing another thread's call can never pair them wrongly.
        self._built: tuple[int, dict[str, Any], Any] = (-1, {}, None)

    def _build(self) -> tuple[int, dict[str, Any], Any]:
        # `_direct` is None whenever our configuration is not in force (`capture_logs`, `reset_logging`).
        methods = dict(_direct.methods) if _direct is not None else {}
        self._built = (_generation, methods, structlog.get_logger(self._name).bind())
        return self._built

    def _method(self, name: str) -> Any:
        generation, methods, bound = self._built
        if generation != _generation:
            generation, methods, bound = self._build()
        method = methods.get(name)
        return method if method is not None else getattr(bound, name)

    # Properties rather than __getattr__ for the four every module calls: a failed attribute lookup first is
    # an exception raised and caught on every log call.
    debug = property(lambda self: self._method("debug"))
    info = property(lambda self: self._method("info"))
    warning = property(lambda self: self._method("warning"))
    error = property(lambda self: self._method("error"))

    def __getattr__(self, name: str) -> Any:
        return self._method(name)


def get_logger(name: str | None = None) -> Any:
    """A logger whose keyword arguments become JSON fields (`log.info("event", field=value)`)."""
    return Logger(name)
