"""The test harness itself: a pytest ended by SIGTERM (a CI timeout, `kill`) still stops its throwaway servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]


def accepts_connections(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_to_pytest_still_stops_the_session_postgres() -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("TEST_DATABASE_URL", "TEST_REDIS_URL")}
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/integration/sigterm_probe.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert run.stdout is not None
        port = None
        deadline = time.monotonic() + 60
        for line in run.stdout:
            if line.startswith("PROBE-READY "):
                port = urlsplit(line.split()[1]).port
                break
            assert time.monotonic() < deadline, "the probe never started"
        assert port is not None and accepts_connections(port)
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) != 0
        deadline = time.monotonic() + 10
        while accepts_connections(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not accepts_connections(port), "the session's PostgreSQL outlived its pytest"
    finally:
        if run.poll() is None:
            run.kill()
        run.communicate()
