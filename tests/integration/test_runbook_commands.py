"""Every command of the operations docs runs as written: each line of every ```sh block of every docs/ops/*.md and of
README.md is classified and checked, one test per command.

A command is one logical line (a trailing backslash continues it); comment-only lines are not commands. A command
may set variables first (`A=x cmd`), capture another command (`TOKEN=$(curl ... | jq -r .access_token)`: the inner
command is checked) and pipe into filters (`| jq`, `| grep`, `| head`, `| tee FILE`, `| sed`: they must be
installed). Shell variables are replaced by sample values of the right shape (SAMPLES); a variable without a
sample fails the test, so a new one must be given a shape here.

How each kind is checked (the split between running and parsing):

- run for real, against a fresh migrated test database (DATABASE_URL) and this machine: `pg_isready`, `ss`,
  `apgms db status` and `apgms db migrate` (exit 0);
- `apgms ...`: parsed by the real CLI (typer/click `make_context`, in process) with the sample values: the
  subcommand exists, every option exists and every value has the right type (a uuid for `--org`, ...), required
  options are there; and `apgms <subcommand> --help` exits 0. Running them needs a whole stack and writes state;
  the smoke checklist's e2e test (tests/e2e/test_smoke_checklist.py) runs those of the checklist for real;
- `curl ...`: the URL's path and method exist in the route tables: the proxy's own routes (/health, /ready,
  /metrics, /federate), else the proxy's prefix table names a service, whose app (built by its real
  `create_app`) must have a route matching path and method. A service port (127.0.0.1:3001-3004) checks that
  service's table directly;
- `make TARGET`: `make -n TARGET` exits 0; `python -m MODULE`: the module has a `__main__`;
- `promtool check|test rules FILES` (after `cd DIR &&`): run for real in DIR (promtool comes with Debian's
  `prometheus`, which the test set-up installs); `cd DIR && A && B`: DIR exists and each part is checked;
- `.venv/bin/apgms` and `.venv/bin/python` are `apgms` and `python`;
- `.venv/bin/pytest FILE...`: every file exists;
- `grep PATTERN FILE` as a command of its own: FILE is written by an earlier `| tee FILE` of the same doc.

A trailing marker says a command cannot run here: `# needs: production` (production hosts or secrets; a curl is
still route-checked), `# needs: docker` (a `docker compose` command, or a curl to compose's Prometheus or Grafana
on 127.0.0.1:9090/3030, whose query, if any, must be one of the expressions the PromQL evaluation test runs), `#
needs: k6` (must be `k6 run` of an existing script), `# needs: stack` (acts on a running `make run` stack's
processes: `kill -STOP|-CONT` of its PostgreSQL, whose pid file path is checked), `# foreground` (runs until Ctrl+C:
checked as above without being run), `# needs: cluster` (a kubectl command against a Kubernetes cluster: every
`deploy/k8s/...` path it names exists, a `kubectl kustomize` in it renders for real, a `create secret generic NAME`
names a Secret the rendered manifests read, and a piped `kubectl apply` is allowed as a filter). An unknown
marker, or a command of no kind above, fails its test: nothing is skipped silently.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from markdown_it import MarkdownIt
from starlette.routing import BaseRoute, Match
from typer.core import TyperGroup
from typer.testing import CliRunner

from apgms.cli import app as cli_app
from proxy.config import load_proxy_settings
from services.auth.config import load_auth_settings
from services.compliance.config import load_compliance_settings
from services.core.config import load_core_settings
from services.regulator.config import load_regulator_settings
from shared.config import PROXY_PORT, SERVICE_PORTS, new_master_key

ROOT = Path(__file__).resolve().parents[2]
DOCS = (*sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "ops").glob("*.md")), "README.md")
MARKERS = ("needs: production", "needs: docker", "needs: k6", "needs: stack", "needs: cluster", "foreground")
# Ports compose publishes on loopback besides the proxy: Prometheus and Grafana.
COMPOSE_MONITORING_PORTS = (9090, 3030)
FILTERS = ("jq", "grep", "head", "tee", "sed")
RUN_FOR_REAL_CLI = (("db", "status"), ("db", "migrate"))
SAMPLE_ORG = "0b4f7c3e-1d2a-4e5f-8a9b-0c1d2e3f4a5b"
# The shape of each variable the docs use.
SAMPLES = {
    "ORG": SAMPLE_ORG,
    "DEMO_ORG_ID": SAMPLE_ORG,
    "TOKEN": "eyJhbGciOiJFZERTQSJ9.e30.c2ln",
    "EMAIL": "admin@demo.apgms.example",
    "PASSWORD": "demo-password-dev-only",
    "TOTP_SECRET": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
    "TOTP_CODE": "123456",
    "ACCESS_CODE": "rgc.3f9a0c1d2e4b5a69.Zk3secret",
    "APGMS_REGULATOR_ACCESS_CODE": "rgc.3f9a0c1d2e4b5a69.Zk3secret",
    "NAME": "asic.team-1",
    "METRICS_BEARER_TOKEN": "scrape-credential",
    "ACCESS_TOKEN": "eyJhbGciOiJFZERTQSJ9.e30.c2ln",
    "PACK_ID": "6d0c3c9e-4b1a-4f7e-9c2d-8a1b3c5d7e9f",
    "DEMO_REGULATOR_CODE": "rgc.3f9a0c1d2e4b5a69.Zk3secret",
    "MASTER_KEY": "YXBnbXMtc2FtcGxlLW1hc3Rlci1rZXktMDAwMDAwMDA=",
    "KEK": "YXBnbXMtc2FtcGxlLXBpaS1rZWstMDAwMDAwMDAwMDA=",
    "CORE_SECRET": "s" * 43,
    "COMPLIANCE_SECRET": "s" * 43,
    "REGULATOR_SECRET": "s" * 43,
    "METRICS_TOKEN": "m" * 32,
}
_MARKER = re.compile(r"\s#\s*(?P<marker>[a-z][a-z0-9 :]*?)\s*$")
_CAPTURE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=\$\((?P<inner>.*)\)$")
_VARIABLE = re.compile(r"\$\{?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}?")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_REDIRECT = re.compile(r"^\d?>(&\d|.*)$")


@dataclass(frozen=True)
class DocCommand:
    doc: str
    line: int
    text: str
    marker: str | None

    @property
    def id(self) -> str:
        return f"{Path(self.doc).name}:{self.line}"


def commands_of(doc: str) -> Iterator[DocCommand]:
    """Each command of the doc's ```sh blocks as a CommonMark renderer (GitHub's) sees them (markdown-it, so a
    fence that renders as text, e.g. over-indented in a list, is not taken for one), continuation lines joined,
    with its trailing marker if any."""
    tokens = MarkdownIt("commonmark").parse((ROOT / doc).read_text())
    for token in tokens:
        if token.type != "fence" or token.info.strip() != "sh" or token.map is None:
            continue
        pending: list[str] = []
        start = 0
        for offset, raw in enumerate(token.content.splitlines()):
            number = token.map[0] + 2 + offset
            stripped = raw.strip()
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if not pending:
                start = number
            if stripped.endswith("\\"):
                pending.append(stripped[:-1].strip())
                continue
            pending.append(stripped)
            text = " ".join(pending)
            pending = []
            found = _MARKER.search(text)
            marker = found["marker"] if found and found["marker"].startswith(("needs:", "foreground")) else None
            yield DocCommand(doc, start, text, marker)
        assert not pending, f"{doc}:{start}: a command ends with a continuation backslash"


def all_commands() -> list[DocCommand]:
    return [command for doc in DOCS if (ROOT / doc).exists() for command in commands_of(doc)]


def with_samples(text: str, samples: dict[str, str]) -> str:
    def sample(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in samples:
            pytest.fail(f"variable ${name} has no sample value in SAMPLES; add its shape there")
        return samples[name]

    return _VARIABLE.sub(sample, text)


def segments(text: str) -> list[list[str]]:
    """The pipeline's commands as argv lists (comments, variable assignments and redirections dropped)."""
    tokens = [token for token in shlex.split(text, comments=True) if not _REDIRECT.match(token)]
    pipeline: list[list[str]] = [[]]
    for token in tokens:
        if token == "|":
            pipeline.append([])
        else:
            pipeline[-1].append(token)
    for argv in pipeline:
        while argv and _ASSIGNMENT.match(argv[0]):
            argv.pop(0)
    return pipeline


