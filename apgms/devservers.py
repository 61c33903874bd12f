"""Dev and throwaway PostgreSQL servers from the machine's own binaries (no Docker), and the helpers that
find or install PostgreSQL and Redis binaries, the Chromium and chromedriver the regulator portal's browser tests
drive, Prometheus with promtool (the rule tests of deploy/prometheus/), docker-compose (`docker-compose config`
validates docker-compose.yml; it needs no container engine), kubectl (`kubectl kustomize` renders the Kubernetes
overlays of deploy/k8s/; it needs no cluster) and checkov (security checks of the rendered overlays; a pinned
version in a virtualenv of its own).

PostgreSQL runs from `initdb`/`pg_ctl` in a directory of ours on a free loopback port; as root it runs as the
`postgres` system user (initdb refuses root). The Redis server class is in `apgms.localredis`.
Measured on Debian 12 (PG 15, 2 cores): empty dir to accepting connections 0.7 s, restart of an existing data
dir 0.15 s, `pg_ctl -m fast stop` 0.1 s, redis-server to first PING 10 ms.

`python -m apgms.devservers` makes sure the binaries the test suite needs are installed (used by `make test`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

PG_SUPERUSER = "postgres"
PG_OS_USER = "postgres"
PG_START_TIMEOUT_S = 30
PG_STOP_TIMEOUT_S = 30
# Durability is worthless for dev and test data; these make initdb + start about 3x faster.
PG_SPEED_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
# sun_path holds 107 bytes; past this length the server gets no Unix socket and is reached over TCP only.
MAX_SOCKET_DIR_CHARS = 80
# Debian/Ubuntu packages, then Homebrew's versioned kegs; the newest version wins.
PG_BINDIR_GLOBS = (
    ("/usr/lib/postgresql", "*/bin/initdb"),
    ("/opt/homebrew/opt", "postgresql@*/bin/initdb"),
    ("/usr/local/opt", "postgresql@*/bin/initdb"),
)
# A port picked by `free_port` can be taken by someone else before the server binds it.
PORT_ATTEMPTS = 3
# Production (compose's postgres:15 image) runs UTF-8 under en_US.utf8, where lower() and friends follow Unicode;
# under the plain "C" locale they touch ASCII only, which hid a lockout bypass from the suite (issue #9). C.UTF-8
# has the production semantics for characters, sorts by code point, and comes with glibc (no locales package);
# macOS has en_US.UTF-8.
PG_LOCALE_CANDIDATES = ("C.UTF-8", "en_US.UTF-8")

PG_MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found. Install them with "
    "`sudo apt-get install postgresql` (Debian/Ubuntu) or `brew install postgresql@16` (macOS), "
    "or point DATABASE_URL (TEST_DATABASE_URL for the tests) at an existing server."
)
CHROMIUM_MISSING = (
    "Chromium and its chromedriver were not found (the regulator portal's browser tests drive them). Install them "
    "with `sudo apt-get install chromium chromium-driver` (Debian; Ubuntu: `chromium-browser chromium-chromedriver`) "
    "or point APGMS_CHROMIUM and APGMS_CHROMEDRIVER at the binaries."
)
# Debian's names first; other distributions and Google's builds use the others.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PROMETHEUS_MISSING = (
    "prometheus and promtool were not found (the tests check deploy/prometheus/ with promtool and evaluate its "
    "PromQL on a real Prometheus). Install them with `sudo apt-get install prometheus` (Debian/Ubuntu) or "
    "`brew install prometheus` (macOS), or point APGMS_PROMETHEUS and APGMS_PROMTOOL at the binaries."
)
DOCKER_COMPOSE_MISSING = (
    "docker-compose was not found (the tests validate docker-compose.yml with `docker-compose config`, which needs "
    "no container engine). Install it with `sudo apt-get install docker-compose` (Debian/Ubuntu) or point "
    "APGMS_DOCKER_COMPOSE at a docker-compose binary."
)
KUBECTL_MISSING = (
    "kubectl was not found (the tests render the Kubernetes manifests of deploy/k8s/ with `kubectl kustomize`, which "
    "needs no cluster). Install it with `sudo apt-get install kubernetes-client` (Debian/Ubuntu) or point "
    "APGMS_KUBECTL at a kubectl binary."
)
# checkov's pinned version, in a virtualenv of its own under the project's .venv (ignored by git and by docker
# builds): its dependencies conflict with constraints.txt (it requires packaging<24), so it cannot be one of the
# project's. A new pin installs into a new directory. The stamp is written once pip has finished, so a half-done
# install is redone rather than used.
CHECKOV_VERSION = "3.3.30"
# A stalled download must end the set-up with a message, not hang CI (measured: 23 s warm, about 95 s cold).
CHECKOV_INSTALL_TIMEOUT_S = 900
CHECKOV_VENV = Path(__file__).resolve().parents[1] / ".venv" / "tools" / f"checkov-{CHECKOV_VERSION}"
CHECKOV_STAMP = ".installed"
CHECKOV_MISSING = (
    f"checkov {CHECKOV_VERSION} was not found in {CHECKOV_VENV} (the tests run it over the rendered Kubernetes "
    "overlays of deploy/k8s/). Install it with `.venv/bin/python -m apgms.devservers` (make test does), or point "
    "APGMS_CHECKOV at a checkov binary."
)
REDIS_MISSING = (
    "redis-server was not found. Install it with `sudo apt-get install redis-server` (Debian/Ubuntu) or "
    "`brew install redis` (macOS), or point REDIS_URL (TEST_REDIS_URL for the tests) at an existing server."
)


# What connecting to or talking with a database can raise that is the database's fault, not a bug of ours.
DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class DevServerError(RuntimeError):
    """A dev server cannot be found, installed or started; the message says what to do."""


# --- small helpers ---------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def is_root() -> bool:
    return os.geteuid() == 0


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier quoted for SQL text (CREATE DATABASE takes no parameters)."""
    return '"' + name.replace('"', '""') + '"'


