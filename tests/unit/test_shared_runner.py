"""Start-up with a bad configuration: one line on stderr naming the variable, exit code 2, no traceback."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from apgms.devservers import free_port
from shared.context import GRACE_PERIOD_OVER
from shared.log import capture_logs
from shared.runner import DropGracePeriodCancellations, bind_address, load_or_exit

CONFIG_VARIABLES = (
    "APGMS_ENV",
    "HOST",
    "PORT",
    "DATABASE_URL",
    "REDIS_URL",
    "LOG_LEVEL",
    "DB_CONNECT_TIMEOUT_S",
    "DB_STATEMENT_TIMEOUT_MS",
    "DB_POOL_MAX_SIZE",
    "READY_CHECK_TIMEOUT_S",
    "GRACEFUL_TIMEOUT_S",
    "SHUTDOWN_DELAY_S",
    "TRUSTED_PROXY_HOPS",
)
DATABASE_URL = "postgresql://apgms:hunter2-Sup3r@db.internal:5432/apgms"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in CONFIG_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://apgms:hunter2-Sup3r@db/apgms"}, "DATABASE_URL"),
        ({"DATABASE_URL": DATABASE_URL, "PORT": "abc"}, "PORT"),
        ({"DATABASE_URL": DATABASE_URL, "APGMS_ENV": "staging"}, "APGMS_ENV"),
    ],
)
def test_bad_configuration_exits_2_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variables: dict[str, str], named: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as caught:
        load_or_exit("core")
    assert caught.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("core: configuration error: ")
    assert named in lines[0]
    assert "hunter2" not in captured.err
    assert "Traceback" not in captured.err


def test_bad_dotenv_value_is_reported_the_same_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / ".env").write_text(f"DATABASE_URL={DATABASE_URL}\nLOG_LEVEL=loud\n")
    with pytest.raises(SystemExit) as caught:
        load_or_exit("auth")
    assert caught.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "LOG_LEVEL" in line


def test_good_configuration_returns_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PORT", "4010")
    settings = load_or_exit("regulator", database_required=False)
    assert settings.service == "regulator"
    assert settings.port == 4010
    assert settings.database_url is None
    assert capsys.readouterr().err == ""


def test_bind_address_prefers_ipv4_for_a_host_name() -> None:
    assert bind_address("localhost", free_port()) == "127.0.0.1"


@pytest.mark.parametrize(("host", "event"), [("nosuchhost.invalid", "bind_failed"), ("127.0.0.1", "address_in_use")])
def test_bind_address_refuses_with_one_log_line(host: str, event: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with capture_logs() as logs, pytest.raises(SystemExit) as exited:
            bind_address(host, port)
    assert exited.value.code == 1
    assert [entry["event"] for entry in logs] == [event]


def record_of(error: BaseException | None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord("_granian", logging.ERROR, __file__, 1, "Application callable raised", (), exc_info)


def test_granians_line_for_a_grace_period_cancellation_is_dropped_and_nothing_else() -> None:
    drop = DropGracePeriodCancellations()
    assert not drop.filter(record_of(asyncio.CancelledError(GRACE_PERIOD_OVER)))
    assert drop.filter(record_of(asyncio.CancelledError("client went away")))
    assert drop.filter(record_of(RuntimeError(GRACE_PERIOD_OVER)))
    assert drop.filter(record_of(None))
