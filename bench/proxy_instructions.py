"""Instructions per proxied request, counted by valgrind's callgrind: our proxy against the minimal aiohttp proxy
(`bench/minimal_proxy.py`), both embedded in granian as `python -m proxy` runs, under the same load in one run.

    .venv/bin/python bench/proxy_instructions.py       (or: make bench-proxy-instructions)

Wall-clock throughput on a shared VM moves 15% from run to run; instruction counts repeat to a fraction of a
percent, so a change to the request path can be judged on one run. Counting starts after a warm-up
(`callgrind_control -i on`) and covers every thread of the proxy process; the upstream and the load generator
run outside valgrind. It counts user-space instructions only: system calls and cache misses are not in it, which
is why bench/proxy.py (wall clock, against nginx) stays the benchmark of record. valgrind comes from apt.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from apgms.devservers import free_port  # noqa: E402
from bench.proxy import BIN, LOAD_CPU, SERVER_CPU, granian, process, wait_http  # noqa: E402

MINIMAL = "minimal proxy"
SHIPPED = "proxy (python -m proxy)"
PATH = "/bank-lines"
console = Console()


def ensure_valgrind() -> None:
    if shutil.which("valgrind") and shutil.which("callgrind_control"):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit("this benchmark needs valgrind: sudo apt-get install valgrind")
    with console.status("installing valgrind with apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "valgrind"], check=True, capture_output=True)


async def load(url: str, requests: int, concurrency: int) -> int:
    """`requests` GETs over `concurrency` keep-alive connections; how many answered 200."""
    ok = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker(count: int) -> None:
            nonlocal ok
            for _ in range(count):
                async with session.get(url) as response:
                    await response.read()
                    ok += response.status == 200

        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    return ok


def instructions_per_request(name: str, argv: list[str], env: dict[str, str], args: argparse.Namespace) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="apgms-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *argv]
        with process(command, SERVER_CPU, {**env, "PORT": str(port)}) as proxy:
            url = f"http://127.0.0.1:{port}{PATH}"
            wait_http(f"http://127.0.0.1:{port}/ready", timeout_s=120)
            with console.status(f"{name}: warm-up, then {args.requests} counted requests"):
                asyncio.run(load(url, args.requests // 4, args.concurrency))
                subprocess.run(["callgrind_control", "-i", "on", str(proxy.pid)], check=True, capture_output=True)
                answered = asyncio.run(load(url, args.requests, args.concurrency))
                subprocess.run(["callgrind_control", "-i", "off", str(proxy.pid)], check=True, capture_output=True)
                subprocess.run(["callgrind_control", "-d", str(proxy.pid)], check=True, capture_output=True)
        if answered != args.requests:
            raise SystemExit(f"{name}: {args.requests - answered} requests did not answer 200")
        total = 0
        for dump in glob.glob(f"{out}*"):
            for line in Path(dump).read_text().splitlines():
                if line.startswith("totals:"):
                    total += int(line.split()[1])
    per_request = total / args.requests
    console.log(f"{name}: {per_request / 1000:,.1f} k instructions per request")
    return per_request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="counted requests per proxy")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    ensure_valgrind()

    upstream_port = free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    env = {f"UPSTREAM_{service}_URLS": upstream_url for service in ("AUTH", "CORE", "COMPLIANCE", "REGULATOR")}
    env["UPSTREAM_URL"] = upstream_url
    python = str(BIN / "python")
    with granian("bench.upstream:app", upstream_port, LOAD_CPU):
        wait_http(f"{upstream_url}/ready")
        counts = {
            MINIMAL: instructions_per_request(MINIMAL, [python, "-m", "bench.minimal_proxy"], env, args),
            SHIPPED: instructions_per_request(SHIPPED, [python, "-m", "proxy"], env, args),
        }

    table = Table(title=f"instructions per request (callgrind), {args.requests} GETs of {PATH} at c={args.concurrency}")
    for column in ("path", "k instructions / request", "vs minimal"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for name, count in counts.items():
        table.add_row(name, f"{count / 1000:,.1f}", f"{count / counts[MINIMAL]:.2f}x")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
