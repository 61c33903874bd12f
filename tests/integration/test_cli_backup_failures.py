"""`apgms backup evidence-pack` against a local stand-in server, for the failures a real stack rarely gives on
demand: a 5xx, an export cut off mid-way (with and without a content-length), and a call past its deadline. Each
exits 1 with the reason and leaves no file (nor a temporary one) behind."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apgms import backup
from apgms.cli import app

pytestmark = pytest.mark.usefixtures("no_project_dotenv")

ORG = uuid.UUID("5b8e2c14-7a3d-4f90-b1c6-2d9e8f0a4b37")
REQUEST_ID = "req-from-the-server"
Answer = Callable[[BaseHTTPRequestHandler], None]


def send(status: int, body: bytes, *, length: int | None = None) -> Answer:
    """`body` with `status`; `length`: a content-length promising more, the connection closed after `body`."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = length is not None
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(body) if length is None else length))
        handler.send_header("x-request-id", REQUEST_ID)
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def until_close(body: bytes) -> Answer:
    """200 with no content-length: the body is what comes before the server closes the connection."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("connection", "close")
        handler.end_headers()
        handler.wfile.write(body)
        handler.close_connection = True

    return answer


def slow(seconds: float, then: Answer) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(seconds)
        then(handler)

    return answer


EXPORT = send(200, b'{"org_id": "%s", "bank_lines": []}' % str(ORG).encode())


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, Answer]]]:
    """A local server answering each path from the returned table (404 for the rest); yields its URL and table."""
    routes: dict[str, Answer] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            routes.get(self.path, send(404, b'{"detail": "no such route"}'))(self)

        do_POST = do_GET

        def log_message(self, *_: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", routes
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def run_backup(url: str) -> tuple[int, str, str]:
    args = ["backup", "evidence-pack", "--base-url", url, "--org", str(ORG), "--token", "t0ken"]
    result = CliRunner().invoke(app, args)
    assert "Traceback" not in result.stdout + result.stderr
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def assert_no_file(tmp_path: Path) -> None:
    assert list((tmp_path / "artifacts" / "backups").iterdir()) == []


def test_a_5xx_names_the_step_and_the_problem(tmp_path: Path, server: tuple[str, dict[str, Answer]]) -> None:
    url, routes = server
    routes[f"/admin/export/{ORG}"] = EXPORT
    routes["/compliance/report"] = send(503, b'{"title": "Service Unavailable", "detail": "core is unavailable"}')
    code, out, err = run_backup(url)
    assert (code, out) == (1, "")
    assert (
        f"error: the server failed at the compliance report: GET {url}/compliance/report answered 503 "
        f"Service Unavailable: core is unavailable; try again later, or look up request ID {REQUEST_ID} in the "
        "services' logs"
    ) in err
    assert_no_file(tmp_path)


def test_an_export_cut_off_mid_way_is_refused(tmp_path: Path, server: tuple[str, dict[str, Answer]]) -> None:
    url, routes = server
    partial = b'{"org_id": "%s", "bank_lines": [{"id": 1},' % str(ORG).encode()
    routes[f"/admin/export/{ORG}"] = send(200, partial, length=len(partial) + 500)
    code, out, err = run_backup(url)
    assert (code, out) == (1, "")
    assert f"error: the answer of {url}/admin/export/{ORG} was cut off before its end" in err
    assert_no_file(tmp_path)
    routes[f"/admin/export/{ORG}"] = until_close(partial)
    code, out, err = run_backup(url)
    assert (code, out) == (1, "")
    assert f"error: the export from {url}/admin/export/{ORG} is not a complete JSON object" in err
    assert_no_file(tmp_path)


def test_a_call_past_its_deadline_fails_and_leaves_no_file(
    tmp_path: Path, server: tuple[str, dict[str, Answer]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, routes = server
    monkeypatch.setattr(backup, "REQUEST_TIMEOUT_S", 0.5)
    routes[f"/admin/export/{ORG}"] = EXPORT
    routes["/compliance/report"] = slow(3.0, send(200, b"{}"))
    started = time.monotonic()
    code, out, err = run_backup(url)
    assert time.monotonic() - started < 2.5
    assert (code, out) == (1, "")
    assert f"error: no complete answer from {url}/compliance/report in time" in err
    assert_no_file(tmp_path)


def test_a_base_url_that_is_not_http_is_refused_before_any_call(tmp_path: Path) -> None:
    code, out, err = run_backup("localhost:3000")
    assert (code, out) == (1, "")
    assert "--base-url must be an http(s) URL such as http://localhost:3000" in err
    assert not (tmp_path / "artifacts").exists()