def dsn_with_database(dsn: str, database: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


def redact_url(url: str) -> str:
    """The URL without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def die_with_parent() -> None:
    """`preexec_fn` for children: on Linux they get SIGTERM when we die, even by SIGKILL, so none is orphaned."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def process_matches(pid: int, program: str) -> bool:
    """Whether `pid` is alive and runs `program`: a pid from a stale pid file may belong to anything by now."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not Path("/proc/self").exists():
        return True
    try:
        return program.encode() in cmdline.read_bytes()
    except OSError:
        return False


def read_pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None


def may_traverse(mode: int, owner_uid: int, owner_gid: int, uid: int, gids: set[int]) -> bool:
    """Whether a user (uid, gids) may enter a directory with these permission bits and owner."""
    if uid == 0:
        return True
    if owner_uid == uid:
        return bool(mode & stat.S_IXUSR)
    if owner_gid in gids:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


def first_blocked_dir(path: Path, user: str) -> Path | None:
    """The first existing directory on the way to `path` that `user` may not enter, or None."""
    account = pwd.getpwnam(user)
    gids = {account.pw_gid} | {group.gr_gid for group in grp.getgrall() if user in group.gr_mem}
    for directory in [*reversed(path.parents), path]:
        if not directory.exists():
            break
        info = directory.stat()
        if not may_traverse(info.st_mode, info.st_uid, info.st_gid, account.pw_uid, gids):
            return directory
    return None


def apt_install(*packages: str) -> None:
    """`apt-get update` + install, progress on stderr; only called when we are root and apt-get exists."""
    print(f"Installing {' '.join(packages)} with apt-get (one-time set-up)...", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "-q", "update"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
    ):
        result = subprocess.run(argv, env=env, stdout=sys.stderr, check=False)
        if result.returncode != 0:
            raise DevServerError(f"`{' '.join(argv)}` failed with exit code {result.returncode}")


def can_apt_install() -> bool:
    return is_root() and shutil.which("apt-get") is not None


# --- finding the binaries --------------------------------------------------------------------------------------


def _version_key(initdb: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", initdb.parent.parent.name)) or (0,)


def find_pg_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl of the newest PostgreSQL on this machine, or None."""
    override = os.environ.get("APGMS_PG_BINDIR")
    if override:
        return Path(override) if (Path(override) / "initdb").exists() else None
    for root, pattern in PG_BINDIR_GLOBS:
        found = sorted(Path(root).glob(pattern), key=_version_key)
        if found:
            return found[-1].parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(result.stdout.strip())
        if result.returncode == 0 and (bindir / "initdb").exists():
            return bindir
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def pick_utf8_locale(available: Iterable[str]) -> str | None:
    """The first of PG_LOCALE_CANDIDATES among `available` (as `locale -a` spells it: `C.utf8` is `C.UTF-8`)."""
    spelled = {name.lower().replace("-", ""): name for name in available}
    for candidate in PG_LOCALE_CANDIDATES:
        found = spelled.get(candidate.lower().replace("-", ""))
        if found is not None:
            return found
    return None


def utf8_locale() -> str:
    """The locale new clusters are initialised with; DevServerError when this machine has no UTF-8 one."""
    try:
        listed = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False).stdout.split()
    except FileNotFoundError:
        listed = []
    found = pick_utf8_locale(listed)
    if found is None:
        raise DevServerError(
            f"No UTF-8 locale ({' or '.join(PG_LOCALE_CANDIDATES)}) is installed, and PostgreSQL must run with one "
            "as in production. Install one (Debian/Ubuntu: `sudo apt-get install locales-all`) or point "
            "DATABASE_URL (TEST_DATABASE_URL for the tests) at an existing UTF-8 server."
        )
    return found


