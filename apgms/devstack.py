"""`apgms dev`: the whole stack on one machine, each service its own process, Ctrl+C stops it cleanly.

Without DATABASE_URL a project-local PostgreSQL runs in `.devdb/pg` (data kept between runs); without REDIS_URL a
local redis-server runs when the binary exists, else the stack runs without Redis. Migrations are applied, the demo
org is seeded (`apgms.seed`, idempotent), the processes of `DEV_PROCESSES` are started and supervised (restarted
with backoff when they crash, except on exit code 2, a configuration error, which stops everything).

Service clients are provisioned on both sides from one value per service: auth gets every
SERVICE_CLIENT_SECRET_<NAME>, each calling service its own as SERVICE_CLIENT_SECRET (`dev_service_client_secrets`).

Each checkout has two keys of its own in the dev dir (`.devdb/`, git-ignored), made on first use, mode 0600:
`master.key` (APGMS_MASTER_KEY unless set) and `pii.kek`, the PII key-encryption key (shared.kek's
LocalKekProvider reads it as APGMS_KEK_FILE, unless APGMS_KEK_FILE or APGMS_KEK is set). Only the services that
hold PII (`KEK_SERVICES`) are given the KEK; the `apgms` commands find both files the same way.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from apgms.devservers import (
    DATABASE_ERRORS,
    DevServerError,
    LocalPostgres,
    die_with_parent,
    find_redis_server,
    read_pid_file,
    redact_url,
)
from apgms.localredis import LocalRedis
from apgms.regulator_demo import DEMO_CREDENTIAL_NAME, DemoRegulatorRefused, ensure_demo_credential
from apgms.seed import DemoSeed, SeedError, demo_password, seed_demo
from shared.config import (
    CALLING_SERVICES,
    PROXY_PORT,
    SERVICE_CLIENT_SECRET_VARIABLE,
    SERVICE_PORTS,
    ConfigError,
    environ_with_dotenv,
    load_settings,
    new_master_key,
    service_client_id,
    service_client_secret_variable,
)
from shared.crypto import SecretBox
from shared.kek import new_kek

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEV_DIR_NAME = ".devdb"
DEFAULT_DEV_DIR = PROJECT_ROOT / DEV_DIR_NAME
# The checkout's own master key (APGMS_MASTER_KEY unless set), in the dev dir: git-ignored, mode 0600.
MASTER_KEY_FILE = "master.key"
# The checkout's own PII key-encryption key (APGMS_KEK_FILE unless it or APGMS_KEK is set), beside it, mode 0600.
KEK_FILE = "pii.kek"
KEK_VARIABLES = ("APGMS_KEK_FILE", "APGMS_KEK")
# The processes that hold PII and so get the KEK; the others are not given it. Compliance reads core's internal
# views, which carry no PII (services/core/internal.py), so only core.
KEK_SERVICES = ("core",)
# Domain separation for the dev service client secrets derived from the master key (HMAC-SHA256).
SERVICE_CLIENT_SECRET_LABEL = b"apgms dev service client secret:"
HOST = "127.0.0.1"

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0
# A process that stayed up this long is considered healthy again: its next crash restarts it after 0.5 s.
BACKOFF_RESET_AFTER_S = 30.0
CONFIG_ERROR_EXIT_CODE = 2
READY_TIMEOUT_S = 30.0
READY_POLL_INTERVAL_S = 0.2
READY_REQUEST_TIMEOUT_S = 1.0
# Children drain for SHUTDOWN_DELAY_S plus in-flight requests; past this they are killed.
# Above a process's own worst case: SHUTDOWN_DELAY_S + GRACEFUL_TIMEOUT_S (1 + 15 s) plus closing its pools.
STOP_TIMEOUT_S = 30.0
LOG_LINE_LIMIT_BYTES = 1024 * 1024
PREFIX_STYLES = ("cyan", "magenta", "green", "yellow", "blue", "bright_red")


@dataclass(frozen=True)
class ProcessSpec:
    """One supervised process: `python -m <module>` serving on `port`."""

    name: str
    module: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def argv(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", self.module]


# What `apgms dev` runs, in start order: the four services, then the proxy in front of them.
DEV_PROCESSES: tuple[ProcessSpec, ...] = (
    ProcessSpec("auth", "services.auth", SERVICE_PORTS["auth"]),
    ProcessSpec("core", "services.core", SERVICE_PORTS["core"]),
    ProcessSpec("compliance", "services.compliance", SERVICE_PORTS["compliance"]),
    ProcessSpec("regulator", "services.regulator", SERVICE_PORTS["regulator"]),
    ProcessSpec("api-gateway", "proxy", PROXY_PORT),
)


# --- pure parts ------------------------------------------------------------------------------------------------


def restart_delay(failures: int) -> float:
    """Seconds before restarting after the `failures`-th crash in a row: 0.5, 1, 2, 4, 8, 10, 10, ..."""
    return float(min(BACKOFF_INITIAL_S * 2 ** max(failures - 1, 0), BACKOFF_MAX_S))


def next_failure_count(failures: int, ran_for_s: float) -> int:
    """Crashes in a row after one more; a run of BACKOFF_RESET_AFTER_S or longer starts the count again."""
    return 1 if ran_for_s >= BACKOFF_RESET_AFTER_S else failures + 1


def child_env(base: Mapping[str, str], spec: ProcessSpec, database_url: str, redis_url: str | None) -> dict[str, str]:
    """The environment of one dev process: the caller's, with the stack's settings on top."""
    env = dict(base)
    env.update(
        APGMS_ENV="dev",
        HOST=HOST,
        PORT=str(spec.port),
        DATABASE_URL=database_url,
        PYTHONUNBUFFERED="1",
    )
    if spec.module.startswith("services."):
        # The services sit behind the proxy: its X-Forwarded-For names the client (rate limits, anomaly counts).
        env["TRUSTED_PROXY_HOPS"] = "1"
    if spec.name in CALLING_SERVICES and (secret := base.get(service_client_secret_variable(spec.name))):
        env[SERVICE_CLIENT_SECRET_VARIABLE] = secret
    if spec.name not in KEK_SERVICES:
        for variable in KEK_VARIABLES:
            env.pop(variable, None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    else:
        env.pop("REDIS_URL", None)
    return env


def dev_dir(environ: Mapping[str, str]) -> Path:
    # PROJECT_ROOT read at the call: tests point it at a directory of their own.
    return Path(environ["APGMS_DEV_DIR"]).absolute() if environ.get("APGMS_DEV_DIR") else PROJECT_ROOT / DEV_DIR_NAME


def private_key_file(path: Path, new_key: Callable[[], str]) -> str:
    """The key in `path` (one line), created with `new_key()` on first use, mode 0600. The file is written whole
    under another name and linked into place: two commands starting at once agree on one key."""
    if not path.exists():
        # Not 0700: as root, PostgreSQL runs as `postgres` in a subdirectory and must be able to enter this one.
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, draft_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
        draft = Path(draft_name)
        with os.fdopen(descriptor, "w") as file:
            file.write(new_key() + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another command created it first; its key is the one
        finally:
            draft.unlink()
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return path.read_text().strip()


def dev_master_key(directory: Path) -> str:
    """This checkout's master key (base64 of MASTER_KEY_BYTES random bytes) in `directory`/master.key, created on
    first use. Every checkout has its own, so a database copied off a machine cannot be opened with a key
    published anywhere."""
    return private_key_file(directory / MASTER_KEY_FILE, new_master_key)


def dev_kek_file(directory: Path) -> Path:
    """This checkout's KEK file, `directory`/pii.kek (one KEK, created on first use, mode 0600). To rotate, put a
    new KEK (`openssl rand -base64 32`) on the first line, keep the old one after it, run `apgms pii rotate-kek`,
    then remove the old one."""
    path = directory / KEK_FILE
    private_key_file(path, new_kek)
    return path


def with_dev_master_key(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with APGMS_MASTER_KEY set to the checkout's key, unless it names one (or is production's)."""
    env = dict(environ)
    if not env.get("APGMS_MASTER_KEY") and env.get("APGMS_ENV") != "production":
        env["APGMS_MASTER_KEY"] = dev_master_key(dev_dir(env))
    return env


