"""The literals MariaDB's small batches are written with (``storage/sqltext.py``) read back
as exactly what was rendered, whatever the text or bytes, on a real server with the
service's connection settings (utf8mb4, its SQL mode)."""

from __future__ import annotations

import asyncio

import asyncmy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balance.storage.mariadb import MariaDbShardStorage
from balance.storage.sqltext import literal

pytestmark = pytest.mark.mariadb

# Any text MariaDB's utf8mb4 can hold: every code point but the surrogates.
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
interesting = st.sampled_from(["'", "\\", "\x00", "\\'", "''", "\x1a", "\n", "%s", "ä", "☃", "😀", '"', "\\0"])


async def test_any_text_or_bytes_reads_back_as_rendered(mariadb_storage: MariaDbShardStorage) -> None:
    conn = await asyncmy.connect(**mariadb_storage._connect_kwargs(autocommit=True))
    loop = asyncio.get_running_loop()
    try:
        async with conn.cursor() as cur:  # the journal's column types
            await cur.execute("CREATE TEMPORARY TABLE t (text VARCHAR(500) NOT NULL, data BLOB NOT NULL)")

        async def round_trip(text: str, data: bytes) -> tuple[object, object]:
            async with conn.cursor() as cur:
                await cur.execute("DELETE FROM t")
                await cur.execute(f"INSERT INTO t VALUES ({literal(text, conn.literal)},{literal(data, conn.literal)})")
                await cur.execute("SELECT text, data FROM t")
                (row,) = await cur.fetchall()
            return row[0], row[1]

        @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(st.lists(texts | interesting, max_size=4).map("".join), st.binary(max_size=40))
        def check(text: str, data: bytes) -> None:
            got_text, got_bytes = asyncio.run_coroutine_threadsafe(round_trip(text, data), loop).result(10)
            assert got_text == text
            assert got_bytes == data

        await asyncio.to_thread(check)
    finally:
        await conn.ensure_closed()
