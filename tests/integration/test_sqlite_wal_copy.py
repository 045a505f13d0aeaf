"""SQLite's WAL is copied into the database by a thread of its own, not inside a commit
(issue 18: the automatic checkpoint copied up to 80 MB while every answer waited), and the
WAL still starts over once copied, so it does not grow without bound."""

from __future__ import annotations

import asyncio
import ctypes
import os
import sqlite3
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


class _CacheStat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]


def _dirty_pages(fd: int) -> int | None:
    """Pages of the file written and not yet on disk (Linux's cachestat, 6.5+; None without it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    whole_file = (ctypes.c_uint64 * 2)(0, 0)
    stat = _CacheStat()
    if libc.syscall(451, fd, ctypes.byref(whole_file), ctypes.byref(stat), 0) != 0:
        return None
    return int(stat.dirty + stat.writeback)


async def test_what_the_copier_writes_into_the_database_is_synced_by_the_copier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite syncs the database only in a checkpoint that reaches the WAL's end; under load the
    copier's never do, and the writer's finishing copy paid for the whole WAL's pages (10-30 ms).
    A reader's snapshot stops the copy short of the end here, as a commit landing meanwhile
    does: the pages copied are on disk all the same."""
    monkeypatch.setattr(sqlite_storage, "WAL_COPY_EVERY_S", 0.02)
    path = tmp_path / "s0.db"
    storage = SqliteShardStorage(path)
    await storage.open()
    # Closed only after every connection: closing a descriptor drops the process's locks on the file.
    fd = os.open(path, os.O_RDONLY)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        for k in range(20):
            await storage.commit(big_batch(1 + k * 50, k + 1, rows=50))
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM journal").fetchone()  # a snapshot: the copy stops here
        for k in range(20, 40):
            await storage.commit(big_batch(1 + k * 50, k + 1, rows=50))
        frames_now = storage._wal_frames
        assert await _until(lambda: storage._wal_frames > frames_now and storage._wal_left > 0), "no copier pass"
        async with asyncio.timeout(5):
            while True:  # the pass that stopped at the snapshot, synced
                with storage._copy_lock:
                    dirty = _dirty_pages(fd) if storage._wal_left > 0 else -1
                if dirty is None:
                    pytest.skip("this kernel has no cachestat")
                if dirty >= 0:
                    break
                await asyncio.sleep(0.01)
        assert dirty == 0, f"{dirty} pages copied into the database and not synced"
    finally:
        reader.close()
        await storage.close()
        os.close(fd)
    assert await _reopened_seqs(path) == list(range(1, 2001))


async def _reopened_seqs(path: Path) -> list[int]:
    storage = SqliteShardStorage(path)
    await storage.open()
    try:
        return await stored_seqs(storage)
    finally:
        await storage.close()


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


async def test_storages_of_one_file_in_one_process_share_the_copier_s_descriptor(tmp_path: Path) -> None:
    """Closing a descriptor drops the process's POSIX locks on the file, SQLite's included: the
    copiers' descriptor of a file is one per process, closed with the last storage of it."""
    path = tmp_path / "s0.db"
    first, second = SqliteShardStorage(path), SqliteShardStorage(path)
    await first.open()
    await second.open()
    try:
        assert first._database_fd is not None and first._database_fd == second._database_fd
        fd = first._database_fd
        await first.close()
        os.fstat(fd)  # still open: the second storage's connections keep their locks
        await second.commit(big_batch(1, 1, rows=5))
    finally:
        await second.close()
    with pytest.raises(OSError):
        os.fstat(fd)
