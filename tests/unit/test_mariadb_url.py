"""The one parser of MariaDB URLs: what every caller (storage, start-up line, bench, tests) gets."""

from __future__ import annotations

import pytest

from balance.storage.mariadb_url import (
    connect_kwargs,
    is_mariadb_url,
    parse_server,
    parse_url,
    redacted,
    with_database,
)  # fmt: skip


def test_credentials_host_port_and_database_with_defaults() -> None:
    server = parse_server("mysql://svc:p%40ss@db.internal:3307/balance")
    assert server == ("db.internal", 3307, "svc", "p@ss", "balance")
    assert parse_server("mariadb://localhost") == ("localhost", 3306, "root", "", "")
    assert connect_kwargs("mysql://u:pw@h:1/x") == {"host": "h", "port": 1, "user": "u", "password": "pw"}


def test_shard_database_needs_a_host_and_a_name() -> None:
    assert parse_url("mysql://root:@localhost/bal", 3).database == "bal_s3"
    for bad in ("mysql://root@localhost/", "mysql:///bal", "postgres://h/bal", "mysql://h/a/b"):
        with pytest.raises(ValueError):
            parse_url(bad, 0)


def test_another_database_same_server_and_redaction() -> None:
    url = "mysql://svc:p%40ss@db:3307/balance?x=1"
    assert with_database(url, "other_1") == "mysql://svc:p%40ss@db:3307/other_1"
    assert parse_server(with_database(url, "other_1")).password == "p@ss"
    assert redacted(url) == "mysql://db:3307/balance?x=1"
    with pytest.raises(ValueError) as raised:
        parse_server("postgres://svc:secret@h/x")
    assert "secret" not in str(raised.value)


def test_scheme_check() -> None:
    assert is_mariadb_url("mysql://h/x") and is_mariadb_url("MariaDB://h/x")
    assert not is_mariadb_url("sqlite:///x") and not is_mariadb_url("mysql")


def test_with_address_keeps_credentials_and_database() -> None:
    from balance.storage.mariadb_url import with_address

    assert with_address("mysql://u:p%40ss@db:3306/x", "127.0.0.1", 4000) == "mysql://u:p%40ss@127.0.0.1:4000/x"
    assert with_address("mysql://db/x", "h", 1) == "mysql://h:1/x"