def with_dev_kek(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with APGMS_KEK_FILE naming the checkout's KEK file, unless it names a KEK (APGMS_KEK_FILE or
    APGMS_KEK) or is production's, which must."""
    env = dict(environ)
    if not any(env.get(variable) for variable in KEK_VARIABLES) and env.get("APGMS_ENV") != "production":
        env["APGMS_KEK_FILE"] = str(dev_kek_file(dev_dir(env)))
    return env


def dev_service_client_secrets(master_key: str) -> dict[str, str]:
    """SERVICE_CLIENT_SECRET_<NAME> of each calling service, derived from the checkout's master key (HMAC-SHA256 of
    the client id): every checkout has its own, stable across runs, with no file besides master.key."""
    key = master_key.encode()
    return {
        service_client_secret_variable(name): base64.urlsafe_b64encode(
            hmac.digest(key, SERVICE_CLIENT_SECRET_LABEL + service_client_id(name).encode(), hashlib.sha256)
        )
        .decode()
        .rstrip("=")
        for name in CALLING_SERVICES
    }


def with_dev_service_clients(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with the dev service client secrets, each unless it is set; needs APGMS_MASTER_KEY."""
    return {**dev_service_client_secrets(environ["APGMS_MASTER_KEY"]), **environ}


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether a server could not listen on `port` now (TIME_WAIT leftovers do not count, as for the servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


# --- supervision -----------------------------------------------------------------------------------------------

Emit = Callable[[str, str], None]


class Child:
    """Runs one process until `stop` is set, streaming its output and restarting it with backoff."""

    def __init__(self, spec: ProcessSpec, env: dict[str, str], stop: asyncio.Event, emit: Emit, *, cwd: Path) -> None:
        self.spec = spec
        self.env = env
        self.stop = stop
        self.emit = emit
        self.cwd = cwd
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.config_error = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while not self.stop.is_set():
            started_at = loop.time()
            self.process = await asyncio.create_subprocess_exec(
                *self.spec.argv(),
                env=self.env,
                cwd=self.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                limit=LOG_LINE_LIMIT_BYTES,
                # Own session: the terminal's Ctrl+C reaches only us; we send one SIGTERM each.
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            self.starts += 1
            if self.stop.is_set():
                self.terminate()
            await self._stream_output(self.process)
            code = await self.process.wait()
            if self.stop.is_set():
                return
            if code == CONFIG_ERROR_EXIT_CODE:
                self.config_error = True
                self.emit(self.spec.name, f"{describe_exit(code)}: its configuration is invalid (see above)")
                self.stop.set()
                return
            failures = next_failure_count(failures, loop.time() - started_at)
            delay_s = restart_delay(failures)
            self.emit(self.spec.name, f"{describe_exit(code)}; restarting in {delay_s:g} s")
            with suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay_s)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: signal.Signals) -> None:
        if self.process is not None and self.process.returncode is None:
            with suppress(ProcessLookupError):
                self.process.send_signal(signum)

    async def _stream_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # a line over LOG_LINE_LIMIT_BYTES; the reader skipped it
                continue
            if not line:
                return
            self.emit(self.spec.name, line.decode(errors="replace").rstrip("\r\n"))


class Supervisor:
    """Starts every process of a table, restarts crashed ones, and stops them all on request."""

    def __init__(
        self,
        specs: Sequence[ProcessSpec],
        env_for: Callable[[ProcessSpec], dict[str, str]],
        stop: asyncio.Event,
        emit: Emit,
        *,
        cwd: Path = PROJECT_ROOT,
    ) -> None:
        self.stop = stop
        self.children = [Child(spec, env_for(spec), stop, emit, cwd=cwd) for spec in specs]
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def config_error(self) -> bool:
        return any(child.config_error for child in self.children)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(child.run(), name=child.spec.name) for child in self.children]

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict[str, bool]:
        """Poll every `/ready` until all answer 200, `stop` is set or the timeout passes; name -> ready."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        pending = {child.spec.name: child.spec.url for child in self.children}
        timeout = aiohttp.ClientTimeout(total=READY_REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while pending and not self.stop.is_set() and loop.time() < deadline:
                for name, url in list(pending.items()):
                    with suppress(aiohttp.ClientError, TimeoutError):
                        async with session.get(url + "/ready") as response:
                            if response.status == 200:
                                del pending[name]
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), READY_POLL_INTERVAL_S)
        return {child.spec.name: child.spec.name not in pending for child in self.children}

    async def shutdown(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every process, wait up to `timeout_s` for them to drain, then SIGKILL what is left.

        Calling it again once everything has stopped does nothing."""
        self.stop.set()
        for child in self.children:
            child.terminate()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
        if pending:
            self.kill()
            await asyncio.wait(pending)
        for task in self._tasks:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error

    def kill(self) -> None:
        for child in self.children:
            child.kill()


# --- the dev command -------------------------------------------------------------------------------------------


def make_emitter(console: Console, names: Sequence[str]) -> Emit:
    width = max((len(name) for name in names), default=0)
    styles = {name: PREFIX_STYLES[i % len(PREFIX_STYLES)] for i, name in enumerate(names)}

    def emit(name: str, line: str) -> None:
        prefix = Text(f"{name:>{width}} | ", style=styles.get(name, "bold"))
        console.print(prefix + Text(line), soft_wrap=True, highlight=False)

    return emit


def shown_path(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def stack_table(
    supervisor: Supervisor,
    ready: Mapping[str, bool],
    database_url: str,
    postgres: LocalPostgres | None,
    redis_url: str | None,
    redis: LocalRedis | None,
) -> Table:
    urls = [child.spec.url for child in supervisor.children] + [redact_url(database_url), redis_url or ""]
    table = Table(title="APGMS dev stack")
    table.add_column("Process", no_wrap=True)
    table.add_column("URL", no_wrap=True, min_width=max(len(url) for url in urls))
    table.add_column("PID", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    for child in supervisor.children:
        status = "[green]ready[/]" if ready.get(child.spec.name) else "[red]not ready[/]"
        table.add_row(child.spec.name, child.spec.url, str(child.pid or "-"), status)
    postgres_pid = read_pid_file(postgres.data_dir / "postmaster.pid") if postgres else None
    table.add_row("PostgreSQL", redact_url(database_url), str(postgres_pid or "-"), "local" if postgres else "external")
    if redis_url:
        redis_pid = redis.pid if redis else None
        table.add_row("Redis", redact_url(redis_url), str(redis_pid or "-"), "local" if redis else "external")
    else:
        table.add_row("Redis", "not used", "-", "-")
    if postgres or redis:
        table.caption = "local data: " + ", ".join(
            shown_path(server_dir) for server_dir in (postgres and postgres.data_dir, redis and redis.dir) if server_dir
        )
    return table


async def seed_dev_demo(
    env: Mapping[str, str], database_url: str, warn: Callable[[str], None] = lambda _: None
) -> DemoSeed:
    """Seed the demo org (idempotent) with the settings the dev processes get; `warn` is told why there is no demo
    regulator access code when a `demo-regulator` make run did not make is in the way (the stack still starts)."""
    dev_env = {**env, "APGMS_ENV": "dev", "DATABASE_URL": database_url}
    settings = load_settings("auth", dev_env, master_key_required=True)
    password = demo_password(dev_env)
    master_key = settings.require_master_key()
    connection = await asyncpg.connect(database_url)
    try:
        seed = await seed_demo(connection, SecretBox(master_key), password)
        try:
            code = await ensure_demo_credential(connection, seed.org_id, master_key.reveal(), dev_env)
        except DemoRegulatorRefused as refused:
            warn(str(refused))
            return seed
        return dataclasses.replace(seed, regulator_code=code)
    finally:
        await connection.close()


def demo_logins(demo: DemoSeed) -> Text:
    """A few short lines: the demo logins of this dev stack (never seeded like this in production)."""
    password = demo.password if demo.password_matches else "(as set at an earlier seed)"
    text = Text.assemble(("Dev-only demo logins", "yellow"), ", password ", (password, "bold"), ":")
    for login in demo.logins:
        text.append(f"\n  {login.email} ({login.role}")
        if login.role == "admin":
            text.append(", TOTP secret ")
            text.append(demo.totp_secret or "unreadable with this master key", style="bold")
        text.append(")")
    if demo.regulator_code:
        # The code on a line of its own, so a terminal of 80 columns does not break it.
        text.append(f"\n  regulator {DEMO_CREDENTIAL_NAME} (org {demo.org_id}), access code:\n    ")
        text.append(demo.regulator_code, style="bold")
    return text


async def run_dev(
    processes: Sequence[ProcessSpec] = DEV_PROCESSES,
    environ: Mapping[str, str] | None = None,
    console: Console | None = None,
) -> int:
    """Run the stack until SIGINT/SIGTERM; the exit code: 0 clean, 1 could not start, 2 a configuration error."""
    from shared.migrations import MigrationError, migrate

    console = console or Console(highlight=False)
    env = {**environ_with_dotenv(environ, PROJECT_ROOT / ".env"), "APGMS_ENV": "dev"}
    busy = [spec for spec in processes if port_in_use(spec.port)]
    if busy:
        taken = ", ".join(f"{spec.port} ({spec.name})" for spec in busy)
        console.print(f"[red]error:[/] port {taken} already in use; is another `apgms dev` running?")
        return 1

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    supervisor: Supervisor | None = None
    forced = False

    def on_signal() -> None:
        nonlocal forced
        if stop.is_set():
            forced = True
            console.print("[yellow]Forcing shutdown.[/]")
            if supervisor is not None:
                supervisor.kill()
            return
        stop.set()
        console.print("[yellow]Shutting down (Ctrl+C again to force)...[/]")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal)
    postgres: LocalPostgres | None = None
    redis: LocalRedis | None = None
    try:
        data_dir = dev_dir(env)
        own_key_or_database = env.get("APGMS_MASTER_KEY") or env.get("DATABASE_URL")
        if (
            (data_dir / "pg" / "PG_VERSION").exists()
            and not (data_dir / MASTER_KEY_FILE).exists()
            and not own_key_or_database
        ):
            console.print(
                f"[yellow]The data in {shown_path(data_dir)} was made before each checkout had a master key of "
                "its own: what it sealed (signing keys, TOTP secrets) does not open with the new key. Remove that "
                "directory to start afresh.[/]"
            )
        env = with_dev_kek(with_dev_master_key(env))
        if env.get("APGMS_MASTER_KEY"):
            env = with_dev_service_clients(env)
        database_url = env.get("DATABASE_URL")
        if not database_url:
            postgres = LocalPostgres(dev_dir(env) / "pg")
            console.print(f"Starting PostgreSQL in {postgres.data_dir} ...")
            await asyncio.to_thread(postgres.start)
            database_url = postgres.dsn
        redis_url = env.get("REDIS_URL")
        if not redis_url and find_redis_server() is not None:
            redis = LocalRedis(dev_dir(env) / "redis")
            # On this thread (it takes ~15 ms): the kernel ties "die with parent" to the thread that forked.
            redis.start()
            redis_url = redis.url
        elif not redis_url:
            console.print("[yellow]No REDIS_URL and no redis-server binary: running without Redis.[/]")
        if stop.is_set():
            return 0

        applied = await migrate(database_url)
        for migration in applied:
            console.print(f"Applied migration {migration.label}")
        if not applied:
            console.print("Database schema is up to date.")
        try:
            demo = await seed_dev_demo(
                env, database_url, lambda message: console.print(f"[yellow]{escape(message)}[/]", soft_wrap=True)
            )
        except (ConfigError, SeedError) as error:
            console.print(f"[red]error:[/] {error}")
            return CONFIG_ERROR_EXIT_CODE

        base = dict(env)
        supervisor = Supervisor(
            processes,
            lambda spec: child_env(base, spec, database_url, redis_url),
            stop,
            make_emitter(console, [spec.name for spec in processes]),
        )
        supervisor.start()
        ready = await supervisor.wait_ready()
        if not stop.is_set():
            console.print(stack_table(supervisor, ready, database_url, postgres, redis_url, redis))
            if not all(ready.values()):
                console.print(f"[yellow]Not ready after {READY_TIMEOUT_S:g} s; see the logs above.[/]")
            console.print(
                f"API, regulator route and Prometheus federation: [bold]http://localhost:{PROXY_PORT}[/]"
                f"  (curl http://localhost:{PROXY_PORT}/ready)"
            )
            console.print(demo_logins(demo))
            console.print("Press Ctrl+C to stop.")
        await stop.wait()
        await supervisor.shutdown()
        if supervisor.config_error:
            console.print("[red]A service has an invalid configuration; stopped everything.[/]")
            return CONFIG_ERROR_EXIT_CODE
        return 1 if forced else 0
    except (DevServerError, MigrationError, *DATABASE_ERRORS) as error:
        if stop.is_set():
            return 1 if forced else 0
        console.print(f"[red]error:[/] {error}")
        return 1
    finally:
        if supervisor is not None:
            await supervisor.shutdown()
        if redis is not None:
            redis.stop()
        if postgres is not None:
            await asyncio.to_thread(postgres.stop)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        console.print("Stopped.")


def main() -> int:
    return asyncio.run(run_dev())
