"""Not part of the suite (no `test_` prefix): tests/integration/test_harness.py runs it in a pytest of its own,
waits for the line below, and sends that pytest SIGTERM."""

import time


def test_holds_the_session_postgres(postgres_dsn: str) -> None:
    print(f"PROBE-READY {postgres_dsn}", flush=True)
    time.sleep(60)
    raise AssertionError("the harness should have stopped this run")
