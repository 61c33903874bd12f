"""Proxy benchmark: one upstream measured directly, through nginx, through the smallest aiohttp proxy on granian
(`bench/minimal_proxy.py`: the ceiling for a Python proxy on this client), through our proxy as shipped
(`python -m proxy`, granian embedded) and through the same ASGI app on hypercorn, all under the same load
generator in the same run.

    .venv/bin/python bench/proxy.py            (or: make bench-proxy)

The server under test (nginx, or our proxy) gets CPU 0 to itself; wrk and the upstream share CPU 1, as in
`../shared/reference/dependency-findings.md`. wrk and nginx come from apt (installed when missing and root).
Prints requests/s and p50/p99 at 50 connections and at 1, the ratios to nginx and to the minimal proxy, the
latency added over direct, and the proxy's RSS growth while a 50 MB response streams through it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apgms.devservers import free_port  # noqa: E402

SERVER_CPU = "0"
LOAD_CPU = "1"
STREAM_BYTES = 50 * 1024 * 1024
TARGET_THROUGHPUT_VS_NGINX = 0.25
SHIPPED = "proxy (granian)"
ON_HYPERCORN = "proxy app on hypercorn"
MINIMAL = "minimal proxy (granian)"
TARGET_ADDED_P50_MS = 1.0
TARGET_STREAM_RSS_MB = 20.0
BIN = Path(sys.executable).parent
console = Console(width=max(Console().width, 110))


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in (("wrk", "wrk"), ("nginx", "nginx-light")) if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"bench needs {' and '.join(missing)}: sudo apt-get install {' '.join(missing)}")
    with console.status(f"installing {' '.join(missing)} with apt-get"):
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, capture_output=True)
    subprocess.run(["pkill", "-x", "nginx"], check=False)  # Debian starts the packaged one; we run our own


def wait_http(url: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer 200 within {timeout_s}s")


@contextmanager
def process(argv: list[str], cpu: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    popen = subprocess.Popen(
        ["taskset", "-c", cpu, *argv],
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield popen
    finally:
        os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()


def granian(target: str, port: int, cpu: str, env: dict[str, str] | None = None):
    argv = [str(BIN / "granian"), "--interface", "asgi", "--workers", "1", "--loop", "uvloop"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log", target]
    return process(argv, cpu, env)


def hypercorn(target: str, port: int, cpu: str, env: dict[str, str]):
    """The same ASGI app under the services' server, for the record."""
    argv = [str(BIN / "hypercorn"), "--worker-class", "uvloop", "--bind", f"127.0.0.1:{port}", target]
    return process(argv, cpu, env)


def nginx(port: int, upstream_port: int, workdir: Path):
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""
    )
    return process(["nginx", "-c", str(conf), "-p", str(workdir)], SERVER_CPU)


_LATENCY = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, connections: int, duration_s: int) -> Load:
    result = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    )
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", result.stdout).group(1))  # type: ignore[union-attr]
    latency = {q: float(v) * _UNIT_MS[u] for q, v, u in _LATENCY.findall(result.stdout)}
    if re.search(r"Non-2xx or 3xx responses", result.stdout):
        raise SystemExit(f"{url} answered errors under load:\n{result.stdout}")
    return Load(rps, latency["50"], latency["99"])


def rss_mb(pid: int) -> float:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    total = 0
    for candidate in [str(pid), *children]:
        status = Path(f"/proc/{candidate}/status")
        if status.exists():
            match = re.search(r"VmRSS:\s+(\d+) kB", status.read_text())
            total = max(total, int(match.group(1)) if match else 0)
    return total / 1024


def stream_growth_mb(url: str, pid: int) -> float:
    before = rss_mb(pid)
    peak = before
    with urllib.request.urlopen(f"{url}?bytes={STREAM_BYTES}", timeout=60) as response:  # noqa: S310
        received = 0
        while chunk := response.read(1 << 20):
            received += len(chunk)
            peak = max(peak, rss_mb(pid))
    if received != STREAM_BYTES:
        raise SystemExit(f"streamed {received} bytes, expected {STREAM_BYTES}")
    return peak - before