def ensure_pg_bindir(*, install: bool = True) -> Path:
    """`find_pg_bindir`, installing the `postgresql` package first when missing and allowed (root + apt-get)."""
    bindir = find_pg_bindir()
    if bindir is None and install and can_apt_install():
        apt_install("postgresql")
        bindir = find_pg_bindir()
    if bindir is None:
        raise DevServerError(PG_MISSING)
    return bindir


def find_redis_server() -> Path | None:
    found = shutil.which("redis-server")
    return Path(found) if found else None


def ensure_redis_server(*, install: bool = True) -> Path:
    """`find_redis_server`, installing `redis-server` with apt-get first when missing and allowed."""
    binary = find_redis_server()
    if binary is None and install and can_apt_install():
        apt_install("redis-server")
        binary = find_redis_server()
    if binary is None:
        raise DevServerError(REDIS_MISSING)
    return binary


@dataclass(frozen=True)
class Browser:
    """A Chromium binary and the chromedriver of the same version that drives it."""

    chromium: Path
    chromedriver: Path


def _binary(variable: str, names: Iterable[str]) -> Path | None:
    override = os.environ.get(variable)
    if override:
        return Path(override) if Path(override).exists() else None
    for name in names:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


T = TypeVar("T")


def _found_or_installed(find: Callable[[], T | None], packages: Sequence[str], missing: str, *, install: bool) -> T:
    """What `find` finds, installing Debian's `packages` first when it finds nothing and installing is allowed;
    DevServerError(`missing`) when it is still missing."""
    found = find()
    if found is None and install and can_apt_install():
        apt_install(*packages)
        found = find()
    if found is None:
        raise DevServerError(missing)
    return found


