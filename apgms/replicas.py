"""Several replicas of every service behind several proxies, on one machine (issue #16): what the multi-replica drill
(tests/e2e/test_replica_drill.py) and the scaling bench run.

    stack = ReplicaStack.start(ReplicaPlan(proxies=2, replicas=2), database_url=..., redis_url=..., env={...},
                               log_dir=Path(...))       # returns once every proxy is /ready
    stack.proxy_urls                  # ["http://127.0.0.1:41234", ...]
    replica = stack.replicas["core"][0]
    await stack.restart(replica)      # SIGTERM, exit within a bound, start on the same port, back in rotation
    stack.stop()

Each replica is a real process (`python -m services.<name>`, `python -m proxy`) on a free loopback port, against
the given PostgreSQL and Redis, with the caller's environment underneath (secrets: APGMS_MASTER_KEY, the KEK, the
service client secrets; `apgms.devstack.with_dev_service_clients` derives the last from the master key). The
caller migrates the database first. Its output (stdout and stderr, JSON logs) is appended to
`log_dir/<name>-<index>.log`, across restarts.

Every proxy gets UPSTREAM_<SERVICE>_URLS listing every replica, as in production: it balances requests itself,
with its active /ready checks and passive ejection (proxy/upstreams.py). The services find each other through one
URL each (AUTH_URL, CORE_URL, COMPLIANCE_URL, REGULATOR_URL); here each is a `ConnectionBalancer`, a small TCP
balancer in this process that does what a Kubernetes Service does through kube-proxy (docs/ops/kubernetes.md):
each NEW connection goes to the next ready replica, round-robin, and its bytes pass through untouched; readiness
is a probe of /ready every PROBE_INTERVAL_S, out after PROBE_FAILURES_OUT failures in a row, in after one pass.
A pooled keep-alive connection stays on the replica it was opened to, as it would in a cluster. `restart` replaces
a replica as Kubernetes replaces a Pod: out of its balancer first, a preStop wait, then SIGTERM.

The balancers run their own event loop in a daemon thread (`BackgroundLoop`), so a caller blocking its own loop
never stalls the connections of the processes behind them; tests/e2e/chaos_support.py's forwarder uses the same
loop and byte pipe (`pipe`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Self, TypeVar

from apgms.devservers import die_with_parent, free_port
from apgms.devstack import ProcessSpec, child_env

_T = TypeVar("_T")

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SERVICES = ("auth", "core", "compliance", "regulator")
PROXY_NAME = "api-gateway"
# The one URL by which each service is found by the others (shared/config.py, services/*/config.py).
URL_VARIABLES = {"auth": "AUTH_URL", "core": "CORE_URL", "compliance": "COMPLIANCE_URL", "regulator": "REGULATOR_URL"}

CHUNK_BYTES = 64 * 1024
# What a call into a background loop may take (start or stop listening, drop connections).
CONTROL_TIMEOUT_S = 5.0
# The balancers' readiness probe: as a Kubernetes readinessProbe with periodSeconds 0.5, failureThreshold 2,
# successThreshold 1, timeoutSeconds 1 (a shorter period than the manifests' 5 s, so a drill takes seconds).
PROBE_INTERVAL_S = 0.5
PROBE_FAILURES_OUT = 2
PROBE_TIMEOUT_S = 1.0
# A replica's start (to /health 200) and stop (SIGTERM to exit: SHUTDOWN_DELAY_S, then the drain of in-flight
# requests) on a loaded 2-core machine; past the stop bound a replica is killed and the bound reported.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
# How long a restarted replica may take to be back in every proxy's and balancer's rotation.
ROTATION_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.05
HTTP_TIMEOUT_S = 1.0
# How a process's JSON log marks a request served (shared.log's access line).
REQUEST_LOG_MARK = b'"event":"request"'


# --- pure parts ------------------------------------------------------------------------------------------------


def next_backend(ready: Sequence[bool], turn: int) -> int | None:
    """The index of the backend a new connection goes to: the `turn`-th ready one, round-robin; None when none is
    ready (a Service without endpoints refuses the connection)."""
    candidates = [index for index, up in enumerate(ready) if up]
    if not candidates:
        return None
    return candidates[turn % len(candidates)]


@dataclass
class Readiness:
    """One backend's readiness as a probe sees it: out after `failures_out` failures in a row, in after one pass
    (Kubernetes' successThreshold is 1 for readiness). A new backend is out until its first pass."""

    failures_out: int = PROBE_FAILURES_OUT
    ready: bool = False
    failures: int = 0

    def record(self, passed: bool) -> None:
        if passed:
            self.failures = 0
            self.ready = True
        else:
            self.failures += 1
            if self.failures >= self.failures_out:
                self.ready = False


UPSTREAM_UP_LINE = re.compile(r"^apgms_proxy_upstream_up\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.MULTILINE)


def proxy_rotation(metrics_text: str, service: str, instance: str) -> bool | None:
    """Whether a proxy's /metrics says `instance` (host:port) of `service` is in rotation; None when not listed."""
    for match in UPSTREAM_UP_LINE.finditer(metrics_text):
        labels = match["labels"]
        if f'service="{service}"' in labels and f'instance="{instance}"' in labels:
            return float(match["value"]) == 1.0
    return None


# --- a loop of its own, and the byte pipe --------------------------------------------------------------------


class BackgroundLoop:
    """An event loop running in a daemon thread; `call` runs a coroutine there and waits for its result."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, make: Callable[[], Awaitable[_T]], timeout: float = CONTROL_TIMEOUT_S) -> _T:
        async def run() -> _T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def close(self) -> None:
        """Every task still running there cancelled, then the loop stopped and closed (left to the daemon thread,
        which ends with the process, when it does not stop in time: closing a running loop raises)."""
        self.call(self._cancel_tasks)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(CONTROL_TIMEOUT_S)
        if not self._thread.is_alive():
            self.loop.close()

    @staticmethod
    async def _cancel_tasks() -> None:
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _no_delay() -> float:
    return 0.0


async def pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    delay: Callable[[], float] = _no_delay,
    before_write: Callable[[], Awaitable[None]] | None = None,
    on_chunk: Callable[[], None] | None = None,
) -> None:
    """Copy `reader` to `writer` until end of stream, then abort `writer` (the other side sees the connection end).

    Each chunk is written `delay()` seconds after it was read, kept in order (a queue of due times, so a delay adds
    latency without throttling throughput); `before_write` is awaited before each write (a stalled forwarder waits
    there); `on_chunk` is called for each chunk read."""
    due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            at, chunk = await due.get()
            if not chunk:
                writer.transport.abort()
                return
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if before_write is not None:
                await before_write()
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    try:
        while chunk := await reader.read(CHUNK_BYTES):
            if on_chunk is not None:
                on_chunk()
            due.put_nowait((time.monotonic() + delay(), chunk))
        due.put_nowait((time.monotonic() + delay(), b""))
        await sender
    finally:
        sender.cancel()


async def splice(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    server_reader: asyncio.StreamReader,
    server_writer: asyncio.StreamWriter,
) -> None:
    """Both directions piped until either side ends; then both connections aborted."""
    try:
        await asyncio.gather(
            pipe(client_reader, server_writer), pipe(server_reader, client_writer), return_exceptions=True
        )
    finally:
        client_writer.transport.abort()
        server_writer.transport.abort()


# --- the connection balancer (a Kubernetes Service) ------------------------------------------------------------


async def probe_ready(port: int, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether GET /ready on 127.0.0.1:`port` answers 200 within `timeout_s` (a readinessProbe's httpGet)."""

    async def status_line() -> bytes:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(f"GET /ready HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            return await reader.readline()
        finally:
            writer.transport.abort()

    try:
        line = await asyncio.wait_for(status_line(), timeout_s)
    except (OSError, TimeoutError):
        return False
    return line.split(b" ")[1:2] == [b"200"]


@dataclass
class Backend:
    """One replica behind a balancer: its port, its readiness, whether it was withdrawn (a Pod being deleted: its
    endpoint left the Service whatever its probe says), and how many connections went to it."""

    port: int
    readiness: Readiness = field(default_factory=Readiness)
    withdrawn: bool = False
    connections: int = 0

    @property
    def in_service(self) -> bool:
        return self.readiness.ready and not self.withdrawn


class ConnectionBalancer:
    """Listens on 127.0.0.1:`port`; each new connection goes to the next ready backend (round-robin over
    `next_backend`), byte for byte. With no ready backend, or when the chosen one refuses, the connection is
    dropped at once (a Service with no endpoints refuses it; here it was already accepted, so the client sees a
    reset). Readiness is probed on /ready every `interval_s` (see `Readiness`)."""

    def __init__(self, name: str, backend_ports: Sequence[int], port: int, interval_s: float) -> None:
        self.name = name
        self.port = port
        self.interval_s = interval_s
        self.backends = [Backend(p) for p in backend_ports]
        self.connections_refused = 0
        self._turn = 0
        self._background = BackgroundLoop(f"balancer-{name}")
        self._server: asyncio.Server | None = None
        self._prober: asyncio.Task[None] | None = None

    @classmethod
    def start(cls, name: str, backend_ports: Sequence[int], interval_s: float = PROBE_INTERVAL_S) -> Self:
        balancer = cls(name, backend_ports, free_port(), interval_s)
        balancer._background.call(balancer._listen)
        return balancer

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def is_ready(self, backend_port: int) -> bool:
        return any(b.in_service for b in self.backends if b.port == backend_port)

    def withdraw(self, backend_port: int) -> None:
        """No new connection goes to this backend from now on (connections already open stay), as when its Pod is
        deleted; `replace` puts a new one in its place."""
        self._background.call(lambda: self._set_withdrawn(backend_port, True))

    def replace(self, backend_port: int) -> None:
        """A new replica on the port of a withdrawn one: out until its first passing probe, as a new Pod."""
        self._background.call(lambda: self._set_withdrawn(backend_port, False))

    async def _set_withdrawn(self, backend_port: int, withdrawn: bool) -> None:
        for backend in self.backends:
            if backend.port == backend_port:
                backend.withdrawn = withdrawn
                if not withdrawn:
                    backend.readiness = Readiness()  # a new Pod: out until its first passing probe

    def close(self) -> None:
        self._background.call(self._close)
        self._background.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, HOST, self.port, reuse_address=True)
        self._prober = asyncio.ensure_future(self._probe_forever())
        await self._probe_once()  # the first connections find the replicas already up as ready

    async def _close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
        if self._server is not None:
            self._server.close()

    async def _probe_once(self) -> None:
        results = await asyncio.gather(*(probe_ready(b.port, PROBE_TIMEOUT_S) for b in self.backends))
        for backend, passed in zip(self.backends, results, strict=True):
            backend.readiness.record(passed)

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self._probe_once()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        index = next_backend([b.in_service for b in self.backends], self._turn)
        self._turn += 1
        if index is None:
            self.connections_refused += 1
            client_writer.transport.abort()
            return
        backend = self.backends[index]
        try:
            server_reader, server_writer = await asyncio.open_connection(HOST, backend.port)
        except OSError:
            self.connections_refused += 1
            client_writer.transport.abort()
            return
        backend.connections += 1
        # `close` cancels what is left; asyncio would log a cancelled connection handler as an error.
        with contextlib.suppress(asyncio.CancelledError):
            await splice(client_reader, client_writer, server_reader, server_writer)


# --- replicas --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaPlan:
    """How many proxies and replicas of each service, and the timings that decide whether a restart loses
    requests: a replica keeps its listener open SHUTDOWN_DELAY_S after SIGTERM (its /ready 503 at once), which must
    be longer than the proxies' (two failed checks `proxy_health_interval_s` apart) and the balancers' (two failed
    probes `probe_interval_s` apart) way of noticing."""

    proxies: int = 2
    replicas: int = 2
    # False: each proxy lists every replica (UPSTREAM_<SERVICE>_URLS, the proxy balances requests and ejects).
    # True: each proxy is given the service's balancer alone, as in Kubernetes where UPSTREAM_<SERVICE>_URLS names
    # the Service (docs/ops/kubernetes.md): connections are balanced, not requests.
    proxies_through_balancers: bool = False
    shutdown_delay_s: float = 2.0
    proxy_health_interval_s: float = 0.5
    probe_interval_s: float = PROBE_INTERVAL_S


class Replica:
    """One process of the stack, on a port it keeps across restarts; output appended to `log_path`."""

    def __init__(self, name: str, index: int, module: str, port: int, env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.index = index
        self.module = module
        self.port = port
        self.env = dict(env)
        self.log_path = log_dir / f"{name}-{index}.log"
        self.cwd = log_dir / f"{name}-{index}"
        self.starts = 0
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def instance(self) -> str:
        """host:port, as the proxy's metrics name it."""
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def spawn(self) -> None:
        """Start the process without waiting for it. It gets SIGTERM if the thread that spawned it ends
        (PR_SET_PDEATHSIG follows the thread): spawn from a thread that lives as long as the stack."""
        if self.running:
            raise RuntimeError(f"{self.name}-{self.index} is already running")
        self.cwd.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self.starts += 1

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until /health answers 200; RuntimeError with the log's tail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name}-{self.index} exited ({self.exit_code()})\n{self.log_tail()}")
            if http_status(self.port, "/health") == 200:
                return
            time.sleep(POLL_INTERVAL_S)
        raise RuntimeError(f"{self.name}-{self.index}: /health not 200 within {timeout_s} s\n{self.log_tail()}")

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Spawn (same port as before) and wait until /health answers 200."""
        self.spawn()
        self.wait_healthy(timeout_s)

    def send_sigterm(self) -> None:
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and the exit code once the process has drained and ended; past `timeout_s` it is killed and
        RuntimeError raised (a replica that does not stop in time is a failure to report, not to hide)."""
        popen = self._popen
        if popen is None:
            raise RuntimeError(f"{self.name}-{self.index} was never started")
        self.send_sigterm()
        try:
            return popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
            raise RuntimeError(f"{self.name}-{self.index} did not exit within {timeout_s} s of SIGTERM") from None

    def kill(self) -> None:
        if self._popen is not None and self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait()

    def exit_code(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def requests_served(self) -> int:
        """How many requests its log records (one `request` line each), over every run of it so far."""
        try:
            with self.log_path.open("rb") as log:
                return sum(1 for line in log if REQUEST_LOG_MARK in line)
        except OSError:
            return 0

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def http_get(port: int, path: str, timeout: float = HTTP_TIMEOUT_S) -> tuple[int, bytes] | None:
    """Status and body of GET `path` on 127.0.0.1:`port`, None when nothing answers."""
    connection = HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return None
    finally:
        connection.close()


def http_status(port: int, path: str, timeout: float = HTTP_TIMEOUT_S) -> int | None:
    """Status of GET `path` on 127.0.0.1:`port`, None when nothing answers."""
    answer = http_get(port, path, timeout)
    return answer[0] if answer is not None else None


def http_text(port: int, path: str, timeout: float = HTTP_TIMEOUT_S) -> str | None:
    """The body of GET `path` on 127.0.0.1:`port` when it answers 200, else None."""
    answer = http_get(port, path, timeout)
    return answer[1].decode(errors="replace") if answer is not None and answer[0] == 200 else None


def replica_env(
    base: Mapping[str, str],
    spec: ProcessSpec,
    database_url: str,
    redis_url: str | None,
    extra: Mapping[str, str],
) -> dict[str, str]:
    """A replica's environment: `apgms.devstack.child_env` (the caller's environment, the stack's settings, the
    service's own client secret, the KEK only where PII is held), in APGMS_ENV=test unless the caller says
    otherwise, with this checkout importable and `extra` on top."""
    env = child_env(base, spec, database_url, redis_url)
    env["APGMS_ENV"] = base.get("APGMS_ENV", "test")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")]))
    env.update(extra)
    return env


class ReplicaStack:
    """P proxies and R replicas of each service, with a `ConnectionBalancer` per service for the calls between
    them. Build it with `ReplicaStack.start`; `stop` ends everything (also on a failed start)."""

    def __init__(self, plan: ReplicaPlan, log_dir: Path) -> None:
        self.plan = plan
        self.log_dir = log_dir
        self.replicas: dict[str, list[Replica]] = {}
        self.proxies: list[Replica] = []
        self.balancers: dict[str, ConnectionBalancer] = {}

    @classmethod
    def start(
        cls,
        plan: ReplicaPlan,
        *,
        database_url: str,
        redis_url: str | None,
        env: Mapping[str, str],
        log_dir: Path,
        proxy_env: Mapping[str, str] | None = None,
        timeout_s: float = START_TIMEOUT_S,
    ) -> Self:
        """Every replica spawned at once, then each waited for (/health), then the proxies, which are waited for
        until /ready. `env` is every process's base environment (secrets included); `proxy_env` is added to the
        proxies' only."""
        log_dir.mkdir(parents=True, exist_ok=True)
        stack = cls(plan, log_dir)
        try:
            ports = {name: [free_port() for _ in range(plan.replicas)] for name in SERVICES}
            for name in SERVICES:
                stack.balancers[name] = ConnectionBalancer.start(name, ports[name], plan.probe_interval_s)
            urls = {URL_VARIABLES[name]: balancer.url for name, balancer in stack.balancers.items()}
            extra = {"SHUTDOWN_DELAY_S": f"{plan.shutdown_delay_s:g}", **urls}
            for name in SERVICES:
                stack.replicas[name] = [
                    Replica(
                        name,
                        index,
                        f"services.{name}",
                        port,
                        replica_env(env, ProcessSpec(name, f"services.{name}", port), database_url, redis_url, extra),
                        log_dir,
                    )
                    for index, port in enumerate(ports[name])
                ]
            upstreams = {
                f"UPSTREAM_{name.upper()}_URLS": stack.balancers[name].url
                if plan.proxies_through_balancers
                else ",".join(r.url for r in stack.replicas[name])
                for name in SERVICES
            }
            proxy_extra = {
                "SHUTDOWN_DELAY_S": f"{plan.shutdown_delay_s:g}",
                "PROXY_HEALTH_INTERVAL_S": f"{plan.proxy_health_interval_s:g}",
                **upstreams,
                **(proxy_env or {}),
            }
            for index in range(plan.proxies):
                port = free_port()
                spec = ProcessSpec(PROXY_NAME, "proxy", port)
                stack.proxies.append(
                    Replica(
                        PROXY_NAME,
                        index,
                        "proxy",
                        port,
                        replica_env(env, spec, database_url, None, proxy_extra),
                        log_dir,
                    )
                )
            services = [replica for name in SERVICES for replica in stack.replicas[name]]
            for replica in services:
                replica.spawn()
            for replica in services:
                replica.wait_healthy(timeout_s)
            for proxy in stack.proxies:
                proxy.spawn()
            for proxy in stack.proxies:
                proxy.wait_healthy(timeout_s)
            stack.wait_until(
                lambda: all(http_status(p.port, "/ready") == 200 for p in stack.proxies), timeout_s, "proxies ready"
            )
            stack.wait_until(lambda: all(map(stack.in_rotation, services)), timeout_s, "every replica in rotation")
        except BaseException:
            stack.stop()
            raise
        return stack

    @property
    def proxy_urls(self) -> list[str]:
        return [proxy.url for proxy in self.proxies]

    def service_url(self, name: str) -> str:
        """The one URL the services reach `name` by (its balancer)."""
        return self.balancers[name].url

    def in_rotation(self, replica: Replica) -> bool:
        """Whether its balancer finds `replica` ready and (when the proxies list replicas) every proxy's /metrics
        has it in rotation."""
        if not self.balancers[replica.name].is_ready(replica.port):
            return False
        if self.plan.proxies_through_balancers:
            return True
        for proxy in self.proxies:
            text = http_text(proxy.port, "/metrics")
            if text is None or not proxy_rotation(text, replica.name, replica.instance):
                return False
        return True

    @staticmethod
    def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Poll `check` until true; the seconds it took. RuntimeError after `timeout_s`."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if check():
                return time.monotonic() - started
            time.sleep(POLL_INTERVAL_S)
        raise RuntimeError(f"{what}: not within {timeout_s} s")

    async def restart(self, replica: Replica, timeout_s: float = ROTATION_TIMEOUT_S) -> RestartTimes:
        """As Kubernetes replaces a Pod: the replica leaves its balancer (its endpoint leaves the Service at once)
        and, when the proxies reach it through that balancer, waits a preStop of SHUTDOWN_DELAY_S (deploy/k8s);
        then SIGTERM and wait for the exit (it must be 0, a clean drain), spawn again on the same port (from the
        calling thread, the loop's, which outlives the stack), wait until it is healthy and back in every proxy's
        and its balancer's rotation. The seconds each step took (the preStop counted in the stop)."""
        started = time.monotonic()
        balancer = self.balancers.get(replica.name)
        if balancer is not None:
            balancer.withdraw(replica.port)
            if self.plan.proxies_through_balancers:
                await asyncio.sleep(self.plan.shutdown_delay_s)
        code = await asyncio.to_thread(replica.terminate)
        stopped = time.monotonic()
        if code != 0:
            raise RuntimeError(f"{replica.name}-{replica.index} exited {code} on SIGTERM\n{replica.log_tail()}")
        if balancer is not None:
            balancer.replace(replica.port)
        replica.spawn()
        await asyncio.to_thread(replica.wait_healthy)
        healthy = time.monotonic()
        await asyncio.to_thread(
            self.wait_until, lambda: self.in_rotation(replica), timeout_s, f"{replica.name}-{replica.index} back"
        )
        return RestartTimes(stop_s=stopped - started, start_s=healthy - stopped, rotation_s=time.monotonic() - healthy)

    def stop(self) -> None:
        """SIGTERM to every process at once (they drain in parallel), each waited for (killed past the stop
        bound), then the balancers closed."""
        everything = [*self.proxies, *(r for name in SERVICES for r in self.replicas.get(name, []))]
        for replica in everything:
            replica.send_sigterm()
        for replica in everything:
            if replica.pid is not None:
                with contextlib.suppress(RuntimeError):  # killed past the bound; the stack is going anyway
                    replica.terminate()
        for balancer in self.balancers.values():
            balancer.close()
        self.balancers.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class RestartTimes:
    """How long one restart took: SIGTERM to exit, spawn to /health 200, /health to back in every rotation."""

    stop_s: float
    start_s: float
    rotation_s: float

    @property
    def total_s(self) -> float:
        return self.stop_s + self.start_s + self.rotation_s


__all__ = [
    "SERVICES",
    "BackgroundLoop",
    "ConnectionBalancer",
    "Readiness",
    "Replica",
    "ReplicaPlan",
    "ReplicaStack",
    "RestartTimes",
    "next_backend",
    "pipe",
    "proxy_rotation",
]