def measure(name: str, url: str, args: argparse.Namespace, results: dict[str, tuple[Load, Load]]) -> None:
    """The better of `--repeat` runs at each concurrency (after a 1 s warm-up), as in the dependency findings."""
    wrk(url, args.connections, 1)
    loaded = max((wrk(url, args.connections, args.duration) for _ in range(args.repeat)), key=lambda r: r.rps)
    single = min((wrk(url, 1, max(3, args.duration // 2)) for _ in range(args.repeat)), key=lambda r: r.p50_ms)
    results[name] = (loaded, single)
    console.log(f"{name}: {loaded.rps:,.0f} req/s at c={args.connections}, p50 {single.p50_ms:.3f} ms at c=1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per measurement")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is kept")
    args = parser.parse_args()
    ensure_tools()

    upstream_port, nginx_port, hyper_port, gran_port, minimal_port = (free_port() for _ in range(5))
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    proxy_env = {f"UPSTREAM_{service}_URLS": upstream_url for service in ("AUTH", "CORE", "COMPLIANCE", "REGULATOR")}
    path = "/bank-lines"
    results: dict[str, tuple[Load, Load]] = {}
    growth: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="apgms-bench-") as tmp,
        granian("bench.upstream:app", upstream_port, LOAD_CPU),
    ):
        wait_http(f"http://127.0.0.1:{upstream_port}/ready")
        measure("direct", f"http://127.0.0.1:{upstream_port}{path}", args, results)
        with nginx(nginx_port, upstream_port, Path(tmp)):
            wait_http(f"http://127.0.0.1:{nginx_port}/ready")
            measure("nginx", f"http://127.0.0.1:{nginx_port}{path}", args, results)
        with granian("bench.minimal_proxy:app", minimal_port, SERVER_CPU, {"UPSTREAM_URL": upstream_url}):
            wait_http(f"http://127.0.0.1:{minimal_port}/ready")
            measure(MINIMAL, f"http://127.0.0.1:{minimal_port}{path}", args, results)
        with process([str(BIN / "python"), "-m", "proxy"], SERVER_CPU, {**proxy_env, "PORT": str(gran_port)}) as p:
            wait_http(f"http://127.0.0.1:{gran_port}/ready")
            measure(SHIPPED, f"http://127.0.0.1:{gran_port}{path}", args, results)
            growth[SHIPPED] = stream_growth_mb(f"http://127.0.0.1:{gran_port}{path}", p.pid)
        with hypercorn("proxy.asgi:create()", hyper_port, SERVER_CPU, proxy_env) as p:
            wait_http(f"http://127.0.0.1:{hyper_port}/ready")
            measure(ON_HYPERCORN, f"http://127.0.0.1:{hyper_port}{path}", args, results)
            growth[ON_HYPERCORN] = stream_growth_mb(f"http://127.0.0.1:{hyper_port}{path}", p.pid)

    nginx_rps = results["nginx"][0].rps
    direct_p50 = results["direct"][1].p50_ms
    table = Table(title=f"proxy benchmark: wrk -t1 -c{args.connections} -d{args.duration}s, and -c1; server on CPU 0")
    minimal_rps = results[MINIMAL][0].rps
    columns = (
        "path",
        "req/s",
        "vs nginx",
        "vs minimal",
        "p50 ms",
        "p99 ms",
        "p50 ms c=1",
        "p99 ms c=1",
        "added p50 c=1",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "path" else "right")
    for name, (loaded, single) in results.items():
        table.add_row(
            name,
            f"{loaded.rps:,.0f}",
            f"{loaded.rps / nginx_rps:.2f}x",
            f"{loaded.rps / minimal_rps:.2f}x",
            f"{loaded.p50_ms:.2f}",
            f"{loaded.p99_ms:.2f}",
            f"{single.p50_ms:.3f}",
            f"{single.p99_ms:.3f}",
            "-" if name == "direct" else f"{single.p50_ms - direct_p50:+.3f} ms",
        )
    console.print(table)
    ok = True
    for server in (SHIPPED, ON_HYPERCORN):
        loaded, single = results[server]
        checks = {
            f"throughput >= {TARGET_THROUGHPUT_VS_NGINX:.0%} of nginx": loaded.rps / nginx_rps
            >= TARGET_THROUGHPUT_VS_NGINX,
            f"adds < {TARGET_ADDED_P50_MS} ms p50 at c=1": single.p50_ms - direct_p50 < TARGET_ADDED_P50_MS,
            f"RSS +{growth[server]:.1f} MB while 50 MB streams (< {TARGET_STREAM_RSS_MB:.0f})": growth[server]
            < TARGET_STREAM_RSS_MB,
        }
        for label, passed in checks.items():
            console.print(f"[{'green' if passed else 'red'}]{'PASS' if passed else 'MISS'}[/] {server}: {label}")
            ok &= passed if server == SHIPPED else True
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
