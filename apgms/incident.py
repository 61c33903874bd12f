"""`apgms incident new ID [--title T] [--severity sev3]`: open an incident page from status/incidents/_template.md.

Writes `status/incidents/<ID>.md` with the template's `{{id}}`, `{{title}}`, `{{severity}}` and `{{opened_utc}}`
filled in, and adds the incident's row (newest first) to the table between the `<!-- incidents:start` and
`<!-- incidents:end -->` markers of status/README.md. An ID that is not a safe file name is a usage error (exit 2);
an ID that already has a page is refused (exit 1) and nothing is written.
"""

from __future__ import annotations

import enum
import os
import re
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from apgms import devstack
from apgms.common import console, fail
from apgms.safe_names import safe_name

__all__ = ["Severity", "add_incident_row", "fill_template", "incident_app", "table_cell"]

MAX_TITLE_CHARS = 200
START_MARKER = "<!-- incidents:start"
END_MARKER = "<!-- incidents:end -->"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")

incident_app = typer.Typer(no_args_is_help=True, help="Incident pages of the status page (status/).")


class Severity(enum.StrEnum):
    """sev1: down or data at risk; sev2: a major feature down or the SLO burning fast; sev3: degraded with a
    workaround; sev4: minor."""

    SEV1 = "sev1"
    SEV2 = "sev2"
    SEV3 = "sev3"
    SEV4 = "sev4"


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """The template with each `{{name}}` of `values` replaced in one pass (a value holding `{{...}}` stays as it
    is); other placeholders are left for the author."""
    return _PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), template)


def table_cell(text: str) -> str:
    """Text that stays inside one cell of a Markdown table."""
    return text.replace("\\", "\\\\").replace("|", "\\|")


def add_incident_row(readme: str, row: str) -> str:
    """The README with `row` as the first row of the incidents table (just under its header and separator);
    ValueError when the markers or the table's header are missing."""
    lines = readme.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith(START_MARKER)), None)
    end = next((i for i, line in enumerate(lines) if line.startswith(END_MARKER)), None)
    if start is None or end is None or end < start + 3 or not lines[start + 2].startswith("| ---"):
        raise ValueError(
            f"the incidents table is not between the {START_MARKER} and {END_MARKER} markers "
            "(a header row and a separator row, then one row per incident)"
        )
    return "".join([*lines[: start + 3], row + "\n", *lines[start + 3 :]])


def _title(value: str | None, incident_id: str) -> str:
    title = (value or "").strip() or incident_id
    if len(title) > MAX_TITLE_CHARS or any(not char.isprintable() for char in title):
        raise typer.BadParameter(
            f"the title must be one line of at most {MAX_TITLE_CHARS} printable characters", param_hint="--title"
        )
    return title


def _replace_text(path: Path, text: str) -> None:
    """Write `text` to `path` whole or not at all (a temporary file renamed over it)."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@incident_app.command("new")
def incident_new(
    incident_id: Annotated[str, typer.Argument(metavar="ID", help="The incident's id, e.g. 2026-11-28-db-outage.")],
    title: Annotated[str | None, typer.Option("--title", help="One line saying what broke (default: the id).")] = None,
    severity: Annotated[Severity, typer.Option("--severity", help="sev1 (worst) to sev4.")] = Severity.SEV3,
) -> None:
    """Open status/incidents/ID.md from the template (id, title, severity and the UTC time filled in) and add its
    row to status/README.md's incident table."""
    incident_id = safe_name(incident_id, "ID")
    title = _title(title, incident_id)
    status_dir = devstack.PROJECT_ROOT / "status"
    template_path = status_dir / "incidents" / "_template.md"
    readme_path = status_dir / "README.md"
    page = status_dir / "incidents" / f"{incident_id}.md"
    if page.exists():
        fail(f"incident {incident_id} exists already ({page}); choose another id or edit that page")
    try:
        template = template_path.read_text()
        readme = readme_path.read_text()
    except OSError as error:
        fail(f"cannot read the status page's files: {error}")
    opened = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    values = {"id": incident_id, "title": title, "severity": severity.value, "opened_utc": opened}
    row = (
        f"| [{incident_id}](incidents/{incident_id}.md) | {table_cell(title)} | {severity.value} | investigating "
        f"| {opened} |"
    )
    try:
        updated = add_incident_row(readme, row)
    except ValueError as error:
        fail(f"{readme_path}: {error}")
    try:
        with page.open("x") as file:
            file.write(fill_template(template, values))
    except FileExistsError:
        fail(f"incident {incident_id} exists already ({page}); choose another id or edit that page")
    except OSError as error:
        fail(f"cannot write {page}: {error}")
    try:
        _replace_text(readme_path, updated)
    except OSError as error:
        page.unlink(missing_ok=True)
        fail(f"cannot update {readme_path} (the incident page was not kept): {error}")
    console.print(f"Opened {page} ({severity.value}, {opened}) and added it to {readme_path}.", soft_wrap=True)
    console.print("Keep its timeline and status up to date; status/README.md says how.", soft_wrap=True)
