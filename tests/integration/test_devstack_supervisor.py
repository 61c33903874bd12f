"""`apgms dev`'s supervisor with small stand-in processes: readiness, restarts, config errors, shutdown."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from apgms.devservers import free_port, process_matches, read_pid_file
from apgms.devstack import ProcessSpec, Supervisor, child_env, run_dev

# Serves 200 on /health and /ready, logs JSON lines, exits 0 on SIGTERM; MODE=crash exits 1 at once,
# MODE=config exits 2 like a service with a bad variable, MODE=stubborn ignores SIGTERM.
STANDIN = """
import http.server, json, os, signal, sys, threading
mode = os.environ.get("MODE", "serve")
print(json.dumps({"event": "starting", "mode": mode, "db": os.environ.get("DATABASE_URL")}), flush=True)
if mode == "crash":
    sys.exit(1)
if mode == "config":
    print("DATABASE_URL is required but not set", file=sys.stderr, flush=True)
    sys.exit(2)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path in ("/health", "/ready") else 404)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
def on_term(signum, frame):
    if mode != "stubborn":
        threading.Thread(target=server.shutdown).start()
signal.signal(signal.SIGTERM, on_term)
server.serve_forever()
print(json.dumps({"event": "standin shut down cleanly"}), flush=True)
"""


@pytest.fixture
def standin_dir(tmp_path: Path) -> Path:
    (tmp_path / "standin.py").write_text(STANDIN)
    return tmp_path


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, name: str, line: str) -> None:
        self.lines.append((name, line))

    def of(self, name: str) -> list[str]:
        return [line for who, line in self.lines if who == name]


def supervisor_for(modes: dict[str, str], cwd: Path, stop: asyncio.Event, recorder: Recorder) -> Supervisor:
    specs = [ProcessSpec(name, "standin", free_port()) for name in modes]
    return Supervisor(
        specs,
        lambda spec: {**child_env(os.environ, spec, "postgresql://x@127.0.0.1:1/db", None), "MODE": modes[spec.name]},
        stop,
        recorder,
        cwd=cwd,
    )


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_processes_become_ready_stream_logs_and_stop_cleanly(standin_dir: Path) -> None:
    recorder, stop = Recorder(), asyncio.Event()
    supervisor = supervisor_for({"alpha": "serve", "beta": "serve"}, standin_dir, stop, recorder)
    supervisor.start()
    try:
        assert await supervisor.wait_ready(10) == {"alpha": True, "beta": True}
        pids = [child.pid for child in supervisor.children]
    finally:
        await supervisor.shutdown()

    assert '{"event": "starting", "mode": "serve", "db": "postgresql://x@127.0.0.1:1/db"}' in recorder.of("alpha")
    for name in ("alpha", "beta"):
        assert recorder.of(name)[-1] == '{"event": "standin shut down cleanly"}'
    assert [child.process.returncode for child in supervisor.children if child.process] == [0, 0]
    assert all(child.starts == 1 for child in supervisor.children)
    assert not any(process_matches(pid, "standin") for pid in pids if pid)


async def test_a_crashing_process_is_restarted_with_growing_delays(standin_dir: Path) -> None:
    recorder, stop = Recorder(), asyncio.Event()
    supervisor = supervisor_for({"flaky": "crash"}, standin_dir, stop, recorder)
    loop = asyncio.get_running_loop()
    started = loop.time()
    supervisor.start()
    try:
        await wait_until(lambda: supervisor.children[0].starts >= 3)
        elapsed = loop.time() - started
    finally:
        await supervisor.shutdown()
    restarts = [line for line in recorder.of("flaky") if "restarting" in line]
    assert restarts[:2] == ["exited with code 1; restarting in 0.5 s", "exited with code 1; restarting in 1 s"]
    assert elapsed >= 1.5
    assert not supervisor.config_error


async def test_exit_code_2_stops_everything_without_restarting(standin_dir: Path) -> None:
    recorder, stop = Recorder(), asyncio.Event()
    supervisor = supervisor_for({"good": "serve", "bad": "config"}, standin_dir, stop, recorder)
    supervisor.start()
    try:
        await asyncio.wait_for(stop.wait(), 10)
    finally:
        await supervisor.shutdown()
    bad = next(child for child in supervisor.children if child.spec.name == "bad")
    assert bad.starts == 1
    assert supervisor.config_error
    assert "DATABASE_URL is required but not set" in recorder.of("bad")
    assert recorder.of("bad")[-1] == "exited with code 2: its configuration is invalid (see above)"
    good = next(child for child in supervisor.children if child.spec.name == "good")
    # "good" may be stopped before it has printed anything (the bad one can fail first): what matters is that it
    # was started once, stopped, and not restarted.
    assert good.starts == 1
    assert good.process is not None and good.process.returncode is not None


async def test_a_process_ignoring_sigterm_is_killed_after_the_timeout(standin_dir: Path) -> None:
    recorder, stop = Recorder(), asyncio.Event()
    supervisor = supervisor_for({"stubborn": "stubborn"}, standin_dir, stop, recorder)
    supervisor.start()
    assert await supervisor.wait_ready(10) == {"stubborn": True}
    await supervisor.shutdown(timeout_s=0.5)
    process = supervisor.children[0].process
    assert process is not None and process.returncode == -signal.SIGKILL


async def test_run_dev_starts_postgres_migrates_serves_and_stops_on_sigterm(
    standin_dir: Path, server_dir: Path
) -> None:
    output = io.StringIO()
    console = Console(file=output, width=200, color_system=None)
    specs = [ProcessSpec("alpha", "standin", free_port())]
    environ = {"PATH": os.environ["PATH"], "APGMS_DEV_DIR": str(server_dir), "PYTHONPATH": str(standin_dir)}

    async def run_until_ready() -> int:
        task = asyncio.create_task(run_dev(specs, environ, console))
        await wait_until(lambda: "Press Ctrl+C to stop." in output.getvalue() or task.done(), timeout_s=30)
        assert not task.done(), output.getvalue()
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(task, 30)

    assert await run_until_ready() == 0
    first = output.getvalue()
    assert "alpha" in first and f"http://127.0.0.1:{specs[0].port}" in first and "ready" in first
    assert "PostgreSQL" in first and f"local data: {server_dir / 'pg'}, {server_dir / 'redis'}" in first
    assert "standin shut down cleanly" in first
    assert first.rstrip().endswith("Stopped.")
    assert read_pid_file(server_dir / "pg" / "postmaster.pid") is None, "PostgreSQL was stopped"

    version_stamp = (server_dir / "pg" / "PG_VERSION").stat().st_mtime_ns
    output.truncate(0)
    output.seek(0)
    assert await run_until_ready() == 0, "a second run right away reuses the ports and the data"
    assert "Database schema is up to date." in output.getvalue()
    assert (server_dir / "pg" / "PG_VERSION").stat().st_mtime_ns == version_stamp, "the data dir was reused"
