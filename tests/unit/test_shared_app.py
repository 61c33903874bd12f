"""The shared middleware stack and operational routes, in-process through Starlette's TestClient."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from shared.app import Runtime, build_runtime, build_service_app
from shared.config import load_settings
from shared.errors import ApiError
from shared.log import capture_logs
from shared.openapi import documented
from shared.validation import parse_body

PROBLEM = "application/problem+json"
HEALTH = "application/health+json"


class LineItem(BaseModel):
    description: str
    amount_cents: int


class Payment(BaseModel):
    payee: str
    amount_cents: int
    items: list[LineItem] = []


class PaymentCreated(BaseModel):
    payee: str
    amount_cents: int


class ResolveAlert(BaseModel):
    note: str


async def resolve_alert(_: Request) -> Response:
    raise ApiError("mfa_required")


async def boom(_: Request) -> Response:
    raise RuntimeError("could not connect: password=hunter2 host=db.internal")


@documented("Record a payment", request=Payment, response=PaymentCreated, status=201, tags=["payments"])
async def create_payment(request: Request) -> Response:
    payment = await parse_body(request, Payment)
    return JSONResponse(payment.model_dump(), status_code=201)


async def create_small(request: Request) -> Response:
    payment = await parse_body(request, Payment, max_bytes=64)
    return JSONResponse(payment.model_dump())


async def spoofs_request_id(_: Request) -> Response:
    return Response("ok", headers={"x-request-id": "set-by-handler"})


ROUTES = [
    Route("/alerts/{id}/resolve", resolve_alert, methods=["POST"]),
    Route("/boom", boom, methods=["GET"]),
    Route("/payments", create_payment, methods=["POST"]),
    Route("/small", create_small, methods=["POST"]),
    Route("/spoof", spoofs_request_id, methods=["GET"]),
]


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, log_stream: io.StringIO) -> Starlette:
    monkeypatch.chdir(tmp_path)  # no stray .env from the working directory
    settings = load_settings("auth", environ={"APGMS_ENV": "test", "TRUSTED_PROXY_HOPS": "1"}, database_required=False)
    return build_service_app(settings, routes=ROUTES, title="APGMS test service")


@pytest.fixture
def client(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def requests_total(method: str, route: str, status: str) -> float:
    labels = {"method": method, "route": route, "status": status}
    return REGISTRY.get_sample_value("apgms_api_requests_total", labels) or 0.0


def is_uuid4(value: str) -> bool:
    try:
        return uuid.UUID(value).version == 4
    except ValueError:
        return False


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith("/" + code)
    assert body["title"]
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# Request IDs


def test_valid_request_id_is_echoed(client: TestClient) -> None:
    response = client.get("/health", headers={"x-request-id": "req-abc.123:x_y"})
    assert response.headers["x-request-id"] == "req-abc.123:x_y"


def test_missing_request_id_gets_a_fresh_uuid(client: TestClient) -> None:
    first = client.get("/health").headers["x-request-id"]
    second = client.get("/health").headers["x-request-id"]
    assert is_uuid4(first)
    assert is_uuid4(second)
    assert first != second


@pytest.mark.parametrize("hostile", [b"x" * 129, b"caf\xe9", b"caf\xc3\xa9", b"a;b", b"../../etc/passwd"], ids=str)
def test_hostile_request_id_is_replaced(client: TestClient, hostile: bytes) -> None:
    response = client.get("/health", headers=[(b"x-request-id", hostile)])
    echoed = response.headers["x-request-id"]
    assert echoed.encode() != hostile
    assert is_uuid4(echoed)


def test_handler_cannot_override_the_echoed_request_id(client: TestClient) -> None:
    response = client.get("/spoof", headers={"x-request-id": "req-1"})
    assert response.headers.get_list("x-request-id") == ["req-1"]


# Errors


def test_unknown_route_is_a_404_problem_with_request_id(client: TestClient) -> None:
    response = client.get("/no/such/route", headers={"x-request-id": "req-404"})
    body = assert_problem(response, 404, "not_found")
    assert body["request_id"] == "req-404"


def test_wrong_method_is_a_405_problem_with_request_id(client: TestClient) -> None:
    response = client.post("/health", headers={"x-request-id": "req-405"})
    body = assert_problem(response, 405, "method_not_allowed")
    assert body["request_id"] == "req-405"
    assert "GET" in response.headers["allow"]


def test_api_error_is_rendered_from_the_error_table(client: TestClient) -> None:
    response = client.post("/alerts/7/resolve", headers={"x-request-id": "req-mfa"})
    body = assert_problem(response, 401, "mfa_required")
    assert body["request_id"] == "req-mfa"
    assert body["title"] == "Recent multi-factor authentication required"


def test_unexpected_exception_is_a_500_problem_without_internals(client: TestClient, log_stream: io.StringIO) -> None:
    response = client.get("/boom", headers={"x-request-id": "req-500"})
    body = assert_problem(response, 500, "internal_error")
    assert body["request_id"] == "req-500"
    for leak in ("Traceback", "RuntimeError", "hunter2", "db.internal", "boom.py", 'File "'):
        assert leak not in response.text
    errors = [line for line in log_lines(log_stream) if line["event"] == "unhandled_error"]
    assert len(errors) == 1
    assert errors[0]["request_id"] == "req-500"
    assert errors[0]["level"] == "error"
    assert "hunter2" not in log_stream.getvalue()


def test_a_500_is_counted_and_logged_as_an_access_line(client: TestClient, log_stream: io.StringIO) -> None:
    before = requests_total("GET", "/boom", "500")
    client.get("/boom", headers={"x-request-id": "req-500b"})
    assert requests_total("GET", "/boom", "500") == before + 1
    access = [line for line in log_lines(log_stream) if line["event"] == "request"]
    assert len(access) == 1
    assert access[0]["status"] == 500
    assert access[0]["route"] == "/boom"
    assert access[0]["request_id"] == "req-500b"


# Access log


def test_access_line_fields_and_client_through_one_trusted_hop(client: TestClient, log_stream: io.StringIO) -> None:
    client.post(
        "/alerts/42/resolve",
        headers={"x-request-id": "req-acc", "x-forwarded-for": "6.6.6.6, 203.0.113.7"},
    )
    [access] = [line for line in log_lines(log_stream) if line["event"] == "request"]
    assert access["method"] == "POST"
    assert access["route"] == "/alerts/:id/resolve"
    assert access["path"] == "/alerts/42/resolve"
    assert access["status"] == 401
    assert access["client"] == "203.0.113.7"
    assert access["request_id"] == "req-acc"
    assert isinstance(access["duration_ms"], float | int)


# Health


def test_health_is_pass_as_health_json(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == HEALTH
    assert response.json() == {"status": "pass", "ok": True, "service": "auth"}


def test_ready_without_checks_is_200(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.headers["content-type"] == HEALTH
    assert response.json() == {"status": "pass", "ok": True, "ready": True, "service": "auth", "checks": {}}


def test_ready_is_503_while_draining(app: Starlette, client: TestClient) -> None:
    app.state.runtime.health.draining = True
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.headers["content-type"] == HEALTH
    body = response.json()
    assert body["draining"] is True
    assert body["ready"] is False
    assert body["ok"] is False
    assert body["status"] == "fail"
    assert client.get("/health").status_code == 200


def test_ready_is_503_when_a_check_fails_and_counts_a_security_event(app: Starlette, client: TestClient) -> None:
    async def postgres_down(_: float) -> float:
        raise OSError("connect to db.internal:5432 as apgms password=hunter2 refused")

    app.state.runtime.health.checks["postgres"] = postgres_down
    before = REGISTRY.get_sample_value("security_events_total", {"event": "readiness.fail"}) or 0.0
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"] == {"postgres": {"status": "fail", "error": "OSError"}}
    assert "hunter2" not in response.text
    assert REGISTRY.get_sample_value("security_events_total", {"event": "readiness.fail"}) == before + 1


# Metrics


def test_metrics_count_by_route_template_and_exact_status(client: TestClient) -> None:
    before = requests_total("POST", "/alerts/:id/resolve", "401")
    client.post("/alerts/1/resolve")
    client.post("/alerts/2/resolve")
    assert requests_total("POST", "/alerts/:id/resolve", "401") == before + 2
    assert requests_total("POST", "/alerts/1/resolve", "401") == 0.0


def test_metrics_endpoint_exposes_the_runbook_series(client: TestClient) -> None:
    response = client.post("/alerts/9/resolve")
    assert response.status_code == 401
    text = client.get("/metrics").text
    assert 'apgms_api_requests_total{method="POST",route="/alerts/:id/resolve",status="401"}' in text
    assert 'apgms_api_request_duration_seconds_bucket{le="0.5",method="POST",route="/alerts/:id/resolve"}' in text
    assert "process_resident_memory_bytes" in text or "python_info" in text


@pytest.mark.usefixtures("log_stream")
def test_get_route_is_counted_under_the_runbook_series(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    before = requests_total("GET", "/alerts/:id/resolve", "401")
    app_routes = [Route("/alerts/{id}/resolve", resolve_alert, methods=["GET"])]
    settings = load_settings("auth", environ={"APGMS_ENV": "test"}, database_required=False)
    with TestClient(build_service_app(settings, routes=app_routes, title="t")) as other:
        assert other.get("/alerts/5/resolve").status_code == 401
        text = other.get("/metrics").text
    assert requests_total("GET", "/alerts/:id/resolve", "401") == before + 1
    assert 'apgms_api_requests_total{method="GET",route="/alerts/:id/resolve",status="401"}' in text


def test_unmatched_paths_share_one_label(client: TestClient) -> None:
    before = requests_total("GET", "unmatched", "404")
    client.get("/scan/one")
    client.get("/scan/two")
    assert requests_total("GET", "unmatched", "404") == before + 2
    text = client.get("/metrics").text
    assert "/scan/one" not in text
    assert 'apgms_api_requests_total{method="GET",route="unmatched",status="404"}' in text


# OpenAPI


def test_openapi_lists_documented_routes_with_their_models(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "APGMS test service"
    operation = document["paths"]["/payments"]["post"]
    assert operation["summary"] == "Record a payment"
    assert operation["tags"] == ["payments"]
    schema_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schema_ref == "#/components/schemas/Payment"
    assert set(document["components"]["schemas"]["Payment"]["properties"]) == {"payee", "amount_cents", "items"}
    created = operation["responses"]["201"]["content"]["application/json"]["schema"]["$ref"]
    assert created == "#/components/schemas/PaymentCreated"
    assert "/alerts/{id}/resolve" in document["paths"]
    assert document["paths"]["/alerts/{id}/resolve"]["post"]["parameters"][0]["name"] == "id"
    assert "/health" in document["paths"]
    assert "/metrics" not in document["paths"]
    assert "/openapi.json" not in document["paths"]


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_openapi_every_ref_resolves_within_the_document(client: TestClient) -> None:
    # Payment nests LineItem: its schema must be reachable at the $ref the document uses.
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    refs = set(_refs(document))
    assert "#/components/schemas/LineItem" in refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in schemas, f"dangling {ref}"


# Request bodies


def test_valid_body_is_parsed(client: TestClient) -> None:
    response = client.post("/payments", json={"payee": "ATO", "amount_cents": 125050})
    assert response.status_code == 201
    assert response.json() == {"payee": "ATO", "amount_cents": 125050, "items": []}


def test_wrong_types_are_a_400_with_field_paths(client: TestClient) -> None:
    response = client.post(
        "/payments",
        json={"payee": "ATO", "amount_cents": "lots", "items": [{"description": "x", "amount_cents": "y"}]},
    )
    body = assert_problem(response, 400, "invalid_body")
    paths = {error["path"] for error in body["errors"]}
    assert paths == {"amount_cents", "items.0.amount_cents"}
    assert all(error["message"] for error in body["errors"])


def test_missing_field_is_reported_by_path(client: TestClient) -> None:
    body = assert_problem(client.post("/payments", json={"payee": "ATO"}), 400, "invalid_body")
    assert [error["path"] for error in body["errors"]] == ["amount_cents"]


def test_malformed_json_is_a_400(client: TestClient) -> None:
    response = client.post("/payments", content=b'{"payee": ', headers={"content-type": "application/json"})
    body = assert_problem(response, 400, "invalid_body")
    assert "errors" not in body


def test_non_json_content_type_is_a_415(client: TestClient) -> None:
    response = client.post("/payments", content=b"payee=ATO", headers={"content-type": "text/plain"})
    assert_problem(response, 415, "unsupported_media_type")


def test_json_suffix_media_type_is_accepted(client: TestClient) -> None:
    response = client.post(
        "/payments",
        content=b'{"payee": "ATO", "amount_cents": 1}',
        headers={"content-type": "application/merge-patch+json; charset=utf-8"},
    )
    assert response.status_code == 201


def test_body_over_the_limit_is_a_413(client: TestClient) -> None:
    response = client.post("/small", json={"payee": "A" * 100, "amount_cents": 1})
    assert_problem(response, 413, "payload_too_large")
    fits = client.post("/small", json={"payee": "A", "amount_cents": 1})
    assert fits.status_code == 200


# Background tasks (Runtime.run_in_background)


def test_a_background_task_starts_with_the_app_and_is_cancelled_and_awaited_at_shutdown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, log_stream: io.StringIO
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings("auth", environ={"APGMS_ENV": "test"}, database_required=False)
    runtime = build_runtime(settings)
    seen: list[str] = []
    running = threading.Event()

    async def work(given: Runtime) -> None:
        task = asyncio.current_task()
        assert task is not None
        seen.append(f"started by {given.settings.service}, named {task.get_name()}")
        running.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        seen.append("slept an hour")  # never: shutdown cancels it

    runtime.run_in_background("test-work", work)
    app = build_service_app(settings, title="APGMS test service", runtime=runtime)
    assert seen == []  # registering starts nothing
    with TestClient(app) as client:
        assert running.wait(5)
        assert client.get("/health").status_code == 200
        assert seen == ["started by auth, named test-work"]
    # TestClient's exit runs the lifespan's shutdown: the task was cancelled and awaited before it returned.
    assert seen == ["started by auth, named test-work", "cancelled"]


async def test_a_background_task_that_failed_is_logged_once_and_does_not_hold_up_shutdown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    runtime = build_runtime(load_settings("auth", environ={"APGMS_ENV": "test"}, database_required=False))

    async def broken(_: Runtime) -> None:
        raise RuntimeError("the sampler lost its source")

    async def finished(_: Runtime) -> None:
        return None

    runtime.run_in_background("test-broken", broken)
    runtime.run_in_background("test-finished", finished)
    with capture_logs() as logs:
        for hook in runtime.on_startup:
            await hook(runtime)
        ours = [task for task in asyncio.all_tasks() if task.get_name() in {"test-broken", "test-finished"}]
        assert len(ours) == 2
        await asyncio.wait(ours)
        await asyncio.sleep(0)  # the done callbacks run on the next loop pass
        await asyncio.wait_for(runtime.close(), timeout=5)
    failures = [entry for entry in logs if entry["event"] == "background_task_failed"]
    assert failures == [
        {
            "event": "background_task_failed",
            "log_level": "error",
            "task": "test-broken",
            "error": "RuntimeError",
            "message": "the sampler lost its source",
        }
    ]
    assert all(task.done() for task in ours)
