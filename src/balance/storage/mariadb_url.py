"""``mysql://user:password@host:port/name`` (or ``mariadb://``): the one parser of MariaDB URLs.

Everything that reads such a URL (the storage, the start-up line, the bench, the tests) asks
here, so that percent-encoded credentials, a missing port or user, and what may be shown in a
log mean the same thing everywhere.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import quote, unquote, urlsplit

SCHEMES = ("mysql", "mariadb")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3306
DEFAULT_USER = "root"


class MariaDbServer(NamedTuple):
    host: str
    port: int
    user: str
    password: str
    database: str  # the name in the URL's path ("" when there is none)


class MariaDbAddress(NamedTuple):
    host: str
    port: int
    user: str
    password: str
    database: str


def is_mariadb_url(url: str) -> bool:
    return url.partition("://")[0].lower() in SCHEMES and "://" in url


def parse_server(url: str) -> MariaDbServer:
    """The server a URL names, and its database name if any (user root, port 3306 by default)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError(f"not a mysql:// or mariadb:// URL: {redacted(url)!r}")
    name = unquote(parts.path.lstrip("/"))
    if "/" in name:
        raise ValueError(f"expected mysql://user:password@host:port/name, got {redacted(url)!r}")
    return MariaDbServer(
        host=parts.hostname or DEFAULT_HOST,
        port=parts.port or DEFAULT_PORT,
        user=unquote(parts.username or DEFAULT_USER),
        password=unquote(parts.password or ""),
        database=name,
    )


def parse_url(url: str, shard: int) -> MariaDbAddress:
    """``mysql://user:password@host:port/name`` -> the address of database ``{name}_s{shard}``."""
    server = parse_server(url)
    if not urlsplit(url).hostname or not server.database:
        raise ValueError(f"expected mysql://user:password@host:port/name, got {redacted(url)!r}")
    return MariaDbAddress(server.host, server.port, server.user, server.password, f"{server.database}_s{shard}")


def connect_kwargs(url: str) -> dict[str, Any]:
    """asyncmy.connect() arguments for the server of ``url`` (no database selected)."""
    server = parse_server(url)
    return {"host": server.host, "port": server.port, "user": server.user, "password": server.password}


def with_database(url: str, name: str) -> str:
    """The same server and credentials, another database name."""
    parts = urlsplit(url)
    parse_server(url)  # the same checks
    return parts._replace(path="/" + quote(name, safe=""), query="", fragment="").geturl()


def redacted(url: str) -> str:
    """What may be shown in a log: the URL without user and password."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def with_address(url: str, host: str, port: int) -> str:
    """The same credentials and database, another server address (e.g. a proxy in front)."""
    parts = urlsplit(url)
    parse_server(url)  # the same checks
    credentials = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=(credentials + "@" if credentials else "") + f"{host}:{port}").geturl()
