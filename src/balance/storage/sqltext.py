"""SQL literals for the rows MariaDB's small batches send as text (compiled with mypyc).

Every small batch (one text packet: its journal rows as ``VALUES (...)``) renders ~21
values per row on the event loop's thread: ~3.2 us a row through an interpreted function
with a regular expression per string, ~1.3 us here (``BENCHMARKS.md``, the decisions).

Which strings go as they are: the connection's character set is utf8mb4, in which every
byte of a multi-byte character is >= 0x80, so inside '...' only a quote, a backslash (an
escape unless NO_BACKSLASH_ESCAPES) and NUL need care; a string with none of them is its
own literal. Everything else goes to the driver's ``escape``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def literal(value: Any, escape: Callable[[Any], str]) -> str:
    """One value as a SQL literal: ints, plain text, NULL and bytes (as ``X'hex'``, which no
    SQL mode can misread) here; anything else by ``escape``."""
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is str:
        text: str = value
        if "'" in text or "\\" in text or "\x00" in text:
            return escape(text)
        return "'" + text + "'"
    if value is None:
        return "NULL"
    if kind is bytes:
        data: bytes = value
        return "X'" + data.hex() + "'" if data else "''"
    return escape(value)


def row_values(row: tuple[Any, ...], escape: Callable[[Any], str]) -> str:
    """A row as ``(v1,v2,...)``."""
    parts: list[str] = []
    for value in row:
        parts.append(literal(value, escape))
    return "(" + ",".join(parts) + ")"
