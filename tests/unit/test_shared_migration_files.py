"""The pure half of `shared.migrations`: finding files, planning what to apply, and reporting status."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shared.migrations import (
    OWNERS,
    AppliedMigration,
    MigrationError,
    MigrationFile,
    discover,
    migrations_folder,
    plan,
    summarise,
)


def write(root: Path, service: str, name: str, sql: str = "SELECT 1;") -> None:
    folder = migrations_folder(service, root)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(sql)


def applied(file: MigrationFile, checksum: str | None = None) -> AppliedMigration:
    return AppliedMigration(file.service, file.version, file.name, checksum or file.checksum)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    # Written out of order on purpose; discovery must not depend on creation order.
    write(tmp_path, "core", "0010_ledger_index.sql", "CREATE INDEX ledger_idx ON ledger (id);")
    write(tmp_path, "core", "0002_ledger.sql", "CREATE TABLE ledger (id int);")
    write(tmp_path, "auth", "0002_sessions.sql", "CREATE TABLE sessions (id int);")
    write(tmp_path, "auth", "0001_users.sql", "CREATE TABLE users (id int);")
    (migrations_folder("auth", tmp_path) / "README.md").write_text("not a migration")
    return tmp_path


def labels(files: list[MigrationFile]) -> list[str]:
    return [file.label for file in files]


def test_discover_orders_by_service_then_version(tree: Path) -> None:
    files = discover(("auth", "core"), root=tree)
    assert labels(files) == [
        "auth/0001_users.sql",
        "auth/0002_sessions.sql",
        "core/0002_ledger.sql",
        "core/0010_ledger_index.sql",
    ]
    assert [file.version for file in files] == [1, 2, 2, 10]
    assert files[0].sql == "CREATE TABLE users (id int);"
    assert files[0].checksum == hashlib.sha256(b"CREATE TABLE users (id int);").hexdigest()


def test_discover_follows_the_given_service_order(tree: Path) -> None:
    assert [file.service for file in discover(("core", "auth"), root=tree)] == ["core", "core", "auth", "auth"]


def test_service_without_migrations_folder_has_none(tree: Path) -> None:
    assert discover(("compliance",), root=tree) == []


@pytest.mark.parametrize("bad_name", ["1_init.sql", "0003-dashes.sql", "0003_Upper.sql", "0003.sql", "v0003_x.sql"])
def test_discover_rejects_a_badly_named_file(tree: Path, bad_name: str) -> None:
    write(tree, "auth", bad_name)
    with pytest.raises(MigrationError, match=rf"auth/{bad_name}: .*NNNN_name\.sql"):
        discover(("auth", "core"), root=tree)


def test_discover_rejects_a_duplicate_version(tree: Path) -> None:
    write(tree, "auth", "0002_tokens.sql")
    with pytest.raises(MigrationError, match="version 0002 is used twice") as caught:
        discover(("auth",), root=tree)
    assert "auth/0002_" in str(caught.value)


def test_same_version_in_two_services_is_fine(tree: Path) -> None:
    write(tree, "compliance", "0002_rules.sql")
    files = discover(("auth", "core", "compliance"), root=tree)
    assert [(f.service, f.version) for f in files if f.version == 2] == [
        ("auth", 2),
        ("core", 2),
        ("compliance", 2),
    ]


def test_the_repository_migrations_are_well_formed() -> None:
    files = discover()
    assert files
    assert {file.service for file in files} <= set(OWNERS)
    assert all(file.sql.strip() for file in files)


def test_plan_returns_only_pending_files_in_order(tree: Path) -> None:
    files = discover(("auth", "core"), root=tree)
    assert plan(files, []) == files
    pending = plan(files, [applied(files[0]), applied(files[2])])
    assert labels(pending) == ["auth/0002_sessions.sql", "core/0010_ledger_index.sql"]
    assert plan(files, [applied(file) for file in files]) == []


def test_plan_refuses_a_file_changed_after_it_was_applied(tree: Path) -> None:
    files = discover(("auth", "core"), root=tree)
    recorded = applied(files[1], checksum=hashlib.sha256(b"the old text").hexdigest())
    with pytest.raises(MigrationError, match=r"auth/0002_sessions\.sql was changed after it was applied"):
        plan(files, [applied(files[0]), recorded])


def test_plan_refuses_when_an_applied_file_is_gone(tree: Path) -> None:
    files = discover(("auth", "core"), root=tree)
    gone = AppliedMigration("core", 3, "dropped", "0" * 64)
    with pytest.raises(MigrationError, match=r"core/0003_dropped\.sql was applied but the file is gone"):
        plan(files, [gone])


def test_summarise_reports_applied_pending_and_changed_per_service(tree: Path) -> None:
    files = discover(("auth", "core"), root=tree)
    history = [
        applied(files[0]),
        applied(files[2], checksum="f" * 64),
        AppliedMigration("core", 5, "removed", "e" * 64),
    ]
    statuses = {s.service: s for s in summarise(files, history, ("auth", "core", "regulator"))}
    assert list(statuses) == ["auth", "core", "regulator"]

    auth = statuses["auth"]
    assert (auth.applied, auth.pending, auth.changed) == (["0001_users.sql"], ["0002_sessions.sql"], [])
    assert auth.up_to_date is False

    core = statuses["core"]
    assert core.applied == ["0002_ledger.sql", "0005_removed.sql"]
    assert core.pending == ["0010_ledger_index.sql"]
    assert core.changed == ["0002_ledger.sql", "0005_removed.sql"]
    assert core.up_to_date is False

    regulator = statuses["regulator"]
    assert (regulator.applied, regulator.pending, regulator.changed) == ([], [], [])
    assert regulator.up_to_date is True


def test_summarise_up_to_date_when_everything_is_applied_unchanged(tree: Path) -> None:
    files = discover(("auth", "core"), root=tree)
    statuses = summarise(files, [applied(file) for file in files], ("auth", "core"))
    assert all(s.up_to_date for s in statuses)
    assert statuses[1].applied == ["0002_ledger.sql", "0010_ledger_index.sql"]
