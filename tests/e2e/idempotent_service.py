"""A service built like the real ones (shared app, middleware, runner, pool) with one money-like POST that uses
`shared.idempotency`, standing for every route that creates money state.

    POST /payments    {"amount": "12.50", "payee": "ATO"} → 201 {"id", "amount", "payee"}, Location: /payments/<id>

It has no token verification of its own: `X-Test-Org` and `X-Test-Actor` stand for the principal a real route
takes from its token, and `X-Test-Delay-S` holds the claim that long before the work (a slow first request).
Each execution inserts one row into a table the test creates (PAYMENTS_DDL) before starting it.

Run as `python -m tests.e2e.idempotent_service` with the project root on PYTHONPATH and DATABASE_URL set.
"""

from __future__ import annotations

import asyncio
import uuid

from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.app import build_service_app
from shared.config import Settings
from shared.idempotency import idempotent
from shared.money import Money, format_money
from shared.runner import run_service
from shared.validation import parse_body

PAYMENTS_DDL = """
CREATE TABLE idempotent_test_payments (
    id      uuid        PRIMARY KEY,
    org_id  uuid        NOT NULL,
    actor   text        NOT NULL,
    amount  numeric     NOT NULL,
    payee   text        NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
)
"""
INSERT_PAYMENT = "INSERT INTO idempotent_test_payments (id, org_id, actor, amount, payee) VALUES ($1, $2, $3, $4, $5)"
COUNT_PAYMENTS = "SELECT count(*) FROM idempotent_test_payments"
MAX_TEST_DELAY_S = 10.0


class PaymentRequest(BaseModel):
    amount: Money
    payee: str = Field(min_length=1, max_length=100)


async def create_payment(request: Request) -> Response:
    body = await parse_body(request, PaymentRequest)
    org_id = uuid.UUID(request.headers["x-test-org"])
    actor = request.headers["x-test-actor"]
    delay_s = min(float(request.headers.get("x-test-delay-s", "0")), MAX_TEST_DELAY_S)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():

        async def pay() -> Response:
            await asyncio.sleep(delay_s)
            payment_id = uuid.uuid4()
            await conn.execute(INSERT_PAYMENT, payment_id, org_id, actor, body.amount, body.payee)
            document = {"id": str(payment_id), "amount": format_money(body.amount), "payee": body.payee}
            return JSONResponse(document, status_code=201, headers={"location": f"/payments/{payment_id}"})

        return await idempotent(request, conn, pay, org_id=org_id, actor=actor, body=body)


def create_app(settings: Settings) -> Starlette:
    routes = [Route("/payments", create_payment, methods=["POST"])]
    return build_service_app(settings, routes, title="idempotent test service")


if __name__ == "__main__":
    run_service("idempotent", create_app)