# --- route tables ------------------------------------------------------------------------------------------------


@cache
def service_routes() -> dict[str, list[BaseRoute]]:
    """Every service's routes as its real `create_app` builds them (nothing is started)."""
    import services.auth.app as auth_app
    import services.compliance.app as compliance_app
    import services.core.app as core_app
    import services.regulator.app as regulator_app

    env = {
        "APGMS_ENV": "dev",
        "DATABASE_URL": "postgresql://apgms@127.0.0.1:1/apgms",
        "APGMS_MASTER_KEY": new_master_key(),
        "SERVICE_CLIENT_SECRET": "s" * 43,
    }
    built = {
        "auth": auth_app.create_app(load_auth_settings(env)),
        "core": core_app.create_app(load_core_settings(env)),
        "compliance": compliance_app.create_app(load_compliance_settings(env)),
        "regulator": regulator_app.create_app(load_regulator_settings(env)),
    }
    return {name: list(app.routes) for name, app in built.items()}


@cache
def proxy_tables() -> tuple[frozenset[str], object]:
    import proxy.app as proxy_app

    settings = load_proxy_settings({"APGMS_ENV": "dev"})
    dispatch = proxy_app.create_app(settings)
    return dispatch.own_paths, settings.routes


def route_exists(service: str, method: str, path: str) -> bool:
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"", "headers": []}
    return any(route.matches(scope)[0] is Match.FULL for route in service_routes()[service])


