"""Storage backends for the contract tests: every test runs once on SQLite and once on MariaDB.

SQLite uses a file under ``tmp_path``; MariaDB a fresh, uniquely named database per test
(``<name from BALANCE_TEST_MYSQL_URL>_<random>_s0``), dropped afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncmy
import pytest
from two_shards import Build

from balance.storage.base import ShardStorage
from balance.storage.mariadb import MariaDbShardStorage, from_url
from balance.storage.mariadb_url import connect_kwargs, parse_server, with_database
from balance.storage.sqlite import SqliteShardStorage


@dataclass
class Backend:
    """One backend's location: ``make(shard)`` makes another (unopened) storage of that shard
    on the same data."""

    name: str
    storage_of: Callable[[int], ShardStorage]
    created: list[ShardStorage] = field(default_factory=list)

    def new(self, shard: int = 0) -> ShardStorage:
        return self.storage_of(shard)

    def make(self, shard: int = 0) -> ShardStorage:
        storage = self.new(shard)
        self.created.append(storage)
        return storage


async def _drop_database(url: str, database: str) -> None:
    conn = await asyncmy.connect(**connect_kwargs(url))
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
    finally:
        await conn.ensure_closed()


@asynccontextmanager
async def _backend(kind: str, tmp_path: Path, mariadb_required: Callable[[], Awaitable[str]]) -> AsyncIterator[Backend]:
    if kind == "sqlite":
        backend = Backend(
            "sqlite", lambda shard: SqliteShardStorage(tmp_path / ("shard.db" if shard == 0 else f"shard-{shard}.db"))
        )
        url = None
    else:
        url = await mariadb_required()
        name = parse_server(url).database or "balance_test"
        unique_url = with_database(url, f"{name}_{uuid.uuid4().hex[:10]}")
        backend = Backend("mariadb", lambda shard: from_url(unique_url, shard))
    try:
        yield backend
    finally:
        for storage in backend.created:
            await storage.close()
        if url is not None:  # every shard's database made, and shard 0's in any case
            databases = {s.database for s in backend.created if isinstance(s, MariaDbShardStorage)}
            for database in sorted(databases | {from_url(unique_url, 0).database}):
                await _drop_database(url, database)


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, mariadb_required: Callable[[], Awaitable[str]]
) -> AsyncIterator[Backend]:
    async with _backend(request.param, tmp_path, mariadb_required) as backend:
        yield backend


@pytest.fixture(params=[pytest.param("mariadb", marks=pytest.mark.mariadb)])
async def mariadb_backend(
    request: pytest.FixtureRequest, tmp_path: Path, mariadb_required: Callable[[], Awaitable[str]]
) -> AsyncIterator[Backend]:
    """For what only MariaDB has (XA branches): a fresh database, dropped afterwards."""
    async with _backend(request.param, tmp_path, mariadb_required) as backend:
        yield backend


@pytest.fixture
async def mariadb_storage(mariadb_backend: Backend) -> MariaDbShardStorage:
    storage = mariadb_backend.make()
    assert isinstance(storage, MariaDbShardStorage)
    await storage.open()
    return storage


@pytest.fixture
async def storage(backend: Backend) -> ShardStorage:
    """An opened storage on an empty database (closed and dropped by ``backend``)."""
    storage = backend.make()
    await storage.open()
    return storage


@pytest.fixture
def is_mariadb(storage: ShardStorage) -> bool:
    return isinstance(storage, MariaDbShardStorage)


# ---- a service of two shards (cross-shard tests) ---------------------------------------------


@pytest.fixture
async def build(backend: Backend) -> AsyncIterator[Build]:
    """A builder of two-shard services on SQLite files and on MariaDB; what a test leaves
    running is stopped afterwards."""
    make = Build(backend.make)
    yield make
    for service in make.services:
        for engine in service.engines:
            if engine.state != "stopped":
                await engine.stop()