def find_browser() -> Browser | None:
    """Chromium and chromedriver (APGMS_CHROMIUM / APGMS_CHROMEDRIVER, else on PATH), or None when either is
    missing."""
    chromium = _binary("APGMS_CHROMIUM", CHROMIUM_NAMES)
    driver = _binary("APGMS_CHROMEDRIVER", ("chromedriver",))
    return Browser(chromium, driver) if chromium and driver else None


def ensure_browser(*, install: bool = True) -> Browser:
    """`find_browser`, installing Debian's `chromium` and `chromium-driver` first when missing and allowed."""
    return _found_or_installed(find_browser, ("chromium", "chromium-driver"), CHROMIUM_MISSING, install=install)


@dataclass(frozen=True)
class PrometheusBinaries:
    """The Prometheus server and its promtool (rule and config checks, `promtool test rules`)."""

    prometheus: Path
    promtool: Path


def find_prometheus() -> PrometheusBinaries | None:
    """prometheus and promtool (APGMS_PROMETHEUS / APGMS_PROMTOOL, else on PATH), or None when either is missing."""
    server = _binary("APGMS_PROMETHEUS", ("prometheus",))
    promtool = _binary("APGMS_PROMTOOL", ("promtool",))
    return PrometheusBinaries(server, promtool) if server and promtool else None


def ensure_prometheus(*, install: bool = True) -> PrometheusBinaries:
    """`find_prometheus`, installing Debian's `prometheus` package (server and promtool) first when missing and
    allowed. The package's systemd unit is not started by us: the tests run their own server on a free port."""
    return _found_or_installed(find_prometheus, ("prometheus",), PROMETHEUS_MISSING, install=install)


def find_docker_compose() -> Path | None:
    """docker-compose (APGMS_DOCKER_COMPOSE, else on PATH), or None."""
    return _binary("APGMS_DOCKER_COMPOSE", ("docker-compose",))


def ensure_docker_compose(*, install: bool = True) -> Path:
    """`find_docker_compose`, installing Debian's `docker-compose` package first when missing and allowed. Only its
    `config` command is used (it reads and resolves the file without a container engine)."""
    return _found_or_installed(find_docker_compose, ("docker-compose",), DOCKER_COMPOSE_MISSING, install=install)


def find_kubectl() -> Path | None:
    """kubectl (APGMS_KUBECTL, else on PATH), or None."""
    return _binary("APGMS_KUBECTL", ("kubectl",))


def ensure_kubectl(*, install: bool = True) -> Path:
    """`find_kubectl`, installing Debian's `kubernetes-client` package first when missing and allowed. Only its
    `kustomize` command is used (it renders an overlay without a cluster); the manifests are written for the
    kustomize inside Debian's kubectl (v2.0.3) and every newer one."""
    return _found_or_installed(find_kubectl, ("kubernetes-client",), KUBECTL_MISSING, install=install)


def find_checkov() -> Path | None:
    """checkov (APGMS_CHECKOV, else the pinned version in CHECKOV_VENV once its install has finished), or None."""
    override = os.environ.get("APGMS_CHECKOV")
    if override:
        return Path(override) if Path(override).exists() else None
    binary = CHECKOV_VENV / "bin" / "checkov"
    return binary if binary.exists() and (CHECKOV_VENV / CHECKOV_STAMP).exists() else None