def check_curl(argv: list[str]) -> None:
    urls = [token for token in argv if token.startswith(("http://", "https://"))]
    assert len(urls) == 1, f"a curl command must name one URL: {argv}"
    method = "GET"
    data_options = {"-d", "--data", "--data-urlencode", "--data-raw", "--data-binary"}
    short_flags = "".join(token[1:] for token in argv if re.fullmatch(r"-[A-Za-z]+", token))
    if any(token in data_options for token in argv) and "G" not in short_flags and "--get" not in argv:
        method = "POST"
    if "-X" in argv:
        method = argv[argv.index("-X") + 1]
    parts = urlsplit(urls[0])
    path = parts.path or "/"
    own_paths, table = proxy_tables()
    services_by_port = {port: name for name, port in SERVICE_PORTS.items()}
    if parts.port in services_by_port:
        service = services_by_port[parts.port]
        assert route_exists(service, method, path), f"{service} has no route {method} {path}"
        return
    assert parts.port in (PROXY_PORT, None), f"not the proxy nor a service port: {urls[0]}"
    if path in own_paths:
        assert method in ("GET", "HEAD"), f"the proxy's {path} answers GET only"
        return
    route = table.match(path)  # type: ignore[attr-defined]
    assert route is not None, f"the proxy routes no service for {path}"
    assert route_exists(route.service, method, path), f"{route.service} has no route {method} {path}"


# --- the CLI -----------------------------------------------------------------------------------------------------


