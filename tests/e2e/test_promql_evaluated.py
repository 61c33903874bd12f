"""Every PromQL expression the project ships (the rule files, the Grafana dashboard, docs/ops/promql.md) parsed and
evaluated by a real Prometheus: auth, core and a production proxy (scrape credential required) as real processes,
Prometheus started on a free port with the jobs of deploy/prometheus/global.yml (federation from the proxy's
/federate, with the credential) and prometheus.yml (each process's /metrics, the proxy's with the credential)
scraping and evaluating every second, page reads sent through the proxy meanwhile. Once the
recorded series have values, each expression goes through `/api/v1/query` and must succeed, every rule must have
evaluated without error, and the alert for the services this stack lacks (compliance, regulator) must be pending."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from auth_support import Org, call
from core_support import role_tokens, start_core
from promql_sources import PROMETHEUS_DIR, RULE_FILES, all_expressions, prometheus_binaries, recorded_names
from test_federate import PRODUCTION_KEY, SCRAPE_TOKEN
from test_proxy import start_proxy

from apgms.devservers import die_with_parent, free_port

pytestmark = pytest.mark.e2e

INTERVAL = "1s"
READY_WITHIN_S = 20.0
SERIES_WITHIN_S = 30.0
STOP_WITHIN_S = 10.0
PAGE_READ = '{service="api-gateway", route="/bank-lines", method="GET"}'


def config_for_test(tmp_path: Path, targets: dict[str, str], token_file: Path) -> Path:
    """global.yml's federation job and prometheus.yml's direct jobs as shipped, in one server, with this test's
    addresses (`targets`: job name to host:port; jobs of services this stack lacks are left out), the credential
    file and the intervals of a test."""
    config = yaml.safe_load((PROMETHEUS_DIR / "global.yml").read_text())
    config["global"].update(scrape_interval=INTERVAL, scrape_timeout=INTERVAL, evaluation_interval=INTERVAL)
    config["rule_files"] = [str(path) for path in RULE_FILES]
    direct = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"]
    jobs = [job for job in [*config["scrape_configs"], *direct] if job["job_name"] in targets]
    assert len(jobs) == len(targets)
    for job in jobs:
        [static] = job["static_configs"]
        static["targets"] = [targets[job["job_name"]]]
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(token_file)
    config["scrape_configs"] = jobs
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def prometheus(config: Path, data: Path, port: int, log: Path) -> Iterator[str]:
    binaries = prometheus_binaries()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                str(binaries.prometheus),
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(STOP_WITHIN_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def query(http: aiohttp.ClientSession, base: str, expr: str) -> dict[str, Any]:
    async with http.get(f"{base}/api/v1/query", params={"query": expr}) as response:
        body: dict[str, Any] = await response.json(content_type=None)
        return {"http": response.status, **body}


async def wait_ready(http: aiohttp.ClientSession, base: str, log: Path) -> None:
    deadline = asyncio.get_running_loop().time() + READY_WITHIN_S
    while asyncio.get_running_loop().time() < deadline:
        try:
            async with http.get(f"{base}/-/ready") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    pytest.fail(f"Prometheus was not ready within {READY_WITHIN_S}s:\n{log.read_text()[-3000:]}")


def values(result: dict[str, Any]) -> list[float]:
    return [float(sample["value"][1]) for sample in result["data"]["result"]]


async def test_every_shipped_expression_evaluates_on_a_real_prometheus(
    start_service: Any, database_url: str, org: Org, tmp_path: Path
) -> None:
    stack = start_core(start_service, database_url)
    proxy_port = free_port()
    proxy = start_proxy(
        start_service,
        {"auth": [stack.auth.url], "core": [stack.core.url]},
        APGMS_ENV="production",
        APGMS_MASTER_KEY=PRODUCTION_KEY,
        PORT=str(proxy_port),
        PUBLIC_HOSTS=f"127.0.0.1:{proxy_port}",
        METRICS_BEARER_TOKEN=SCRAPE_TOKEN,
    )
    token_file = tmp_path / "scrape-token"
    token_file.write_text(SCRAPE_TOKEN + "\n")
    proxy_address = f"127.0.0.1:{proxy_port}"
    targets = {
        "apgms": proxy_address,
        "api-gateway": proxy_address,
        "auth": f"127.0.0.1:{stack.auth.port}",
        "core": f"127.0.0.1:{stack.core.port}",
    }
    config = config_for_test(tmp_path, targets, token_file)
    log = tmp_path / "prometheus.log"
    expressions = all_expressions()
    assert len(expressions) >= 30
    recorded = sorted(recorded_names())
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        token = (await role_tokens(http, stack, org))["finance"]
        with prometheus(config, tmp_path / "data", free_port(), log) as base:
            await wait_ready(http, base, log)
            # Page reads through the proxy until the recorded p95 of them has a value: a rate needs two scrapes of
            # a counter that moved in between.
            deadline = asyncio.get_running_loop().time() + SERIES_WITHIN_S
            while True:
                status, page, _ = await call(http, "GET", f"{proxy.url}/bank-lines", token=token, params={"limit": "5"})
                assert status == 200, page
                up = await query(http, base, "up")
                p95 = await query(http, base, f"route:apgms_request_duration_seconds:p95_5m{PAGE_READ}")
                # v == v: not NaN
                if values(up) == [1.0] * len(targets) and len([v for v in values(p95) if v == v]) == 2:
                    break
                if asyncio.get_running_loop().time() > deadline:
                    pytest.fail(f"no recorded p95 within {SERIES_WITHIN_S}s: up={up}, p95={p95}\n{log.read_text()}")
                await asyncio.sleep(0.3)

            # The same page reads, seen through the production proxy's /federate (global.yml, with the credential)
            # and on the proxy's own /metrics (prometheus.yml, with the credential): one p95 each, in seconds.
            assert {sample["metric"]["job"] for sample in p95["data"]["result"]} == {"apgms", "api-gateway"}
            assert all(0 < value <= 10 for value in values(p95))
            requests = await query(http, base, "job:apgms_requests:rate5m")
            services: dict[str, set[str]] = {}
            for sample in requests["data"]["result"]:
                services.setdefault(sample["metric"]["job"], set()).add(sample["metric"]["service"])
            # Both configs label series alike: `service` is the proxy's label through /federate and the job's
            # target label scraped directly.
            assert services == {
                "apgms": {"api-gateway", "auth", "core"},
                "api-gateway": {"api-gateway"},
                "auth": {"auth"},
                "core": {"core"},
            }

            failures = []
            for expression in expressions:
                answer = await query(http, base, expression.expr)
                if answer["http"] != 200 or answer.get("status") != "success":
                    failures.append(f"{expression.source}: {expression.expr}: {answer.get('error', answer)}")
            assert not failures, "\n".join(failures)

            # Every rule evaluated at least once, and none with an error (a rule's runtime error shows only here).
            async with http.get(f"{base}/api/v1/rules") as response:
                groups = (await response.json())["data"]["groups"]
            evaluated = {rule["name"]: rule for group in groups for rule in group["rules"]}
            assert set(recorded) <= set(evaluated)
            assert {name: rule["health"] for name, rule in evaluated.items() if rule["health"] != "ok"} == {}
            assert {name: rule["lastError"] for name, rule in evaluated.items() if rule.get("lastError")} == {}

            # This stack has no compliance or regulator instance: the proxy's upstream series say so and the alert
            # on them is pending (it fires after its minute).
            async with http.get(f"{base}/api/v1/alerts") as response:
                alerts = (await response.json())["data"]["alerts"]
            unavailable = sorted(
                (alert["labels"]["job"], alert["labels"]["exported_service"], alert["state"])
                for alert in alerts
                if alert["labels"]["alertname"] == "ApgmsServiceUnavailable"
            )
            assert unavailable == [
                (job, service, "pending") for job in ("apgms", "api-gateway") for service in ("compliance", "regulator")
            ]
