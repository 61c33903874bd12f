"""The runbook's smoke checklist against `make run`'s stack: `apgms dev`'s own code (apgms.devstack.run_dev: it
seeds the demo org, makes the demo regulator credential, starts and supervises the four services and the proxy)
runs in a subprocess on this test's fresh database, the session's Redis and a dev dir of its own. Its ports are
the only change: run_dev is given the same processes (DEV_PROCESSES) on free ports, and the services and the proxy
are told where the others are (AUTH_URL, CORE_URL, ..., UPSTREAM_<SERVICE>_URLS), so the test never collides with
a developer's `make run` on 3000-3004. Then `apgms smoke checklist` runs in a subprocess with the demo values the
stack printed: it exits 0, every item is `[ok]` but the two honest `[skip]` lines (Ctrl+C, database down) naming
their tests, and each `[ok]` line shows what it saw (the MFA 401 mfa_required, the listed pack, the verified
backup). A second run against a URL where nothing listens exits 1 at its first item."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apgms.devservers import free_port
from apgms.devstack import DEV_PROCESSES

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 45
CHECKLIST_TIMEOUT_S = 75
# run_dev with DEV_PROCESSES moved to the ports given as {name: port} in argv[1] (a repr of a dict).
RUNNER = """
import ast, asyncio, dataclasses, sys
from apgms.devstack import DEV_PROCESSES, run_dev
ports = ast.literal_eval(sys.argv[1])
specs = [dataclasses.replace(spec, port=ports[spec.name]) for spec in DEV_PROCESSES]
sys.exit(asyncio.run(run_dev(specs)))
"""


def stack_env(database_url: str, redis_url: str, dev_dir: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("APGMS_", "UPSTREAM_", "SERVICE_CLIENT_SECRET")) and not key.endswith("_URL")
    }
    env.update(
        APGMS_DEV_DIR=str(dev_dir),
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        SHUTDOWN_DELAY_S="0",
        COLUMNS="200",
        PYTHONUNBUFFERED="1",
    )
    for name in ("auth", "core", "compliance", "regulator"):
        url = f"http://127.0.0.1:{ports[name]}"
        env[f"{name.upper()}_URL"] = url
        env[f"UPSTREAM_{name.upper()}_URLS"] = url
    return env


def wait_for_line(process: subprocess.Popen[str], marker: str, timeout_s: float) -> str:
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    os.set_blocking(process.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            seen.append(line)
            if marker in line:
                return "".join(seen)
        elif process.poll() is not None:
            break
        else:
            time.sleep(0.05)
    pytest.fail(f"apgms dev did not print {marker!r} within {timeout_s} s:\n{''.join(seen)[-4000:]}")


def demo_values(output: str) -> dict[str, str]:
    values = {
        "password": re.search(r"Dev-only demo logins, password (\S+):", output),
        "email": re.search(r"^\s+(\S+@\S+) \(admin, TOTP secret (?P<totp>[A-Z2-7]+)\)", output, re.M),
        "org": re.search(r"regulator demo-regulator \(org ([0-9a-f-]{36})\), access code:", output),
        "code": re.search(r"^\s+(rgc\.\S+)\s*$", output, re.M),
    }
    missing = [name for name, found in values.items() if found is None]
    assert not missing, f"the demo values {missing} are not in apgms dev's output:\n{output}"
    found = {name: match.group(1) for name, match in values.items() if match is not None}
    admin = values["email"]
    assert admin is not None
    found["totp"] = admin.group("totp")
    return found


def checklist(base_url: str, demo: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("APGMS_")}
    env.update(
        COLUMNS="200",
        APGMS_SMOKE_PASSWORD=demo["password"],
        APGMS_SMOKE_TOTP_SECRET=demo["totp"],
        APGMS_REGULATOR_ACCESS_CODE=demo["code"],
    )
    options = ["--base-url", base_url, "--email", demo["email"], "--org", demo["org"]]
    return subprocess.run(
        [sys.executable, "-m", "apgms", "smoke", "checklist", *options],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CHECKLIST_TIMEOUT_S,
        check=False,
    )


def test_the_smoke_checklist_passes_against_the_dev_stack(
    database_url: str, clean_redis_url: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    ports = {spec.name: free_port() for spec in DEV_PROCESSES}
    env = stack_env(database_url, clean_redis_url, tmp_path / "devdb", ports)
    stack = subprocess.Popen(
        [sys.executable, "-c", RUNNER, repr(ports)],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output = wait_for_line(stack, "Press Ctrl+C to stop.", START_TIMEOUT_S)
        demo = demo_values(output)
        base_url = f"http://127.0.0.1:{ports['api-gateway']}"
        result = checklist(base_url, demo, tmp_path)
        lines = [line for line in result.stdout.splitlines() if line.startswith(("[ok]", "[fail]", "[skip]"))]
        assert result.returncode == 0, result.stdout + result.stderr
        assert not [line for line in lines if line.startswith("[fail]")], result.stdout
        items = [line.split(":")[0] for line in lines]
        assert items == [
            "[ok] make run boots",
            "[ok] /ready",
            "[ok] /regulator/health",
            "[skip] Ctrl+C",
            "[skip] database down",
            "[ok] /metrics",
            "[ok] login",
            "[ok] MFA",
            "[ok] load smoke",
            "[ok] evidence",
            "[ok] apgms smoke regulator",
            "[ok] backup",
            "[ok] every checklist item passed but 2 skipped (covered by the tests named)",
        ], result.stdout
        text = "\n".join(lines)
        assert "covered by tests/integration/test_devstack_supervisor.py" in text
        assert "covered by drill 1 of docs/ops/chaos.md, tests/e2e/test_chaos_database.py" in text
        assert f"GET /admin/export/{demo['org']} without a step-up: 401 mfa_required" in text
        assert re.search(r"POST /compliance/evidence 201, pack [0-9a-f-]{36} listed", text)
        assert re.search(r"\[ok\] apgms smoke regulator: health, login, report, .*logout", text)
        assert re.search(r"\[ok\] backup: evidence-pack_[0-9a-f-]{36}_\S+\.json taken and verified", text)
        assert "The evidence pack verifies: every check holds." in result.stdout

        refused = checklist(f"http://127.0.0.1:{free_port()}", demo, tmp_path)
        assert refused.returncode == 1
        assert refused.stdout.splitlines()[0].startswith("[fail] make run boots: "), refused.stdout
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGINT)
            try:
                stack.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(stack.pid, signal.SIGKILL)
                stack.wait(5)
        if stack.stdout is not None:
            stack.stdout.close()
    assert stack.returncode == 0, "apgms dev stopped cleanly on Ctrl+C"
    assert time.monotonic() - started < 90
