"""A Redis server of our own for dev and tests: a `redis-server` child process on loopback, persistence off.

Start to first PING takes about 15 ms; see `apgms.devservers` for finding and installing the binary.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from apgms.devservers import (
    PORT_ATTEMPTS,
    REDIS_MISSING,
    DevServerError,
    die_with_parent,
    find_redis_server,
    free_port,
    process_matches,
    read_pid_file,
)

REDIS_START_TIMEOUT_S = 10.0
REDIS_STOP_TIMEOUT_S = 10.0


def redis_ping(port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class LocalRedis:
    """A redis-server child process on loopback with persistence off, working files in `dir`."""

    def __init__(self, dir: Path, port: int | None = None, *, binary: Path | None = None) -> None:
        self.dir = dir.absolute()
        self.log_file = self.dir / "redis.log"
        self.pid_file = self.dir / "redis.pid"
        self._requested_port = port
        self._port: int | None = None
        self._binary = binary
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise DevServerError("Redis is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        if self._process is not None:
            return
        binary = self._binary or find_redis_server()
        if binary is None:
            raise DevServerError(REDIS_MISSING)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._stop_stale_server()
        for attempt in range(1 if self._requested_port else PORT_ATTEMPTS):
            port = self._requested_port or free_port()
            process = self._spawn(binary, port)
            deadline = time.monotonic() + REDIS_START_TIMEOUT_S
            while process.poll() is None and time.monotonic() < deadline:
                if redis_ping(port):
                    self._process, self._port = process, port
                    return
                time.sleep(0.005)
            _terminate(process, REDIS_STOP_TIMEOUT_S)
            if attempt + 1 < PORT_ATTEMPTS and not self._requested_port:
                continue
            log_tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-5:])
            raise DevServerError(f"redis-server did not answer PING on port {port}:\n{log_tail}")

    def stop(self) -> None:
        if self._process is not None:
            _terminate(self._process, REDIS_STOP_TIMEOUT_S)
        self._process = None
        self._port = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _spawn(self, binary: Path, port: int) -> subprocess.Popen[bytes]:
        argv = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--pidfile", str(self.pid_file)]
        with self.log_file.open("ab") as log:
            # Own session: a Ctrl+C in the terminal reaches only the supervisor, which stops us last.
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def _stop_stale_server(self) -> None:
        pid = read_pid_file(self.pid_file)
        if pid is not None and process_matches(pid, "redis-server"):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + REDIS_STOP_TIMEOUT_S
            while process_matches(pid, "redis-server") and time.monotonic() < deadline:
                time.sleep(0.02)
        self.pid_file.unlink(missing_ok=True)


def _terminate(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
