"""Auth benchmark: access-token verifications per second on one core, and logins per second through the real
auth service, with the argon2id cost measured in the same run as the reference.

    .venv/bin/python bench/auth.py            (or: make bench-auth)

Verification: one signed Ed25519 token verified with `shared.tokens.verify` in a loop, one process, one thread,
each followed by the revocation check every guarded route makes (`shared.revocation.refused`) against a snapshot of
`REVOKED_ENTRIES` revoked users and sessions.
Logins: `python -m services.auth` on a free port against a throwaway PostgreSQL (under /tmp), `--concurrency`
aiohttp clients posting `/auth/login` for `--duration` seconds. Each request comes from its own X-Forwarded-For
address (the service trusts one proxy hop), so the per-address login limit does not turn the run into 429s.
CPU per login is the service process's user+system time over the successful logins; the reference is one
`verify_password` measured in-process (the floor a login cannot go under).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
from joserfc.jwk import OKPKey  # noqa: E402

from apgms.devservers import LocalPostgres, free_port  # noqa: E402
from services.auth import store  # noqa: E402
from services.auth.passwords import (  # noqa: E402
    ARGON2_MEMORY_KIB,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    hash_password,
    verify_password,
)
from shared.config import new_master_key  # noqa: E402
from shared.migrations import migrate  # noqa: E402
from shared.revocation import refused, session_entry, user_entry  # noqa: E402
from shared.tokens import (  # noqa: E402
    SIGNING_ALGORITHM,
    USER_AUDIENCE,
    access_claims,
    sign,
    verification_keys,
    verify,
)

ISSUER = "urn:apgms:auth"
TARGET_VERIFICATIONS_PER_S = 10_000
REVOKED_ENTRIES = 10_000
PASSWORD = "bench-password-long-enough"  # noqa: S105 (a throwaway bench user)
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
console = Console()


@dataclass(frozen=True)
class Cost:
    wall_ms: float
    cpu_ms: float


@dataclass(frozen=True)
class LoginRun:
    logins: int
    failures: int
    seconds: float
    service_cpu_s: float
    p50_ms: float
    p99_ms: float

    @property
    def per_s(self) -> float:
        return self.logins / self.seconds

    @property
    def cpu_ms_per_login(self) -> float:
        return 1000 * self.service_cpu_s / max(self.logins, 1)


# --- in-process measurements -----------------------------------------------------------------------------------


def verifications_per_s(duration_s: float) -> tuple[float, int, float]:
    """Verifications (each with its revocation check) per second, how many, and the check's own cost in us."""
    key = OKPKey.generate_key("Ed25519", parameters={"kid": "bench", "alg": SIGNING_ALGORITHM})
    claims = access_claims(
        issuer=ISSUER,
        audience=USER_AUDIENCE,
        subject=str(uuid.uuid4()),
        kind="user",
        org_id=str(uuid.uuid4()),
        role="admin",
        scopes=(),
        amr=["pwd"],
        auth_time=int(time.time()),
        now=time.time(),
        session_id=str(uuid.uuid4()),
    )
    token = sign(claims, key)
    keys = verification_keys({"keys": [key.as_dict(private=False)]})
    revoked = {
        entry(str(uuid.uuid4())): int(time.time())
        for entry in (user_entry, session_entry)
        for _ in range(REVOKED_ENTRIES // 2)
    }
    for _ in range(200):  # warm-up
        assert not refused(revoked, verify(token, keys, issuer=ISSUER, audience=USER_AUDIENCE))
    count, started = 0, time.perf_counter()
    deadline = started + duration_s
    while time.perf_counter() < deadline:
        for _ in range(500):
            refused(revoked, verify(token, keys, issuer=ISSUER, audience=USER_AUDIENCE))
        count += 500
    rate = count / (time.perf_counter() - started)
    principal = verify(token, keys, issuer=ISSUER, audience=USER_AUDIENCE)
    checks, check_started = 100_000, time.perf_counter()
    for _ in range(checks):
        refused(revoked, principal)
    return rate, count, 1e6 * (time.perf_counter() - check_started) / checks


def argon2_cost(rounds: int) -> Cost:
    password_hash = hash_password(PASSWORD)
    verify_password(password_hash, PASSWORD)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        assert verify_password(password_hash, PASSWORD)
    return Cost(1000 * (time.perf_counter() - wall) / rounds, 1000 * (time.process_time() - cpu) / rounds)


# --- the auth service under load -------------------------------------------------------------------------------


@contextmanager
def throwaway_postgres() -> Iterator[LocalPostgres]:
    base = Path(tempfile.mkdtemp(prefix="apgms-bench-auth-", dir="/tmp"))
    base.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root
    server = LocalPostgres(base / "pg")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


async def prepare_database(dsn: str, users: int) -> list[str]:
    """One user per concurrent client: one account logging in from many workers at once is throttled by design
    (at most five of its attempts are checked at a time)."""
    await migrate(dsn)
    connection = await asyncpg.connect(dsn)
    try:
        org_id = await store.create_org(connection, "Bench Org")
        password_hash = hash_password(PASSWORD)
        emails = [f"bench{n}@example.com" for n in range(users)]
        for email in emails:
            await store.create_user(connection, org_id, email, password_hash, "finance")
        return emails
    finally:
        await connection.close()


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S  # utime, stime


@contextmanager
def auth_service(dsn: str, port: int, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "APGMS_ENV": "test",
        "APGMS_MASTER_KEY": new_master_key(),  # a throwaway database: a throwaway key
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": dsn,
        "LOG_LEVEL": "warning",
        "TRUSTED_PROXY_HOPS": "1",
        "SHUTDOWN_DELAY_S": "0",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("REDIS_URL", None)
    popen = subprocess.Popen(
        [sys.executable, "-m", "services.auth"],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if popen.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the auth service did not become ready") from None
                time.sleep(0.1)
        yield popen
    finally:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


async def login_load(url: str, emails: list[str], pid: int, concurrency: int, duration_s: float) -> LoginRun:
    latencies: list[float] = []
    failures = 0
    sequence = 0

    async def worker(session: aiohttp.ClientSession, email: str, deadline: float) -> None:
        nonlocal failures, sequence
        while time.perf_counter() < deadline:
            sequence += 1
            address = f"10.{(sequence >> 16) & 255}.{(sequence >> 8) & 255}.{sequence & 255}"
            started = time.perf_counter()
            async with session.post(
                url, json={"email": email, "password": PASSWORD}, headers={"x-forwarded-for": address}
            ) as response:
                await response.read()
                if response.status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        warm_up_until = time.perf_counter() + 1.0
        await asyncio.gather(*(worker(session, email, warm_up_until) for email in emails[:concurrency]))
        latencies.clear()
        failures = 0
        cpu_before, started = process_cpu_s(pid), time.perf_counter()
        await asyncio.gather(*(worker(session, email, started + duration_s) for email in emails[:concurrency]))
        elapsed, cpu = time.perf_counter() - started, process_cpu_s(pid) - cpu_before
    latencies.sort()
    p50 = 1000 * latencies[len(latencies) // 2] if latencies else 0.0
    p99 = 1000 * latencies[min(int(len(latencies) * 0.99), len(latencies) - 1)] if latencies else 0.0
    return LoginRun(len(latencies), failures, elapsed, cpu, p50, p99)


def measure_logins(concurrency: int, duration_s: float) -> LoginRun:
    with throwaway_postgres() as postgres, tempfile.TemporaryDirectory(prefix="apgms-bench-auth-cwd-") as cwd:
        emails = asyncio.run(prepare_database(postgres.dsn, concurrency))
        port = free_port()
        with auth_service(postgres.dsn, port, Path(cwd)) as service:
            return asyncio.run(
                login_load(f"http://127.0.0.1:{port}/auth/login", emails, service.pid, concurrency, duration_s)
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verify-seconds", type=float, default=3.0)
    parser.add_argument("--argon2-rounds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of login load")
    args = parser.parse_args()

    with console.status("verifying tokens"):
        verify_rate, verified, check_us = verifications_per_s(args.verify_seconds)
    with console.status("timing argon2id"):
        argon2 = argon2_cost(args.argon2_rounds)
    with console.status(f"logging in with {args.concurrency} clients for {args.duration:g} s"):
        logins = measure_logins(args.concurrency, args.duration)

    params = f"argon2id t={ARGON2_TIME_COST}, m={ARGON2_MEMORY_KIB // 1024} MiB, p={ARGON2_PARALLELISM}"
    table = Table(title=f"auth benchmark ({os.cpu_count()} CPUs, {params})")
    table.add_column("measure")
    table.add_column("result", justify="right")
    table.add_column("reference / note")
    table.add_row(
        "token verifications / s (1 core)",
        f"{verify_rate:,.0f}",
        f"target {TARGET_VERIFICATIONS_PER_S:,}; {1e6 / verify_rate:.1f} us each ({verified:,} verified)",
    )
    table.add_row(
        f"revocation check ({REVOKED_ENTRIES:,} revoked)",
        f"{check_us:.2f} us",
        f"{check_us * verify_rate / 1e4:.1f}% of a verification (included in the rate above)",
    )
    table.add_row(
        "verify_password in-process",
        f"{argon2.cpu_ms:.1f} ms CPU",
        f"{argon2.wall_ms:.1f} ms wall; reference for a login's floor",
    )
    table.add_row(
        f"logins / s (c={args.concurrency}, {args.duration:g} s)",
        f"{logins.per_s:,.1f}",
        f"{logins.logins} ok, {logins.failures} failed; p50 {logins.p50_ms:.0f} ms, p99 {logins.p99_ms:.0f} ms",
    )
    table.add_row(
        "service CPU per login",
        f"{logins.cpu_ms_per_login:.1f} ms",
        f"{logins.cpu_ms_per_login / argon2.cpu_ms:.2f}x argon2; "
        f"ceiling {1000 * (os.cpu_count() or 1) / logins.cpu_ms_per_login:.0f} logins/s on all CPUs",
    )
    console.print(table)
    passed = verify_rate >= TARGET_VERIFICATIONS_PER_S
    console.print(
        f"[{'green' if passed else 'red'}]{'PASS' if passed else 'MISS'}[/] token verification >= "
        f"{TARGET_VERIFICATIONS_PER_S:,}/s per core"
    )
    return 0 if passed and logins.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
