"""Serve an app on uvloop with our own signal handling and draining: hypercorn for the services, granian
(embedded in the same event loop) for the proxy, whose throughput it nearly doubles (docs/benchmarks.md).

First SIGTERM/SIGINT: `/ready` turns 503 at once, the listener stays open for `SHUTDOWN_DELAY_S` so load
balancers and the proxy see it, in-flight requests finish (up to `GRACEFUL_TIMEOUT_S`), then the server stops,
the lifespan closes the pools and `"<service> shut down cleanly"` is logged; exit code 0. A request still running
at the end of the grace period is cut off (hypercorn) or cancelled (granian). A second signal exits at once.
Neither server installs signal handlers of its own here.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.server.embed import Server as EmbeddedGranian
from hypercorn.asyncio import serve
from hypercorn.config import Config

from shared.app import Runtime
from shared.config import ConfigError, Settings, load_settings
from shared.context import GRACE_PERIOD_OVER
from shared.log import configure_logging, get_logger
from shared.types import ServiceApp

__all__ = [
    "Server",
    "bind_address",
    "drain",
    "handle_signals",
    "hypercorn_config",
    "load_or_exit",
    "run_service",
    "serve_granian",
    "serve_hypercorn",
    "tune_gc",
]

# After our drain, what hypercorn still gives the last connections to close.
FINAL_GRACE_S = 0.5
# How long hypercorn keeps an idle keep-alive connection: above the 60 s idle timeout of common load balancers
# (AWS ALB), so the balancer, not us, closes an idle connection and never sends on one we just closed.
HYPERCORN_KEEP_ALIVE_S = 75
# A connection is closed after this many requests (hypercorn's default is 1,000), so that a client pooling
# connections through a Kubernetes Service, which balances connections and not requests, spreads again over pods
# that restarted or were added: the proxy's pool sits on the pods that stayed up through a rolling restart. One new
# connection per 100 requests costs a loopback or in-cluster handshake (well under a millisecond) per 100.
HYPERCORN_MAX_REQUESTS_PER_CONNECTION = 100
GRANIAN_BACKLOG = 1024
# granian's constructor applies its logging config: its default would give `_granian` a plain-text handler of its
# own and close ours. Incremental and empty, it only sets that logger's level (no handlers), so its records
# propagate to our JSON handler on the root logger.
GRANIAN_LOGGING: dict[str, Any] = {"version": 1, "incremental": True, "handlers": {}, "loggers": {}}
# What closing the pools may take once the shutdown deadline has passed.
CLOSE_TIMEOUT_S = 5.0
# How long granian waits for a request head, which is also how long it keeps an idle keep-alive connection
# (hypercorn's is HYPERCORN_KEEP_ALIVE_S; granian allows at most 60 s).
GRANIAN_HEADER_TIMEOUT_MS = 60_000
# Young-generation collections every 10,000 net allocations instead of 700 (see tune_gc).
GC_YOUNG_THRESHOLD = 10_000

log = get_logger(__name__)


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.graceful_timeout = settings.graceful_timeout_s
    config.accesslog = None
    # Its own "Running on" lines would bypass our JSON logging; we log `listening` instead.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = HYPERCORN_KEEP_ALIVE_S
    config.keep_alive_max_requests = HYPERCORN_MAX_REQUESTS_PER_CONNECTION
    config.include_server_header = False
    return config


async def drain(runtime: Runtime, stop: Callable[[float], None]) -> None:
    """Keep serving while `/ready` says 503, until in-flight requests are done or the grace period ends; then
    `stop(seconds of the grace period left)`."""
    settings = runtime.settings
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.graceful_timeout_s
    await asyncio.sleep(settings.shutdown_delay_s)
    try:
        await asyncio.wait_for(runtime.in_flight.idle.wait(), timeout=max(deadline - loop.time(), 0.0))
    except TimeoutError:
        log.warning("drain_timeout", in_flight=runtime.in_flight.count)
    stop(max(deadline - loop.time(), FINAL_GRACE_S))


def handle_signals(runtime: Runtime, stop: Callable[[float], None]) -> None:
    """First SIGTERM/SIGINT: draining (see `drain`); a second one exits at once."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def on_signal(signum: signal.Signals) -> None:
        if runtime.health.draining:
            log.warning("forced_exit", signal=signum.name)
            os._exit(128 + signum.value)
        runtime.health.draining = True
        log.info("draining", signal=signum.name, in_flight=runtime.in_flight.count)
        task = loop.create_task(drain(runtime, stop))
        tasks.add(task)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


async def serve_hypercorn(app: ServiceApp, settings: Settings) -> None:
    config = hypercorn_config(settings)
    stopped = asyncio.Event()

    def stop(grace_left_s: float) -> None:
        # hypercorn waits `graceful_timeout` again once stopped: only what is left of ours, so the whole shutdown
        # stays within GRACEFUL_TIMEOUT_S (plus closing the pools).
        config.graceful_timeout = grace_left_s
        stopped.set()

    handle_signals(app.state.runtime, stop)
    log.info("listening", host=settings.host, port=settings.port, env=settings.env, server="hypercorn")
    await serve(app, config, shutdown_trigger=stopped.wait)  # type: ignore[arg-type]


