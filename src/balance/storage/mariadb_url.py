"""``mysql://user:password@host:port/name`` read into what connects to one shard's database."""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import unquote, urlsplit


class MariaDbAddress(NamedTuple):
    host: str
    port: int
    user: str
    password: str
    database: str


def parse_url(url: str, shard: int) -> MariaDbAddress:
    """``mysql://user:password@host:port/name`` -> the address of database ``{name}_s{shard}``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mysql", "mariadb"):
        raise ValueError(f"not a mysql:// URL: {url!r}")
    name = parts.path.lstrip("/")
    if not parts.hostname or not name or "/" in name:
        raise ValueError(f"expected mysql://user:password@host:port/name, got {url!r}")
    return MariaDbAddress(
        host=parts.hostname,
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=f"{unquote(name)}_s{shard}",
    )
