"""What `apgms evidence verify` prints from a file is made harmless: control characters (an ANSI escape that would
clear the screen or recolour the verdict), bidi and other format characters are shown escaped (`\\x1b`), and rich
markup in a field is printed as text; a file past the size bound is refused before it is read."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli_evidence import export, keys_file, verify, write

from apgms import evidence_cli

pytestmark = pytest.mark.usefixtures("no_project_dotenv")
__all__ = ["keys_file"]  # the fixture, used here by name


def test_control_characters_and_markup_from_a_file_are_printed_escaped(tmp_path: Path, keys_file: Path) -> None:
    document = export()
    document["created_by"] = "user:x\x1b[2J\x1b[31mFAKE"
    document["tag"] = "[bold red]T[/]\u202eevil\u2028"
    code, out, err = verify(str(write(tmp_path / "pack.json", document)), "--keys", str(keys_file))
    assert code == 1
    said = out + err
    for raw in ("\x1b", "\u202e", "\u2028"):
        assert raw not in said, repr(raw)
    assert "\\x1b[2J\\x1b[31mFAKE" in said  # the edited envelope field, named by the payload check
    assert "the payload's created_by is" in said

    document = export()
    document["key_id"] = "ev-\x1b[31m[red]k[/]"
    code, out, err = verify(str(write(tmp_path / "key.json", document)), "--keys", str(keys_file))
    assert code == 1
    assert "\x1b" not in out + err
    assert "ev-\\x1b[31m[red]k[/]" in out


def test_a_file_past_the_bound_is_refused_before_it_is_read(
    tmp_path: Path, keys_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "pack.json", export())
    monkeypatch.setattr(evidence_cli, "MAX_EVIDENCE_FILE_BYTES", path.stat().st_size - 1)
    code, _, err = verify(str(path), "--keys", str(keys_file))
    assert code == 1
    assert f"the file {path} is larger than the {path.stat().st_size - 1:,} bytes allowed for it" in err