def bind_address(host: str, port: int) -> str:
    """The IP address granian is to bind (it takes no host names), once nothing else listens there.

    granian binds with SO_REUSEPORT, so without this probe a second proxy (or anything else of the same user) on a
    taken port would silently share it and the kernel would split connections between them; hypercorn fails with
    "address in use" instead. Every failure is one JSON line and exit code 1."""
    try:
        candidates = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        # One address only: IPv4 first, so `localhost` means 127.0.0.1 as clients mostly expect.
        family, _, _, _, address = min(candidates, key=lambda candidate: candidate[0] != socket.AF_INET)
    except OSError as exc:
        log.error("bind_failed", host=host, port=port, error=str(exc))
        raise SystemExit(1) from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
        try:
            probe.bind(address)
        except OSError as exc:
            event = "address_in_use" if exc.errno == errno.EADDRINUSE else "bind_failed"
            log.error(event, host=host, port=port, error=exc.strerror)
            raise SystemExit(1) from None
    return str(address[0])


class DropGracePeriodCancellations(logging.Filter):
    """granian logs a request cancelled at the end of the grace period as a failed application call, with the
    traceback as its message; the error boundary has already logged it as `request_cancelled`."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, asyncio.CancelledError) and error.args == (GRACE_PERIOD_OVER,))


async def serve_granian(app: ServiceApp, settings: Settings) -> None:
    """granian's embedded server in this event loop, so our draining applies as it does with hypercorn: the
    listener stays open while `/ready` says 503 and in-flight requests finish, then granian stops accepting and
    the lifespan closes the pools.

    granian waits for every open connection once stopped, including one that has sent half a request head (up to
    its header timeout) and requests still running. So half a second after the grace period ends, requests still
    running are cancelled (each answers 503, see `shared.errors`), and half a second after that whatever granian
    still waits for is abandoned: the pools are closed here and the process exits."""
    address = bind_address(settings.host, settings.port)
    server = EmbeddedGranian(
        app,
        address=address,
        port=settings.port,
        interface=Interfaces.ASGI,
        http=HTTPModes.http1,
        websockets=False,
        backlog=GRANIAN_BACKLOG,
        http1_settings=HTTP1Settings(header_read_timeout=GRANIAN_HEADER_TIMEOUT_MS),
        log_enabled=False,
        log_dictconfig=GRANIAN_LOGGING,
    )
    # Its errors go through our JSON pipeline; its start-up chatter ("experimental!") stays out.
    granian_log = logging.getLogger("_granian")
    granian_log.setLevel(logging.ERROR)
    granian_log.addFilter(DropGracePeriodCancellations())

    runtime: Runtime = app.state.runtime
    loop = asyncio.get_running_loop()
    # Resolved by the drain with the seconds of the grace period left.
    stopped: asyncio.Future[float] = loop.create_future()

    def cancel_leftovers() -> None:
        if cancelled := runtime.in_flight.cancel_all():
            log.warning("requests_cancelled", count=cancelled)

    def stop(grace_left_s: float) -> None:
        server.stop()  # type: ignore[no-untyped-call]
        loop.call_later(grace_left_s, cancel_leftovers)
        stopped.set_result(grace_left_s)

    handle_signals(runtime, stop)
    log.info("listening", host=address, port=settings.port, env=settings.env, server="granian")
    serving = asyncio.ensure_future(server.serve())
    await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not stopped.done():  # granian ended by itself: it failed to start or to serve
        if (error := serving.exception()) is not None:
            log.error("server_failed", error=repr(error))
            raise SystemExit(1)
        return
    try:
        await asyncio.wait_for(asyncio.shield(serving), timeout=stopped.result() + FINAL_GRACE_S)
    except TimeoutError:
        # Still open: connections that never finished a request head, or pools still closing.
        log.warning("shutdown_deadline", pools_closing=runtime.closing is not None)
        try:
            await asyncio.wait_for(runtime.close(), timeout=CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.error("close_timeout", timeout_s=CLOSE_TIMEOUT_S)
        log.info(f"{settings.service} shut down cleanly")
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)  # granian's runtime would keep the process up until those connections time out


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path.

    Under load the collector ran about 125 times a second in the proxy and took about a tenth of its CPU while
    finding almost nothing to free: requests in flight count as young objects, and every full collection walked
    the ~75,000 objects of the loaded modules again. What start-up created is moved out of the collector's sight
    (`gc.freeze`), and young collections run every 10,000 net allocations instead of 700. Reference counting
    still frees everything acyclic at once, as before; cyclic garbage lives a little longer, so code that ends
    in a reference cycle (an exception kept with its traceback) should not keep large buffers in it
    (`proxy.limits.BodyReader` keeps body data out of the frames of what it raises). At 50,000 a review measured
    676 MB held by the garbage of refused 1 MiB uploads; at 10,000 it is a fifth of that at worst.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def load_or_exit(
    service: str, load: Callable[[], Settings] | None = None, *, database_required: bool = True
) -> Settings:
    """Settings, or one line on stderr naming the bad variable and exit code 2 (no traceback). Without `load`, a
    service's: a database, and a client to call the other services with (`Runtime.service_client`)."""
    try:
        return load() if load else load_settings(service, database_required=database_required, service_client=True)
    except ConfigError as exc:
        print(f"{service}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


Server = Callable[[ServiceApp, Settings], Coroutine[Any, Any, None]]


def run_service(
    service: str,
    create_app: Callable[[Any], ServiceApp],
    load: Callable[[], Settings] | None = None,
    *,
    server: Server = serve_hypercorn,
) -> None:
    """The `python -m <service>` entry point: settings, logging, app, serve, and the shut-down line."""
    settings = load_or_exit(service, load)
    configure_logging(service, settings.log_level)
    app = create_app(settings)
    tune_gc()
    uvloop.run(server(app, settings))
    log.info(f"{service} shut down cleanly")
