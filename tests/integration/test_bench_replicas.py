"""`bench/replicas.py --quick`, end to end: its own PostgreSQL and Redis, 5 orgs, auth, two core replicas and four
proxies as real processes, 1 proxy + 1 core and 2 proxies + 2 cores at 10 requests/s for 0.5 s each, and one
per-org lock step of 2 clients for writes and for page reads. The numbers are not judged (the machine may be
busy); that the bench runs, prints its tables, that every workload held 10/s (its one rung), and that both core
replicas served (each was seen with a busy PostgreSQL connection of its own) is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH_TIMEOUT_S = 100


def test_quick_mode_prints_every_table_and_both_replicas_serve() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "replicas.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "highest offered rate held for 0.5 s with p95 < 500 ms and no errors" in output, output
    for topology in ("1 proxy + 1 core", "2 proxies + 2 cores"):
        for workload in ("GET first page", "POST /bank-lines"):
            assert re.search(rf"│ {re.escape(topology)}\s+│ {re.escape(workload)}\s+│[^\n]*│\s+10 │", output), output
    for workload in ("POST /bank-lines", "GET first page"):  # the per-org lock steps: 2 clients, answered/s
        for clients_as in ("one org", "own orgs"):
            assert re.search(rf"│ {re.escape(workload)}\s+│\s+2 │ {clients_as}\s+│\s+\d+ │", output), output
    for workload in ("POST /bank-lines", "GET first page"):
        assert f"one org's ceiling here, {workload}:" in output, output
    for core in ("core-1", "core-2"):  # open / busy connections at rest, then at the peak: each replica was busy
        peak = re.search(rf"│ {core}\s+│\s+\d+ / \d+ │\s+(\d+) / (\d+) │", output)
        assert peak is not None and int(peak.group(2)) >= 1, output
    assert "workloads with no rate held: 0" in output, output
