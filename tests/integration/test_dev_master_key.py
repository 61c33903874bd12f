"""Every checkout has a master key and a PII KEK of its own: `make run` creates them on first start (0600, in the
dev dir), reuses them afterwards, and hands the master key to the processes it starts and the KEK file to those
that hold PII (core and compliance); no key is built in."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import re
import signal
import stat
import threading
from pathlib import Path

from rich.console import Console

from apgms.devservers import free_port
from apgms.devstack import KEK_FILE, MASTER_KEY_FILE, ProcessSpec, dev_master_key, run_dev
from shared.kek import kek_provider_from_env

# Serves 200 on /health and /ready, prints a fingerprint of the master key it was given and the id of the KEK it
# reads (shared.kek, as a service would; "" without APGMS_KEK_FILE), exits 0 on SIGTERM.
STANDIN = """
import hashlib, http.server, json, os, signal, threading
from shared.kek import kek_provider_from_env
key = os.environ.get("APGMS_MASTER_KEY", "")
kek = kek_provider_from_env(os.environ).current_kek_id if os.environ.get("APGMS_KEK_FILE") else ""
fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
print(json.dumps({"event": "key", "fingerprint": fingerprint, "kek": kek}), flush=True)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever()
"""


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def test_the_key_is_created_once_private_and_random(tmp_path: Path) -> None:
    first = dev_master_key(tmp_path / "a")
    assert len(base64.b64decode(first, validate=True)) == 32
    assert stat.S_IMODE((tmp_path / "a" / MASTER_KEY_FILE).stat().st_mode) == 0o600
    assert dev_master_key(tmp_path / "a") == first, "the same checkout reuses its key"
    assert dev_master_key(tmp_path / "b") != first, "another checkout gets another key"
    (tmp_path / "a" / MASTER_KEY_FILE).chmod(0o644)
    assert dev_master_key(tmp_path / "a") == first
    assert stat.S_IMODE((tmp_path / "a" / MASTER_KEY_FILE).stat().st_mode) == 0o600, "a loosened file is closed"
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == [MASTER_KEY_FILE], "no draft left behind"


def test_commands_starting_at_once_agree_on_one_key(tmp_path: Path) -> None:
    keys: list[str] = []
    start = threading.Barrier(8)

    def create() -> None:
        start.wait()
        keys.append(dev_master_key(tmp_path))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1


async def run_stack_once(project: Path, standin_dir: Path) -> str:
    """Output of one `make run` (its run_dev) with a stand-in service, from start to a clean stop."""
    output = io.StringIO()
    console = Console(file=output, width=200, color_system=None)
    # A service that holds PII and one that does not.
    specs = [ProcessSpec("core", "standin", free_port()), ProcessSpec("auth", "standin", free_port())]
    # No APGMS_MASTER_KEY and no KEK: the stack must find or make the checkout's own.
    environ = {"PATH": os.environ["PATH"], "APGMS_DEV_DIR": str(project / ".devdb"), "PYTHONPATH": str(standin_dir)}
    task = asyncio.create_task(run_dev(specs, environ, console))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while "Press Ctrl+C to stop." not in output.getvalue() and not task.done():
        assert loop.time() < deadline, output.getvalue()
        await asyncio.sleep(0.05)
    assert not task.done(), output.getvalue()
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 30) == 0, output.getvalue()
    return output.getvalue()


def given_fingerprints(output: str) -> set[str]:
    return set(re.findall(r'"fingerprint": "([0-9a-f]{16})"', output))


def given_keks(output: str) -> dict[str, set[str]]:
    """Process name -> the KEK ids it read (its standin's lines are prefixed `name | `)."""
    keks: dict[str, set[str]] = {}
    for name, kek in re.findall(
        r'(\w+) \| \{"event": "key", "fingerprint": "[0-9a-f]{16}", "kek": "([^"]*)"\}', output
    ):
        keks.setdefault(name, set()).add(kek)
    return keks


def checkout_kek_id(project: Path) -> str:
    path = project / ".devdb" / KEK_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return kek_provider_from_env({"APGMS_KEK_FILE": str(path)}).current_kek_id


async def test_two_fresh_checkouts_get_different_keys_and_each_keeps_its_own(tmp_path: Path, server_dir: Path) -> None:
    standin_dir = tmp_path / "standin"
    standin_dir.mkdir()
    (standin_dir / "standin.py").write_text(STANDIN)
    first_project, second_project = server_dir / "one", server_dir / "two"

    first = await run_stack_once(first_project, standin_dir)
    first_key = (first_project / ".devdb" / MASTER_KEY_FILE).read_text().strip()
    assert stat.S_IMODE((first_project / ".devdb" / MASTER_KEY_FILE).stat().st_mode) == 0o600
    assert given_fingerprints(first) == {fingerprint(first_key)}, "the services get the checkout's key"
    assert "TOTP secret unreadable" not in first
    first_kek = checkout_kek_id(first_project)
    assert given_keks(first) == {"core": {first_kek}, "auth": {""}}, "only a service holding PII gets the KEK"

    again = await run_stack_once(first_project, standin_dir)
    assert (first_project / ".devdb" / MASTER_KEY_FILE).read_text().strip() == first_key
    assert given_fingerprints(again) == {fingerprint(first_key)}
    assert "TOTP secret unreadable" not in again, "the demo admin's secret, sealed at the first run, still opens"
    assert given_keks(again) == {"core": {first_kek}, "auth": {""}}, "the same checkout keeps its KEK"

    second = await run_stack_once(second_project, standin_dir)
    second_key = (second_project / ".devdb" / MASTER_KEY_FILE).read_text().strip()
    assert second_key != first_key
    assert given_fingerprints(second) == {fingerprint(second_key)}
    second_kek = checkout_kek_id(second_project)
    assert second_kek != first_kek and given_keks(second) == {"core": {second_kek}, "auth": {""}}
    keks = [(project / ".devdb" / KEK_FILE).read_text().strip() for project in (first_project, second_project)]
    for secret in (first_key, second_key, *keks):
        assert secret not in first + again + second, "a key is never printed"
