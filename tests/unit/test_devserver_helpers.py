"""Pure helpers of the dev database servers: URLs, identifiers, directory permissions."""

from __future__ import annotations

import socket
import stat

from apgms.devservers import dsn_with_database, free_port, may_traverse, pick_utf8_locale, quote_ident, redact_url


def test_dsn_with_database_keeps_server_credentials_and_options() -> None:
    dsn = "postgresql://app:pw@db.example:6432/postgres?sslmode=require"
    assert dsn_with_database(dsn, "t_1") == "postgresql://app:pw@db.example:6432/t_1?sslmode=require"


def test_redact_url_drops_only_the_password() -> None:
    assert redact_url("postgresql://app:s3cret@db:5432/apgms") == "postgresql://app@db:5432/apgms"
    assert redact_url("redis://:s3cret@cache:6379/0") == "redis://@cache:6379/0"
    assert redact_url("postgresql://postgres@127.0.0.1:5/postgres") == "postgresql://postgres@127.0.0.1:5/postgres"


def test_quote_ident_doubles_embedded_quotes() -> None:
    assert quote_ident("apgms_template") == '"apgms_template"'
    assert quote_ident('a"; DROP DATABASE x; --') == '"a""; DROP DATABASE x; --"'


def test_may_traverse_checks_the_bits_of_the_class_the_user_falls_in() -> None:
    owner, group, other = 1000, 1000, 101
    private = stat.S_IFDIR | 0o700
    assert may_traverse(private, owner, group, owner, {group})
    assert not may_traverse(private, owner, group, other, {104})
    assert may_traverse(stat.S_IFDIR | 0o750, owner, 104, other, {104})
    assert may_traverse(stat.S_IFDIR | 0o701, owner, group, other, {104})
    assert may_traverse(private, owner, group, 0, {0}), "root enters anything"


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        assert sock.getsockname() == ("127.0.0.1", port)


def test_the_cluster_locale_is_utf8_as_locale_a_spells_it() -> None:
    assert pick_utf8_locale(["C", "C.utf8", "POSIX"]) == "C.utf8"  # Debian
    assert pick_utf8_locale(["C", "POSIX", "en_US.UTF-8", "C.UTF-8"]) == "C.UTF-8"
    assert pick_utf8_locale(["C", "POSIX", "en_US.UTF-8"]) == "en_US.UTF-8"  # macOS
    assert pick_utf8_locale(["C", "POSIX", "tr_TR.UTF-8"]) is None