def install_checkov() -> None:
    """A fresh virtualenv in CHECKOV_VENV with checkov==CHECKOV_VERSION from PyPI, progress on stderr. Needs no
    root: the virtualenv is in the project's own directory (about 290 MB; 23 s measured with PyPI reachable)."""
    print(f"Installing checkov {CHECKOV_VERSION} into {CHECKOV_VENV} (one-time set-up)...", file=sys.stderr, flush=True)
    shutil.rmtree(CHECKOV_VENV, ignore_errors=True)
    python = CHECKOV_VENV / "bin" / "python"
    pip_install = ["install", "--quiet", "--disable-pip-version-check", f"checkov=={CHECKOV_VERSION}"]
    for argv in ([sys.executable, "-m", "venv", str(CHECKOV_VENV)], [str(python), "-m", "pip", *pip_install]):
        try:
            result = subprocess.run(argv, stdout=sys.stderr, check=False, timeout=CHECKOV_INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise DevServerError(f"`{' '.join(argv)}` did not finish within {CHECKOV_INSTALL_TIMEOUT_S} s") from None
        if result.returncode != 0:
            raise DevServerError(f"`{' '.join(argv)}` failed with exit code {result.returncode}")
    (CHECKOV_VENV / CHECKOV_STAMP).touch()


def ensure_checkov(*, install: bool = True) -> Path:
    """`find_checkov`, installing the pinned checkov into its own virtualenv first when missing and allowed."""
    found = find_checkov()
    if found is None and install:
        install_checkov()
        found = find_checkov()
    if found is None:
        raise DevServerError(CHECKOV_MISSING)
    return found


# --- databases -------------------------------------------------------------------------------------------------


async def create_database(admin_dsn: str, name: str, *, template: str | None = None) -> str:
    """Create database `name` (optionally from `template`) on the server of `admin_dsn`; returns its DSN."""
    sql = f"CREATE DATABASE {quote_ident(name)}"
    if template is not None:
        sql += f" TEMPLATE {quote_ident(template)}"
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()
    return dsn_with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database `name` if it exists, disconnecting its sessions first (FORCE on PostgreSQL 13+)."""
    connection = await asyncpg.connect(admin_dsn)
    try:
        version = int(await connection.fetchval("SHOW server_version_num"))
        force = " WITH (FORCE)" if version >= 130000 else ""
        await connection.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}{force}")
    finally:
        await connection.close()


# --- PostgreSQL ------------------------------------------------------------------------------------------------


def _local_dsn(port: int) -> str:
    return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{port}/postgres"


class LocalPostgres:
    """A PostgreSQL server of our own in `data_dir` (created with initdb on first start, reused afterwards)."""

    def __init__(self, data_dir: Path, port: int | None = None, *, bindir: Path | None = None) -> None:
        self.data_dir = data_dir.absolute()
        self.log_file = self.data_dir / "postgres.log"
        self._requested_port = port
        self._port: int | None = None
        self._bindir = bindir

    @property
    def port(self) -> int:
        if self._port is None:
            raise DevServerError("PostgreSQL is not started")
        return self._port

    @property
    def dsn(self) -> str:
        return _local_dsn(self.port)

    @property
    def running(self) -> bool:
        pid = read_pid_file(self.data_dir / "postmaster.pid")
        return pid is not None and process_matches(pid, "postgres")

    def running_dsn(self) -> str | None:
        """The DSN of the server running in `data_dir` now, whoever started it (`make run` in another terminal), or
        None. PostgreSQL writes its port on the fourth line of postmaster.pid."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            port = int(lines[3])
        except (OSError, IndexError, ValueError):
            return None
        return _local_dsn(port) if self.running else None

    def start(self) -> None:
        if self._port is not None:
            return
        self._bindir = self._bindir or ensure_pg_bindir()
        self._prepare_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb",
                *("-D", str(self.data_dir), "-U", PG_SUPERUSER, "--auth=trust", "--no-sync"),
                *("-E", "UTF8", f"--locale={utf8_locale()}"),
            )
        self._stop_stale_postmaster()
        for attempt in range(1 if self._requested_port else PORT_ATTEMPTS):
            port = self._requested_port or free_port()
            log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            result = self._run(
                "pg_ctl",
                *("-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", str(PG_START_TIMEOUT_S)),
                *("-o", self._server_options(port), "start"),
                check=False,
            )
            if result.returncode == 0:
                self._port = port
                return
            log_tail = self._log_since(log_offset)
            if "could not bind" in log_tail and attempt + 1 < PORT_ATTEMPTS and not self._requested_port:
                continue
            raise DevServerError(
                f"PostgreSQL in {self.data_dir} did not start on port {port}:\n"
                f"{(log_tail or result.stderr or result.stdout).strip()}"
            )

    def stop(self) -> None:
        """Fast shutdown (disconnects clients, no data loss); does nothing when it is not running."""
        self._port = None
        if not self.running:
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(PG_STOP_TIMEOUT_S), "stop")

    async def create_database(self, name: str, template: str | None = None) -> str:
        return await create_database(self.dsn, name, template=template)

    async def drop_database(self, name: str) -> None:
        await drop_database(self.dsn, name)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _server_options(self, port: int) -> str:
        socket_dir = str(self.data_dir) if len(str(self.data_dir)) <= MAX_SOCKET_DIR_CHARS else "''"
        return f"-c listen_addresses=127.0.0.1 -p {port} -k {socket_dir} {PG_SPEED_OPTIONS}"

    def _prepare_dir(self) -> None:
        if not is_root():
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            return
        try:
            account = pwd.getpwnam(PG_OS_USER)
        except KeyError:
            raise DevServerError(
                "Running as root, PostgreSQL must run as the `postgres` system user, which does not exist; "
                "it comes with the `postgresql` package (`apt-get install postgresql`)."
            ) from None
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        blocked = first_blocked_dir(self.data_dir.parent, PG_OS_USER)
        if blocked is not None:
            raise DevServerError(
                f"The `postgres` user cannot enter {blocked} (mode {stat.filemode(blocked.stat().st_mode)}), "
                f"so it cannot use {self.data_dir}. Keep the data directory under a path it can traverse "
                f"(set APGMS_DEV_DIR, e.g. /srv/apgms) or allow it with `chmod o+x {blocked}`."
            )
        if self.data_dir.stat().st_uid != account.pw_uid:
            for root, dirs, files in os.walk(self.data_dir):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.chown(name, account.pw_uid, account.pw_gid)

    def _stop_stale_postmaster(self) -> None:
        """A postmaster left over from a run that was killed: stop it, or drop its pid file if it is gone."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        if self.running:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        else:
            pid_file.unlink(missing_ok=True)

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self._bindir is not None
        argv = [str(self._bindir / tool), *args]
        if is_root():
            argv = ["runuser", "-u", PG_OS_USER, "--", *argv]
        # cwd=/ so the postgres user is never left in a directory it may not read (initdb warns about it).
        # Own session: a Ctrl+C meant for the supervisor must not interrupt initdb or pg_ctl halfway.
        result = subprocess.run(argv, capture_output=True, text=True, cwd="/", start_new_session=True, check=False)
        if check and result.returncode != 0:
            raise DevServerError(
                f"{tool} failed with exit code {result.returncode}:\n{(result.stderr or result.stdout).strip()}"
            )
        return result

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""


def ensure_test_binaries(environ: Mapping[str, str]) -> None:
    """Install what the test session starts itself: PostgreSQL unless TEST_DATABASE_URL, Redis unless TEST_REDIS_URL,
    the browser of the portal's tests, Prometheus with promtool, docker-compose, kubectl and checkov."""
    if not environ.get("TEST_DATABASE_URL"):
        print(f"PostgreSQL binaries: {ensure_pg_bindir()}")
    if not environ.get("TEST_REDIS_URL"):
        print(f"redis-server: {ensure_redis_server()}")
    browser = ensure_browser()
    print(f"chromium: {browser.chromium}, chromedriver: {browser.chromedriver}")
    prometheus = ensure_prometheus()
    print(f"prometheus: {prometheus.prometheus}, promtool: {prometheus.promtool}")
    print(f"docker-compose: {ensure_docker_compose()}")
    print(f"kubectl: {ensure_kubectl()}")
    print(f"checkov: {ensure_checkov()}")


if __name__ == "__main__":
    try:
        ensure_test_binaries(os.environ)
    except DevServerError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
