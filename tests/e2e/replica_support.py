"""Helpers for the multi-replica drill (test_replica_drill.py): the steady stream of reads and idempotent writes
spread over the proxies, what each request got, the rotation commands run as the operator runs them, and reads of
what the database kept.

    stream = Stream(http, stack.proxy_urls, finance_token, regulator_token)
    task = asyncio.create_task(stream.run(stop, rate=15))
    ...                                     # restart replicas, rotate keys
    stop.set(); await task
    assert stream.lost() == []              # every request got its expected answer
    keys = stream.written                   # Idempotency-Key -> bank line id (both answers agreed)

Lost means: a read or regulator view that did not answer 200, a first write that did not answer 201, a replay (the
same key through the other proxy) that did not answer 201 with `Idempotent-Replay: true` and the same line, or any
request that got no answer at all (a connection error, a timeout). A 502/503/504 from a proxy counts as lost:
the proxy retries an idempotent method on another replica after a connection failure, and a replica drains before
it closes its listener, so a restart one at a time is meant to lose nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from multidict import CIMultiDict

ROOT = Path(__file__).resolve().parents[2]
REQUEST_TIMEOUT_S = 20.0
REPLAY_HEADER = "idempotent-replay"
# Amounts of the drill's writes: -(BASE + n).00 for the n-th key, so each line is found by its amount.
AMOUNT_BASE = 100


@dataclass(frozen=True)
class Outcome:
    """One request of the stream: what it was, through which proxy, and what came back (status None: no answer)."""

    kind: str  # "read", "regulator", "write", "write-retry", "replay"
    proxy: str
    status: int | None
    ok: bool
    note: str = ""


def amount_of(n: int) -> str:
    return f"-{AMOUNT_BASE + n}.00"


def write_body(n: int) -> dict[str, str]:
    return {
        "date": "2025-07-01",
        "amount": amount_of(n),
        "payee": f"Drill payee {n}",
        "description": f"Drill write {n}",
        "gst_amount": "-1.00",
        "paygw_amount": "0.00",
    }


@dataclass
class Stream:
    """Requests at a fixed rate (open model: each one starts on time whether or not earlier ones returned),
    turn by turn a bank-lines read, a regulator view and an idempotent write, alternating over the proxies."""

    http: aiohttp.ClientSession
    proxies: list[str]
    token: str
    regulator_token: str
    outcomes: list[Outcome] = field(default_factory=list)
    written: dict[str, str] = field(default_factory=dict)  # key -> line id
    keys_sent: list[str] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, stop: asyncio.Event, rate: float) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        n = 0
        while not stop.is_set():
            proxy = self.proxies[n % len(self.proxies)]
            other = self.proxies[(n + 1) % len(self.proxies)]
            kind = n % 3
            if kind == 0:
                work = self._read(proxy)
            elif kind == 1:
                work = self._regulator(proxy)
            else:
                work = self._write(n // 3, proxy, other)
            task = asyncio.ensure_future(work)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1
            await asyncio.sleep(max(started + n / rate - loop.time(), 0.0))
        if self._tasks:
            await asyncio.gather(*self._tasks)

    def lost(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if not outcome.ok]

    async def _send(
        self, method: str, url: str, token: str, **kwargs: Any
    ) -> tuple[int | None, Any, CIMultiDict[str], str]:
        headers = {"authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        try:
            async with self.http.request(
                method, url, headers=headers, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S), **kwargs
            ) as response:
                text = await response.text()
                try:
                    body = await response.json(content_type=None) if text else None
                except ValueError:
                    body = text
                return response.status, body, response.headers.copy(), ""
        except (aiohttp.ClientError, TimeoutError) as error:
            return None, None, CIMultiDict(), f"{type(error).__name__}: {error}"

    async def _read(self, proxy: str) -> None:
        status, body, _, error = await self._send("GET", f"{proxy}/bank-lines?limit=5", self.token)
        self.outcomes.append(Outcome("read", proxy, status, status == 200, error or _brief(status, body)))

    async def _regulator(self, proxy: str) -> None:
        # The regulator's summary reads core through core's balancer: a service-to-service call on every request.
        status, body, _, error = await self._send("GET", f"{proxy}/regulator/bank-lines/summary", self.regulator_token)
        self.outcomes.append(Outcome("regulator", proxy, status, status == 200, error or _brief(status, body)))

    async def _write(self, n: int, proxy: str, other: str) -> None:
        key = f"drill-{n}-{uuid.uuid4().hex[:8]}"
        self.keys_sent.append(key)
        headers = {"idempotency-key": key}
        status, body, _, error = await self._send(
            "POST", f"{proxy}/bank-lines", self.token, json=write_body(n), headers=headers
        )
        self.outcomes.append(Outcome("write", proxy, status, status == 201, error or _brief(status, body)))
        if status != 201:
            # What a client does with an Idempotency-Key when the answer is lost: the same request again.
            status, body, _, error = await self._send(
                "POST", f"{proxy}/bank-lines", self.token, json=write_body(n), headers=headers
            )
            self.outcomes.append(Outcome("write-retry", proxy, status, status == 201, error or _brief(status, body)))
        first_id = body.get("id") if status == 201 and isinstance(body, dict) else None
        status, body, replay_headers, error = await self._send(
            "POST", f"{other}/bank-lines", self.token, json=write_body(n), headers=headers
        )
        replayed = status == 201 and replay_headers.get(REPLAY_HEADER, "").lower() == "true"
        same = isinstance(body, dict) and first_id is not None and body.get("id") == first_id
        self.outcomes.append(
            Outcome("replay", other, status, replayed and same, error or _brief(status, body, replayed=replayed))
        )
        if isinstance(body, dict) and status == 201:
            self.written[key] = str(body.get("id"))


def _brief(status: int | None, body: Any, *, replayed: bool | None = None) -> str:
    code = body.get("code") or body.get("type") if isinstance(body, dict) else None
    flag = "" if replayed is None else f" replayed={replayed}"
    return f"{status} {code or ''}{flag}".strip()


def summary(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    """Per kind, how many requests got each status (None: no answer)."""
    counts: dict[str, dict[str, int]] = {}
    for outcome in outcomes:
        per_kind = counts.setdefault(outcome.kind, {})
        per_kind[str(outcome.status)] = per_kind.get(str(outcome.status), 0) + 1
    return counts


# --- the operator's commands -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandRun:
    code: int
    output: str


async def run_apgms(database_url: str, cwd: Path, *args: str) -> CommandRun:
    """`python -m apgms <args>` against the test database, with the session's master key, as an operator runs it."""
    env = {
        **os.environ,
        "APGMS_ENV": "test",
        "DATABASE_URL": database_url,
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "200",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apgms",
        *args,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return CommandRun(process.returncode or 0, output.decode(errors="replace"))


def new_key_of(run: CommandRun, label: str) -> str:
    """The new kid a rotation printed (`New signing key: <kid>`, `New evidence signing key: <kid>`)."""
    match = re.search(rf"{label}: (\S+?)(?:\s|\(|$)", run.output)
    assert run.code == 0 and match is not None, run.output
    return match.group(1)


# --- what the database kept ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kept:
    lines_per_amount: dict[str, int]
    idempotency_records: dict[str, int]  # key -> records
    create_audits_per_target: dict[str, int]  # "bank_line:<id>" -> records


async def kept(database_url: str, org_id: uuid.UUID) -> Kept:
    connection = await asyncpg.connect(database_url)
    try:
        lines = await connection.fetch(
            "SELECT amount::text AS amount, count(*) AS n FROM core.bank_lines WHERE org_id = $1 GROUP BY amount",
            org_id,
        )
        records = await connection.fetch(
            "SELECT key, count(*) AS n FROM idempotency.records WHERE org_id = $1 AND route = 'POST /bank-lines' "
            "GROUP BY key",
            org_id,
        )
        audits = await connection.fetch(
            "SELECT target, count(*) AS n FROM audit.records WHERE org_id = $1 AND action = 'bank_line.create' "
            "GROUP BY target",
            org_id,
        )
    finally:
        await connection.close()
    return Kept(
        lines_per_amount={row["amount"]: row["n"] for row in lines},
        idempotency_records={row["key"]: row["n"] for row in records},
        create_audits_per_target={row["target"]: row["n"] for row in audits},
    )
