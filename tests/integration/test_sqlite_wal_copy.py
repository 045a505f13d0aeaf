"""SQLite's WAL is copied into the database by a thread of its own, not inside a commit
(issue 18: the automatic checkpoint copied up to 80 MB while every answer waited), and the
WAL still starts over once copied, so it does not grow without bound."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_storage_contract import big_batch, stored_seqs

from balance.storage import sqlite as sqlite_storage
from balance.storage.sqlite import SqliteShardStorage


async def _until(condition: object, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.01)):
        if condition():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.01)
    return False


async def test_the_wal_is_copied_while_no_commit_runs(tmp_path: Path) -> None:
    """Rows committed and then nothing: they reach the database file anyway (the copier's work);
    SQLite's automatic checkpoint would copy them only in a later commit past its limit."""
    storage = SqliteShardStorage(tmp_path / "s0.db")
    await storage.open()
    try:
        size_at_open = (tmp_path / "s0.db").stat().st_size
        for k in range(5):
            await storage.commit(big_batch(1 + k * 50, k + 1, rows=50))
        assert await _until(lambda: (tmp_path / "s0.db").stat().st_size > size_at_open), "nothing copied"
        assert await stored_seqs(storage) == list(range(1, 251))
    finally:
        await storage.close()


async def test_the_wal_starts_over_once_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_storage, "WAL_AUTOCHECKPOINT_PAGES", 40)
    monkeypatch.setattr(sqlite_storage, "WAL_FINISH_FRAMES", 40)
    monkeypatch.setattr(sqlite_storage, "WAL_COPY_EVERY_S", 0.02)
    storage = SqliteShardStorage(tmp_path / "s0.db")
    await storage.open()
    try:
        for k in range(200):
            await storage.commit(big_batch(1 + k * 50, k + 1, rows=50))
            if k % 10 == 9:
                await asyncio.sleep(0.01)
        wal = tmp_path / "s0.db-wal"
        assert wal.stat().st_size < 300 * 4096, f"the WAL grew to {wal.stat().st_size:,} bytes"
        assert await stored_seqs(storage) == list(range(1, 10_001))
    finally:
        await storage.close()
    assert storage._copier is None  # the thread ended with the storage
