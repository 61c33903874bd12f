"""`apgms compliance evidence --tag ID`: run the checks an auditor asks for and keep what they said.

    apgms compliance evidence --tag 2026-q4 [--org ID ...] [--base-url URL] [--skip-tests] [--skip-load]

Runs, one after the other and each in its own process with a deadline: the test suite (`pytest -q`), `apgms db
status`, the load smoke (`apgms smoke load` against --base-url; APGMS_TOKEN adds /bank-lines) and `apgms audit verify
--org ID` for each --org. Writes `artifacts/compliance/<tag>.md`: the git commit and whether the working tree had
uncommitted changes, the UTC times, and for each command its exit code, duration and the last OUTPUT_TAIL_LINES
lines of its output (stdout and stderr together) in a fenced block. The file is written whatever the commands
answered; the exit code is 0 when every command that ran passed, 1 otherwise. A tag that is not a safe file name is
a usage error (exit 2); an existing evidence file is kept unless --force.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from apgms import devstack
from apgms.common import console, fail
from apgms.load import DEFAULT_BASE_URL
from apgms.safe_names import safe_name

__all__ = [
    "Capture",
    "Step",
    "compliance_app",
    "evidence",
    "render_report",
    "run_step",
]

# The whole suite takes about 11 minutes on a 2-core machine; twice that is a hung test, not a slow one.
TESTS_TIMEOUT_S = 30 * 60.0
DB_STATUS_TIMEOUT_S = 120.0
# The smoke's minute of load, its ten-second request deadline and the process's start-up.
LOAD_TIMEOUT_S = 180.0
AUDIT_VERIFY_TIMEOUT_S = 600.0
GIT_TIMEOUT_S = 10.0
# What the file keeps of each command's output: its end (where pytest and the smoke put their verdict).
OUTPUT_TAIL_LINES = 200
MAX_LINE_CHARS = 1000
READ_CHUNK_BYTES = 64 * 1024
# The child's rich tables are drawn this wide, without colour codes, for the Markdown file.
CHILD_COLUMNS = "100"

compliance_app = typer.Typer(no_args_is_help=True, help="Compliance evidence for auditors.")


@dataclass(frozen=True)
class Step:
    """A command to capture; `skipped` says why it was not run (None: run it)."""

    title: str
    argv: tuple[str, ...]
    timeout_s: float
    skipped: str | None = None

    @property
    def shown(self) -> str:
        """The command as a user would type it (`apgms ...` and `pytest ...`, not the interpreter's path)."""
        words = list(self.argv)
        if words[:3] == [sys.executable, "-m", "apgms"]:
            words = ["apgms", *words[3:]]
        elif words[:2] == [sys.executable, "-m"]:
            words = words[2:]
        return " ".join(words)


@dataclass(frozen=True)
class Capture:
    """What one step gave: its exit code (None: not run, or killed at its deadline), the end of its output."""

    step: Step
    exit_code: int | None
    timed_out: bool
    duration_s: float
    output_tail: tuple[str, ...]
    output_lines: int

    @property
    def ran(self) -> bool:
        return self.step.skipped is None

    @property
    def passed(self) -> bool:
        return self.ran and not self.timed_out and self.exit_code == 0

    @property
    def result(self) -> str:
        if not self.ran:
            return f"skipped: {self.step.skipped}"
        if self.timed_out:
            return f"timed out after {self.step.timeout_s:g} s (stopped)"
        return "passed" if self.exit_code == 0 else f"failed (exit code {self.exit_code})"


@dataclass(frozen=True)
class GitState:
    commit: str
    dirty: bool | None


class _Tail:
    """The last OUTPUT_TAIL_LINES lines of a stream fed in chunks, each cut at MAX_LINE_CHARS: bounded memory
    whatever the command prints."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
        self.partial = ""
        self.count = 0

    def feed(self, text: str) -> None:
        pieces = (self.partial + text).split("\n")
        self.partial = pieces.pop()[:MAX_LINE_CHARS]
        for line in pieces:
            self.lines.append(line[:MAX_LINE_CHARS])
            self.count += 1

    def close(self) -> tuple[tuple[str, ...], int]:
        if self.partial:
            self.lines.append(self.partial)
            self.count += 1
            self.partial = ""
        return tuple(self.lines), self.count


def child_environ() -> dict[str, str]:
    return {**os.environ, "COLUMNS": CHILD_COLUMNS, "NO_COLOR": "1", "TERM": "dumb"}


async def _run(step: Step, cwd: Path) -> Capture:
    started = time.monotonic()
    tail = _Tail()
    process = await asyncio.create_subprocess_exec(
        *step.argv,
        cwd=cwd,
        env=child_environ(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Its own process group: at the deadline the command and everything it started (pytest's service
        # processes) are stopped together.
        start_new_session=True,
    )
    assert process.stdout is not None
    stdout = process.stdout

    async def pump() -> None:
        while chunk := await stdout.read(READ_CHUNK_BYTES):
            tail.feed(chunk.decode(errors="replace").replace("\r\n", "\n"))

    timed_out = False
    try:
        async with asyncio.timeout(step.timeout_s):
            await asyncio.gather(pump(), process.wait())
    except TimeoutError:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    lines, count = tail.close()
    return Capture(step, process.returncode, timed_out, time.monotonic() - started, lines, count)


def run_step(step: Step, cwd: Path) -> Capture:
    """Run `step` (unless skipped) to its end or its deadline; a command that cannot start is a failed capture
    with the reason as its output, not a traceback."""
    if step.skipped is not None:
        return Capture(step, None, False, 0.0, (), 0)
    started = time.monotonic()
    try:
        return asyncio.run(_run(step, cwd))
    except OSError as error:
        reason = f"cannot start {step.shown}: {error.strerror or error}"
        return Capture(step, None, False, time.monotonic() - started, (reason,), 1)


def git_state(root: Path) -> GitState:
    """The checkout's commit and whether tracked files differ from it; "unknown" outside a git checkout."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args],
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return GitState("unknown (not a git checkout, or git is missing)", None)
    status = git("status", "--porcelain", "--untracked-files=no")
    return GitState(commit, None if status is None else bool(status))


def _fence(lines: Sequence[str]) -> str:
    """A code fence longer than any run of backticks in the block, so the output cannot close it."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    return "`" * max(3, longest + 1)


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def render_report(
    tag: str, git: GitState, base_url: str, started: datetime, finished: datetime, captures: Sequence[Capture]
) -> str:
    """The Markdown evidence file."""
    ran = [capture for capture in captures if capture.ran]
    passed = sum(capture.passed for capture in ran)
    dirty = {True: "yes (uncommitted changes to tracked files)", False: "no", None: "unknown"}[git.dirty]
    out = [
        f"# Compliance evidence: {tag}",
        "",
        f"- Tag: `{tag}`",
        f"- Git commit: `{git.commit}`",
        f"- Working tree dirty: {dirty}",
        f"- Started: {_utc(started)}",
        f"- Finished: {_utc(finished)}",
        f"- Base URL (load smoke): {base_url}",
        f"- Result: {passed} of {len(ran)} command(s) that ran passed"
        + (f", {len(captures) - len(ran)} skipped" if len(ran) < len(captures) else ""),
        "",
        "| Step | Command | Result | Exit code | Duration |",
        "| --- | --- | --- | --- | --- |",
    ]
    for capture in captures:
        code = "-" if capture.exit_code is None else str(capture.exit_code)
        duration = f"{capture.duration_s:.1f} s" if capture.ran else "-"
        command = capture.step.shown.replace("|", "\\|")
        out.append(f"| {capture.step.title} | `{command}` | {capture.result} | {code} | {duration} |")
    for capture in captures:
        out += ["", f"## {capture.step.title}", "", f"- Command: `{capture.step.shown}`", f"- Result: {capture.result}"]
        if not capture.ran:
            continue
        out += [
            f"- Exit code: {'-' if capture.exit_code is None else capture.exit_code}",
            f"- Duration: {capture.duration_s:.1f} s",
        ]
        if capture.output_lines > len(capture.output_tail):
            out.append(f"- Output: the last {len(capture.output_tail)} of {capture.output_lines} lines")
        if not capture.output_tail:
            out += ["", "_No output._"]
            continue
        fence = _fence(capture.output_tail)
        out += ["", f"{fence}text", *capture.output_tail, fence]
    return "\n".join(out) + "\n"


def steps_for(
    *, skip_tests: bool, skip_load: bool, base_url: str, orgs: Sequence[uuid.UUID], tests_timeout_s: float
) -> list[Step]:
    apgms = (sys.executable, "-m", "apgms")
    steps = [
        Step(
            "Tests",
            (sys.executable, "-m", "pytest", "-q"),
            tests_timeout_s,
            skipped="--skip-tests" if skip_tests else None,
        ),
        Step("Database migrations", (*apgms, "db", "status"), DB_STATUS_TIMEOUT_S),
        Step(
            "Load smoke",
            (*apgms, "smoke", "load", "--base-url", base_url),
            LOAD_TIMEOUT_S,
            skipped="--skip-load" if skip_load else None,
        ),
    ]
    if not orgs:
        steps.append(
            Step("Audit verification", (*apgms, "audit", "verify", "--org", "ID"), AUDIT_VERIFY_TIMEOUT_S, "no --org")
        )
    for org in dict.fromkeys(orgs):
        steps.append(
            Step(f"Audit verification of {org}", (*apgms, "audit", "verify", "--org", str(org)), AUDIT_VERIFY_TIMEOUT_S)
        )
    return steps


def results_table(captures: Sequence[Capture], path: Path) -> Table:
    table = Table(title=f"Evidence written to {path}", title_justify="left")
    table.add_column("Step")
    table.add_column("Result")
    table.add_column("Duration", justify="right", no_wrap=True)
    for capture in captures:
        colour = "green" if capture.passed else ("yellow" if not capture.ran else "red")
        table.add_row(
            capture.step.title,
            f"[{colour}]{capture.result}[/]",
            f"{capture.duration_s:.1f} s" if capture.ran else "-",
        )
    return table


@compliance_app.command("evidence")
def evidence(
    tag: Annotated[str, typer.Option("--tag", help="The evidence's name: artifacts/compliance/<tag>.md.")],
    orgs: Annotated[
        list[uuid.UUID] | None, typer.Option("--org", help="An org whose audit chain to verify; repeat for more.")
    ] = None,
    base_url: Annotated[str, typer.Option(help="The stack's public URL for the load smoke.")] = DEFAULT_BASE_URL,
    skip_tests: Annotated[bool, typer.Option("--skip-tests", help="Do not run the test suite.")] = False,
    skip_load: Annotated[bool, typer.Option("--skip-load", help="Do not run the load smoke.")] = False,
    tests_timeout: Annotated[
        float, typer.Option("--tests-timeout", min=1, help="Seconds the test suite may take.")
    ] = TESTS_TIMEOUT_S,
    force: Annotated[bool, typer.Option("--force", help="Replace an evidence file of the same tag.")] = False,
) -> None:
    """Run the tests, `apgms db status`, the load smoke and `apgms audit verify` for each --org, and write each
    command's exit code and output with the git commit to artifacts/compliance/<tag>.md; exit 1 when any failed."""
    tag = safe_name(tag, "--tag")
    root = devstack.PROJECT_ROOT
    path = root / "artifacts" / "compliance" / f"{tag}.md"
    if path.exists() and not force:
        fail(f"{path} exists already: choose another --tag, or pass --force to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail(f"cannot create {path.parent}: {error}")
    steps = steps_for(
        skip_tests=skip_tests, skip_load=skip_load, base_url=base_url, orgs=orgs or [], tests_timeout_s=tests_timeout
    )
    started = datetime.now(UTC)
    git = git_state(root)
    captures: list[Capture] = []
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
    ) as progress:
        for step in steps:
            task = progress.add_task(f"{step.title}: {step.shown}", total=None)
            captures.append(run_step(step, root))
            progress.remove_task(task)
            console.print(f"{step.title}: {captures[-1].result}", markup=False, soft_wrap=True)
    report = render_report(tag, git, base_url, started, datetime.now(UTC), captures)
    try:
        path.write_text(report)
    except OSError as error:
        fail(f"cannot write {path}: {error}")
    console.print(results_table(captures, path))
    failed = [capture.step.title for capture in captures if capture.ran and not capture.passed]
    if failed:
        console.print(f"[fail] {', '.join(failed)}", markup=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print("[ok] every command that ran passed", markup=False)