def check_apgms(argv: list[str], database_url: str | None) -> None:
    # typer 0.29 carries its own click (typer._click): groups are told by their type, TyperGroup.
    command: Any = typer.main.get_command(cli_app)
    path: list[str] = []
    args = argv[1:]
    while isinstance(command, TyperGroup) and args and not args[0].startswith("-"):
        found = command.get_command(typer.Context(command), args[0])
        assert found is not None, f"apgms has no command {' '.join([*path, args[0]])}"
        command, path, args = found, [*path, args[0]], args[1:]
    assert path, f"not an apgms subcommand: {argv}"
    assert not isinstance(command, TyperGroup), f"apgms {' '.join(path)} needs a subcommand"
    # The real parser: unknown options, wrong types and missing required ones raise here.
    command.make_context(" ".join(["apgms", *path]), list(args))
    helped = CliRunner().invoke(cli_app, [*path, "--help"])
    assert helped.exit_code == 0, helped.output
    if tuple(path) in RUN_FOR_REAL_CLI:
        assert database_url is not None
        ran = subprocess.run(
            [sys.executable, "-m", "apgms", *path, *args],
            env={**os.environ, "DATABASE_URL": database_url},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr


# --- one command -------------------------------------------------------------------------------------------------


def teed_files(doc: str) -> set[str]:
    files = set()
    for command in commands_of(doc):
        for argv in segments(command.text):
            if argv[:1] == ["tee"]:
                files.update(argv[1:])
    return files


def check_monitoring_curl(argv: list[str]) -> None:
    """A curl to compose's Prometheus or Grafana: the port is one compose publishes, and a Prometheus query is one of
    the expressions tests/e2e/test_promql_evaluated.py evaluates."""
    from promql_sources import all_expressions

    urls = [token for token in argv if token.startswith(("http://", "https://"))]
    assert len(urls) == 1, f"a curl command must name one URL: {argv}"
    assert urlsplit(urls[0]).port in COMPOSE_MONITORING_PORTS, f"not compose's Prometheus or Grafana: {urls[0]}"
    queries = [token.removeprefix("query=") for token in argv if token.startswith("query=")]
    known = {" ".join(expression.expr.split()) for expression in all_expressions()}
    for query in queries:
        assert " ".join(query.split()) in known or re.fullmatch(r"[a-z_:][a-z0-9_:]*(\{[^}]*\})?", query), (
            f"the query {query!r} is neither a recorded series nor an expression the evaluation test runs"
        )


@cache
def secrets_the_manifests_read() -> frozenset[str]:
    """The Secret names the production overlay's objects refer to: secretKeyRef names and secretName fields."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", "deploy/k8s/overlays/production"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "secretKeyRef" and isinstance(value, dict):
                    names.add(str(value["name"]))
                elif key == "secretName":
                    names.add(str(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for document in yaml.safe_load_all(rendered):
        walk(document)
    return frozenset(names)


def check_kubectl(argv: list[str], piped: bool) -> None:
    assert argv[0] == "kubectl", "only kubectl commands may need a cluster"
    for token in argv:
        if token.startswith("deploy/k8s"):
            assert (ROOT / token).exists(), f"no {token}"
    if "create" in argv:
        at = argv.index("create")
        if argv[at : at + 3] == ["create", "secret", "generic"]:
            assert argv[at + 3] in secrets_the_manifests_read(), f"no manifest reads a Secret {argv[at + 3]}"
    if argv[1] == "kustomize" and not piped:
        ran = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert ran.returncode == 0, ran.stderr


def check_argv(argv: list[str], command: DocCommand, database_url: str | None, piped: bool) -> None:
    if argv[0] in (".venv/bin/apgms", ".venv/bin/python"):
        argv = [argv[0].removeprefix(".venv/bin/"), *argv[1:]]
    name = argv[0]
    if command.marker == "needs: cluster":
        check_kubectl(argv, piped)
        return
    if piped:
        assert name in FILTERS, f"{name} is not a known filter ({', '.join(FILTERS)})"
        assert shutil.which(name), f"{name} is not installed"
        return
    if command.marker == "needs: docker":
        if name == "curl":
            check_monitoring_curl(argv)
            return
        assert argv[:2] == ["docker", "compose"], (
            "only docker compose commands and compose's monitoring may need docker"
        )
        assert (ROOT / "docker-compose.yml").exists()
        return
    if command.marker == "needs: stack":
        assert argv[:1] == ["kill"] and argv[1] in ("-STOP", "-CONT"), "only kill -STOP/-CONT may need a stack"
        assert ".devdb/pg/postmaster.pid" in command.text, "the pid must be make run's PostgreSQL's"
        return
    if command.marker == "needs: k6":
        assert argv[:2] == ["k6", "run"], "only k6 run may need k6"
        script = argv[-1]
        assert (ROOT / script).exists(), f"no k6 script {script}"
        return
    if name == "apgms":
        check_apgms(argv, database_url)
    elif name == "curl":
        check_curl(argv)
    elif name in ("pg_isready", "ss"):
        assert name != "pg_isready" or database_url is not None
        ran = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert ran.returncode == 0, f"{argv} exited {ran.returncode}: {ran.stdout}{ran.stderr}"
    elif name == "make":
        ran = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True, text=True, check=False)
        assert ran.returncode == 0, ran.stderr
    elif name == "promtool":
        assert argv[1:3] in (["check", "rules"], ["test", "rules"]), f"unknown promtool use {argv}"
        assert shutil.which("promtool"), "promtool is not installed (Debian's prometheus package)"
        cwd = ROOT / command_dir(command.text)
        files = sorted(str(p.relative_to(cwd)) for pattern in argv[3:] for p in cwd.glob(pattern))
        assert files, f"{argv[3:]} match no file in {cwd}"
        ran = subprocess.run([*argv[:3], *files], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
        assert ran.returncode == 0, ran.stdout + ran.stderr
    elif argv[:2] == ["python", "-m"]:
        # Found as `python -m` finds it: from the checkout's root (a module of tests/ too), in a process of its own.
        probe = (
            "import importlib.util, sys; spec = importlib.util.find_spec(sys.argv[1]); "
            "sys.exit(0 if spec and (spec.submodule_search_locations is None "
            "or importlib.util.find_spec(sys.argv[1] + '.__main__')) else 1)"
        )
        found = subprocess.run([sys.executable, "-c", probe, argv[2]], cwd=ROOT, capture_output=True, timeout=30)
        assert found.returncode == 0, f"`python -m {argv[2]}` finds nothing to run"
    elif name == ".venv/bin/pytest":
        for path in argv[1:]:
            assert (ROOT / path).exists(), f"no test file {path}"
    elif name == "grep":
        assert argv[-1] in teed_files(command.doc), f"{argv[-1]} is written by no earlier `| tee` in {command.doc}"
    else:
        pytest.fail(f"cannot classify {command.text!r} (add a kind to this test, or a marker to the doc)")


COMMANDS = all_commands()


def test_the_docs_have_commands_and_only_known_markers() -> None:
    """The extraction finds the runbook's commands (a broken fence would hide them all), every ```sh line of the
    docs renders as a fence, and every trailing `# needs:` / `# foreground` comment is one of MARKERS."""
    assert len([command for command in COMMANDS if command.doc == "docs/ops/runbook.md"]) >= 40
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        fences = [token for token in MarkdownIt("commonmark").parse(text) if token.type == "fence"]
        written = re.findall(r"^\s*```sh\s*$", text, re.MULTILINE)
        assert len([token for token in fences if token.info.strip() == "sh"]) == len(written), (
            f"{doc}: a ```sh fence does not render as one (indented too far in a list?), so its commands are unchecked"
        )
    for command in COMMANDS:
        assert command.marker is None or command.marker in MARKERS, f"{command.id}: unknown marker {command.marker}"


@pytest.mark.parametrize("command", COMMANDS, ids=[command.id for command in COMMANDS])
def test_command_runs_as_written(command: DocCommand, request: pytest.FixtureRequest) -> None:
    text = command.text
    captured = _CAPTURE.match(re.sub(r"\s+#.*$", "", text))
    if captured:
        text = captured["inner"]
    needs_database = any(word in text for word in ("pg_isready", "apgms db "))
    database_url = request.getfixturevalue("database_url") if needs_database else None
    samples = {**SAMPLES, "DATABASE_URL": database_url or "postgresql://unused"}
    for part in command_parts(text):
        pipeline = segments(with_samples(part, samples))
        assert pipeline and pipeline[0], f"{command.id}: no command in {command.text!r}"
        for index, argv in enumerate(pipeline):
            assert argv, f"{command.id}: an empty pipeline stage in {command.text!r}"
            check_argv(argv, command, database_url, piped=index > 0)


def command_dir(text: str) -> str:
    """The directory a `cd DIR && ...` command works in ("." without one); DIR must exist in the checkout."""
    found = re.match(r"^cd\s+(\S+)\s*&&", text)
    directory = found[1] if found else "."
    assert (ROOT / directory).is_dir(), f"no directory {directory}"
    return directory


def command_parts(text: str) -> list[str]:
    """The commands of a `cd DIR && A && B` line, without the cd (checked by command_dir); the line itself else."""
    command_dir(text)
    body = re.sub(r"^cd\s+\S+\s*&&\s*", "", re.sub(r"\s+#.*$", "", text))
    return [part.strip() for part in body.split("&&")]


def test_a_command_of_no_known_kind_fails() -> None:
    """The classifier refuses what it does not know instead of passing it."""
    odd = DocCommand("docs/ops/runbook.md", 1, "rm -rf artifacts", None)
    with pytest.raises(pytest.fail.Exception, match="cannot classify"):
        check_argv(["rm", "-rf", "artifacts"], odd, None, piped=False)
    unmarked_docker = DocCommand("docs/ops/runbook.md", 1, "docker compose up -d", None)
    with pytest.raises(pytest.fail.Exception, match="cannot classify"):
        check_argv(["docker", "compose", "up", "-d"], unmarked_docker, None, piped=False)
    with pytest.raises(AssertionError, match="has no route"):
        check_curl(["curl", "-s", "-X", "DELETE", "http://localhost:3000/bank-lines"])
    with pytest.raises(typer.BadParameter, match="UUID"):
        check_apgms(
            ["apgms", "backup", "evidence-pack", "--base-url", "x", "--org", "not-a-uuid", "--token", "t"], None
        )
    with pytest.raises(typer.TyperException, match="No such option"):
        check_apgms(["apgms", "smoke", "load", "--no-such-option"], None)
    with pytest.raises(typer.TyperException, match="Missing parameter: org"):
        check_apgms(["apgms", "backup", "evidence-pack", "--base-url", "x", "--token", "t"], None)
    with pytest.raises(AssertionError, match="no command"):
        check_apgms(["apgms", "smoke", "no-such-smoke"], None)
    assert uuid.UUID(SAMPLE_ORG)
