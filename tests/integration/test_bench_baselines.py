"""The baselines run briefly and leave consistent databases behind: a correctness check, not a speed check.

Each run keeps its database (``keep=True``) so the test can count what is really stored,
then removes it. MariaDB tests skip when no server answers at $BALANCE_TEST_MYSQL_URL
(default root@127.0.0.1:3306), and fail instead in CI (``CI`` any true value).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from balance.bench.ceiling import MYSQL_METHODS, JournalRows, _MysqlSender, run_ceiling
from balance.bench.naive import account_id, mysql_connect, mysql_reachable, mysql_url, parse_mysql_url, run_naive
from balance.storage import schema
from ci import skip_or_fail

DURATION_S = 0.5
HOT = account_id(1)


async def _mysql_or_skip() -> str:
    url = mysql_url()
    if await mysql_reachable(url):
        return url
    skip_or_fail(f"MariaDB unreachable at {url}")
    raise AssertionError("unreachable")  # skip_or_fail raises


async def _mysql_query(url: str, database: str, sql: str) -> tuple:  # type: ignore[type-arg]
    conn = await mysql_connect(parse_mysql_url(url), database)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
            return await cur.fetchone()  # type: ignore[no-any-return]
    finally:
        conn.close()


async def _mysql_drop(url: str, database: str) -> None:
    conn = await mysql_connect(parse_mysql_url(url), autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS {database}")
    finally:
        conn.close()


def _sqlite_query(path: str, sql: str) -> tuple:  # type: ignore[type-arg]
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchone()  # type: ignore[no-any-return]
    finally:
        conn.close()


# ---- SQLite ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("scenario", "clients"), [("hot", 8), ("hot", 1), ("uniform", 8)])
async def test_naive_sqlite_is_consistent(tmp_path: Path, scenario: str, clients: int) -> None:
    seen: list[int] = []
    result = await run_naive(
        "sqlite", url_or_path=tmp_path, scenario=scenario, clients=clients, duration_s=DURATION_S,
        progress=seen.append, keep=True,
    )  # fmt: skip
    path = result.extra["path"]
    try:
        assert result.ops > 0 and result.backend == "sqlite" and result.scenario == scenario
        assert result.extra["refused"] == 0 and seen and seen[-1] == result.ops
        assert _sqlite_query(path, "SELECT COUNT(*) FROM journal") == (result.ops,)
        assert _sqlite_query(path, "SELECT COUNT(DISTINCT account_id || op_key) FROM journal") == (result.ops,)
        reserved, bumps = _sqlite_query(path, "SELECT SUM(reserved), SUM(version - 1) FROM accounts")
        assert reserved == result.extra["amount_sum"] and bumps == result.ops
        if scenario == "hot":
            assert _sqlite_query(path, f"SELECT reserved, version FROM accounts WHERE id = '{HOT}'") == (
                result.extra["amount_sum"], result.ops + 1,
            )  # fmt: skip
        assert result.p50_ms <= result.p95_ms <= result.p99_ms
    finally:
        shutil.rmtree(Path(path).parent)


async def test_ceiling_sqlite_is_consistent(tmp_path: Path) -> None:
    result = await run_ceiling("sqlite", url_or_path=tmp_path, rows_per_txn=200, duration_s=DURATION_S, keep=True)
    path = result.extra["path"]
    try:
        assert result.ops > 0 and result.ops == result.extra["txns"] * 200
        assert _sqlite_query(path, "SELECT COUNT(*), COUNT(DISTINCT seq) FROM journal") == (result.ops, result.ops)
    finally:
        shutil.rmtree(Path(path).parent)


async def test_sqlite_runs_clean_up(tmp_path: Path) -> None:
    await run_naive("sqlite", url_or_path=tmp_path, scenario="hot", clients=2, duration_s=0.1)
    await run_ceiling("sqlite", url_or_path=tmp_path, rows_per_txn=50, duration_s=0.1)
    assert list(tmp_path.iterdir()) == []


# ---- MariaDB --------------------------------------------------------------------------------


@pytest.mark.mariadb
@pytest.mark.parametrize(("scenario", "clients"), [("hot", 8), ("hot", 1), ("uniform", 8)])
async def test_naive_mariadb_is_consistent(scenario: str, clients: int) -> None:
    url = await _mysql_or_skip()
    result = await run_naive(
        "mariadb", url_or_path=url, scenario=scenario, clients=clients, duration_s=DURATION_S, keep=True
    )
    database = result.extra["database"]
    try:
        assert result.ops > 0 and result.backend == "mariadb"
        assert result.extra["refused"] == 0
        assert await _mysql_query(url, database, "SELECT COUNT(*) FROM journal") == (result.ops,)
        reserved, bumps = await _mysql_query(url, database, "SELECT SUM(reserved), SUM(version - 1) FROM accounts")
        assert reserved == result.extra["amount_sum"] and bumps == result.ops
        if scenario == "hot":
            assert await _mysql_query(url, database, f"SELECT reserved, version FROM accounts WHERE id = '{HOT}'") == (
                result.extra["amount_sum"], result.ops + 1,
            )  # fmt: skip
    finally:
        await _mysql_drop(url, database)


@pytest.mark.mariadb
@pytest.mark.parametrize("method", MYSQL_METHODS)
async def test_ceiling_mariadb_is_consistent(method: str) -> None:
    url = await _mysql_or_skip()
    result = await run_ceiling(
        "mariadb", url_or_path=url, writers=2, rows_per_txn=200, duration_s=DURATION_S / 2, method=method, keep=True
    )
    database = result.extra["database"]
    try:
        assert result.ops > 0 and result.ops == result.extra["txns"] * 200
        assert result.extra["com_insert"] == result.extra["txns"]  # one INSERT statement per transaction
        # The ceiling's rows must fit the bulk command as they are: a column NULL in every row of
        # a transaction makes it fall back to a slower way, understating the ceiling.
        assert result.extra["bulk_fallbacks"] == 0
        assert await _mysql_query(url, database, "SELECT COUNT(*), COUNT(DISTINCT seq) FROM journal") == (
            result.ops, result.ops,
        )  # fmt: skip
    finally:
        await _mysql_drop(url, database)


@pytest.mark.mariadb
@pytest.mark.parametrize("method", MYSQL_METHODS)
async def test_mariadb_methods_store_values_exactly(method: str) -> None:
    """Every way of sending rows stores exactly what was sent, awkward bytes and quotes included."""
    url = await _mysql_or_skip()
    result = await run_ceiling("mariadb", url_or_path=url, rows_per_txn=1, duration_s=0.01, max_txns=1, keep=True)
    database = result.extra["database"]
    try:
        conn = await mysql_connect(parse_mysql_url(url), database)
        try:
            rows = JournalRows(7).take(50)[40:43]  # captures: no column NULL in every row ...
            rows = [(*row[:19], 1_790_000_000_000_000 + i, f"dest-{i}", f"placer-{i}") for i, row in enumerate(rows)]
            nasty = bytes(range(256)) + "é'\"\\\0\x1a".encode()
            rows[0] = (*rows[0][:16], 'it\'s a \\ "test" é\n\r\x1a\0 ✓', nasty, nasty[::-1], None, None, None)
            rows.append((rows[1][0] + 100, rows[1][1], None, *rows[1][3:10], None, None, *rows[1][12:]))  # NULLs too
            sender = _MysqlSender(conn, method)
            await sender.send(rows)
            await conn.commit()
            await sender.close()
            async with conn.cursor() as cur:
                await cur.execute(
                    f"SELECT {','.join(schema.JOURNAL_COLUMNS)} FROM journal WHERE seq >= %s ORDER BY seq",
                    (rows[0][0],),
                )
                stored = [tuple(r) for r in await cur.fetchall()]
        finally:
            conn.close()
        assert stored == rows
    finally:
        await _mysql_drop(url, database)
