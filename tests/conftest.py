"""Servers and processes for the whole suite.

A throwaway PostgreSQL and Redis per session (from the machine's binaries, on free loopback ports, under /tmp),
a migrated template database, a fresh copy of it per test (`database_url`), and real service processes for
end-to-end tests (`start_service`). TEST_DATABASE_URL / TEST_REDIS_URL point the suite at existing servers
instead; the databases it creates there have unique names and are dropped afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import pytest_asyncio
import redis

from apgms.devservers import (
    LocalPostgres,
    create_database,
    die_with_parent,
    drop_database,
    ensure_redis_server,
    free_port,
)
from apgms.localredis import LocalRedis
from apgms.replicas import http_status
from shared.config import (
    CALLING_SERVICES,
    SERVICE_CLIENT_SECRET_VARIABLE,
    new_master_key,
    new_service_client_secret,
    service_client_secret_variable,
)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DATABASE = "apgms_template"
SERVICE_START_TIMEOUT_S = 20.0
# Above a service's drain (SHUTDOWN_DELAY_S, 0 in tests, plus in-flight requests).
SERVICE_STOP_TIMEOUT_S = 20.0
LOG_WAIT_TIMEOUT_S = 10.0

LogRecord = dict[str, Any]


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # A CI timeout or `kill` sends SIGTERM, which would end pytest without its teardown and leave the session's
    # PostgreSQL (a daemon of its own) running. As a KeyboardInterrupt, the session is torn down first.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    # One random master key per session (there is no built-in one): service processes and CLI runs inherit it, and
    # tests that open what a service sealed read it from os.environ.
    os.environ.setdefault("APGMS_MASTER_KEY", new_master_key())
    # The service clients likewise: auth reads every SERVICE_CLIENT_SECRET_<NAME>, and `start_service` gives each
    # calling service its own as SERVICE_CLIENT_SECRET.
    for name in CALLING_SERVICES:
        os.environ.setdefault(service_client_secret_variable(name), new_service_client_secret())


@contextmanager
def throwaway_dir(prefix: str) -> Iterator[Path]:
    """A directory under /tmp that the `postgres` user can traverse (mkdtemp makes it 0700), removed at the end."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """An empty directory under /tmp for a server of this test's own (PostgreSQL as root needs /tmp's path)."""
    with throwaway_dir("apgms-test-") as path:
        yield path


# --- PostgreSQL and Redis --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a superuser connection to the session's server (its `postgres` database); never the machine's own."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    with throwaway_dir("apgms-test-pg-") as base, LocalPostgres(base / "pg") as server:
        yield server.dsn


def worker_redis_url(url: str) -> str:
    """The database of `url` for this pytest-xdist worker: gw0 keeps it, gwN adds N, so parallel workers sharing one
    external Redis never flush each other's keys (`clean_redis_url` empties its database before each test)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    offset = int(worker.removeprefix("gw") or 0)
    parts = urlsplit(url)
    base = int(parts.path.lstrip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{base + offset}"))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the session's Redis (database 0); shared by every test."""
    external = os.environ.get("TEST_REDIS_URL")
    if external:
        yield worker_redis_url(external)
        return
    with throwaway_dir("apgms-test-redis-") as base, LocalRedis(base, binary=ensure_redis_server()) as server:
        yield server.url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def migrated_template(postgres_dsn: str) -> AsyncIterator[str]:
    """Name of a database with every service's migrations applied; `database_url` hands out copies of it."""
    from shared.migrations import migrate

    external = bool(os.environ.get("TEST_DATABASE_URL"))
    name = f"{TEMPLATE_DATABASE}_{uuid.uuid4().hex[:12]}" if external else TEMPLATE_DATABASE
    await drop_database(postgres_dsn, name)
    template_dsn = await create_database(postgres_dsn, name)
    await migrate(template_dsn)
    yield name
    await drop_database(postgres_dsn, name)


@pytest_asyncio.fixture
async def database_url(postgres_dsn: str, migrated_template: str) -> AsyncIterator[str]:
    """DSN of a fresh, migrated database for this test only (a copy of the template, dropped afterwards)."""
    name = f"t_{uuid.uuid4().hex}"
    dsn = await create_database(postgres_dsn, name, template=migrated_template)
    yield dsn
    await drop_database(postgres_dsn, name)


# --- service processes -----------------------------------------------------------------------------------------


class ServiceProcess:
    """A service running as a real process; its stdout lines (JSON logs) and stderr are collected as they come."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], port: int) -> None:
        self.name = name
        self.popen = popen
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._changed = threading.Condition()
        assert popen.stdout is not None and popen.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(popen.stdout, self._stdout), daemon=True),
            threading.Thread(target=self._read, args=(popen.stderr, self._stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def output(self) -> list[str]:
        """Every stdout line so far, as text."""
        with self._changed:
            return list(self._stdout)

    def stderr_lines(self) -> list[str]:
        with self._changed:
            return list(self._stderr)

    def log_lines(self) -> list[LogRecord]:
        """Every stdout line so far that is a JSON object, parsed."""
        records = []
        for line in self.output():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def wait_for_log(self, predicate: Callable[[LogRecord], bool], timeout: float = LOG_WAIT_TIMEOUT_S) -> LogRecord:
        """The first log record matching `predicate`, waiting for it; fails the test with the recent output."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for record in self.log_lines():
                    if predicate(record):
                        return record
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.popen.poll() is not None and not self._reading()):
                    break
                self._changed.wait(min(remaining, 0.1))
        raise AssertionError(f"{self.name}: no matching log line within {timeout} s\n{self.describe()}")

    async def wait_for_log_async(
        self, predicate: Callable[[LogRecord], bool], timeout: float = LOG_WAIT_TIMEOUT_S
    ) -> LogRecord:
        return await asyncio.to_thread(self.wait_for_log, predicate, timeout)

    def wait_healthy(self, timeout: float = SERVICE_START_TIMEOUT_S) -> None:
        """Until `/health` answers 200; fails with the process's output if it exits or the time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                self._join_readers()
                raise AssertionError(f"{self.name} exited with code {self.popen.returncode}\n{self.describe()}")
            if http_status(self.port, "/health") == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: /health not 200 within {timeout} s\n{self.describe()}")

    def wait_exit(self, timeout: float = SERVICE_STOP_TIMEOUT_S) -> int:
        """The exit code once the process has ended on its own (all its output collected)."""
        code = self.popen.wait(timeout)
        self._join_readers()
        return code

    def send_signal(self, signum: signal.Signals) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    async def terminate_timed(self, timeout: float = 10) -> tuple[int, float]:
        """SIGTERM; the exit code and how many seconds the process took to end (for shutdown bounds)."""
        started = time.monotonic()
        self.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.popen.wait, timeout)
        return code, time.monotonic() - started

    def interrupt_while_draining(self) -> tuple[int, float]:
        """SIGTERM, then once the process says it is draining a second signal (SIGINT); the exit code and how
        many seconds after the second signal it ended."""
        self.send_signal(signal.SIGTERM)
        self.wait_for_log(lambda line: line.get("event") == "draining")
        started = time.monotonic()
        self.send_signal(signal.SIGINT)
        code = self.popen.wait(timeout=5)
        return code, time.monotonic() - started

    def stop(self, timeout: float = SERVICE_STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait for the drain, SIGKILL if it takes longer than `timeout`; the exit code."""
        self.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._join_readers()
        return self.popen.returncode

    def describe(self) -> str:
        tail = "\n".join(self.output()[-20:])
        errors = "\n".join(self.stderr_lines()[-20:])
        return f"--- stdout (last lines) ---\n{tail}\n--- stderr ---\n{errors}"

    def _read(self, stream: IO[bytes], lines: list[str]) -> None:
        for raw in stream:
            with self._changed:
                lines.append(raw.decode(errors="replace").rstrip("\r\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _reading(self) -> bool:
        return any(reader.is_alive() for reader in self._readers)

    def _join_readers(self) -> None:
        for reader, stream in zip(self._readers, (self.popen.stdout, self.popen.stderr), strict=True):
            reader.join(5)
            if stream is not None and not reader.is_alive():
                stream.close()


StartService = Callable[..., ServiceProcess]


def service_env(
    base: Mapping[str, str],
    port: int,
    database_url: str,
    redis_url: str,
    overrides: Mapping[str, str | None],
    name: str | None = None,
) -> dict[str, str]:
    """A service's environment in tests; an override of None removes the variable. A calling service named by
    `name` gets its client secret (the session's, which the auth process of the test knows too)."""
    env = dict(base)
    if name in CALLING_SERVICES and (secret := base.get(service_client_secret_variable(name))):
        env[SERVICE_CLIENT_SECRET_VARIABLE] = secret
    env.update(
        APGMS_ENV="test",
        HOST="127.0.0.1",
        PORT=str(port),
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        SHUTDOWN_DELAY_S="0",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")])),
    )
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@pytest.fixture
def clean_redis_url(redis_url: str) -> str:
    """The session's Redis with database 0 emptied first, so counters and sessions never leak between tests."""
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    return redis_url


@pytest.fixture
def start_service(database_url: str, clean_redis_url: str, tmp_path: Path) -> Iterator[StartService]:
    """Factory: `start_service(name, env_overrides=None, *, module=None, wait=True) -> ServiceProcess`.

    Runs `python -m services.<name>` (or `python -m <module>`, e.g. `tests.e2e.slow_service`) on a free port
    with APGMS_ENV=test, this test's fresh database and the session's Redis (emptied before the test), and waits
    for `/health` 200 unless `wait=False`. An override of None removes a variable. The working directory is a
    temp dir, so a developer's `.env` never leaks in. Every process is stopped (SIGTERM, then SIGKILL) after
    the test.
    """
    started: list[ServiceProcess] = []

    def start(
        name: str,
        env_overrides: Mapping[str, str | None] | None = None,
        *,
        module: str | None = None,
        wait: bool = True,
    ) -> ServiceProcess:
        if module is None and not (ROOT / "services" / name / "__main__.py").exists():
            raise ValueError(f"there is no services/{name}/__main__.py; pass module= to run something else")
        port = free_port()
        env = service_env(os.environ, port, database_url, clean_redis_url, env_overrides or {}, name)
        if env.get("PORT") != str(port):
            port = int(env["PORT"])
        cwd = tmp_path / f"{name}-{len(started)}"
        cwd.mkdir()
        popen = subprocess.Popen(
            [sys.executable, "-m", module or f"services.{name}"],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        process = ServiceProcess(name, popen, port)
        started.append(process)
        if wait:
            process.wait_healthy()
        return process

    yield start
    for process in reversed(started):
        process.stop()
