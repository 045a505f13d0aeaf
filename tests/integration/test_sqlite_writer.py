"""SQLite's writer thread: small commits queued behind the one being written go out with it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from test_storage_contract import big_batch, stored_seqs

from balance.storage.base import BatchWrite, DuplicateOperation, StorageError
from balance.storage.sqlite import SqliteShardStorage


class HoldsTheFirstCommit(SqliteShardStorage):
    """The real SQLite storage; its first transaction waits until the test lets it go (so that
    commits queue up behind it), and every transaction's batch count is noted."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writing = threading.Event()  # the first transaction has begun
        self.release = threading.Event()
        self.transactions: list[int] = []

    def _commit_all(self, batches: list[BatchWrite]) -> None:
        if not self.writing.is_set():
            self.writing.set()
            self.release.wait(10)
        self.transactions.append(len(batches))
        super()._commit_all(batches)


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("not reached in time")


async def _queued_behind_the_first(
    storage: HoldsTheFirstCommit, batches: list[BatchWrite]
) -> list[asyncio.Future[None]]:
    """The first batch's commit, and once it is being written the others, each after the one before."""
    tasks = [asyncio.ensure_future(storage.commit(batches[0]))]
    await _until(storage.writing.is_set)
    for batch in batches[1:]:
        tasks.append(asyncio.ensure_future(storage.commit(batch, after=tasks[-1])))
    await _until(lambda: len(storage._waiting) == len(batches) - 1)  # in the thread's queue
    storage.release.set()
    return tasks


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[HoldsTheFirstCommit]:
    opened = HoldsTheFirstCommit(tmp_path / "s0.db")
    await opened.open()
    yield opened
    await opened.close()


async def test_small_commits_waiting_behind_the_one_being_written_go_out_in_one_transaction(
    storage: HoldsTheFirstCommit,
) -> None:
    tasks = await _queued_behind_the_first(storage, [big_batch(1 + 3 * k, k + 1, rows=3) for k in range(4)])
    assert await asyncio.gather(*tasks) == [None] * 4
    assert storage.transactions == [1, 3]
    assert await stored_seqs(storage) == list(range(1, 13))
    assert [row[11] for row in (await storage.load()).accounts] == [4]  # the last batch's row won


async def test_no_more_than_the_row_limit_goes_in_one_transaction(storage: HoldsTheFirstCommit) -> None:
    """Batches of 41 rows (40 journal rows and an account): three fit in 128 rows, not four."""
    tasks = await _queued_behind_the_first(storage, [big_batch(1 + 40 * k, k + 1, rows=40) for k in range(6)])
    await asyncio.gather(*tasks)
    assert storage.transactions == [1, 3, 2]
    assert await stored_seqs(storage) == list(range(1, 241))


async def test_committed_batches_are_not_kept_alive_by_the_commits_queued_after_them(
    storage: HoldsTheFirstCommit,
) -> None:
    """Each commit queued behind another points to it until it is itself committed; a chain of
    them kept every batch written since the queue last ran dry alive (seen: hundreds under a
    steady load of single operations, walked by every young garbage collection)."""
    tasks = await _queued_behind_the_first(storage, [big_batch(1 + 40 * k, k + 1, rows=40) for k in range(6)])
    await asyncio.gather(*tasks)
    assert storage.transactions == [1, 3, 2]
    chain, link = 0, storage._last_link
    while link is not None:
        chain, link = chain + 1, link.earlier
    assert chain == 1


async def test_when_merged_batches_fail_each_is_written_on_its_own_and_only_its_own_failure_counts(
    storage: HoldsTheFirstCommit,
) -> None:
    # The third batch has a key twice.
    batches = [big_batch(1 + 3 * k, k + 1, rows=3, op_key_of=1 if k == 2 else None) for k in range(5)]
    tasks = await _queued_behind_the_first(storage, batches)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)

    assert outcomes[:2] == [None, None]
    assert isinstance(outcomes[2], DuplicateOperation)
    assert all(type(outcome) is StorageError for outcome in outcomes[3:]), outcomes[3:]
    assert await stored_seqs(storage) == list(range(1, 7))
    assert [row[11] for row in (await storage.load()).accounts] == [2]
    # Batches 2-5 together (refused), 2 alone; then 3-5 together (refused), 3 alone (refused).
    assert storage.transactions == [1, 4, 1, 3, 1]


async def test_a_commit_cancelled_while_queued_leaves_the_queue_and_later_commits_still_merge(
    storage: HoldsTheFirstCommit,
) -> None:
    first = asyncio.ensure_future(storage.commit(big_batch(1, 1, rows=3)))
    await _until(storage.writing.is_set)
    cancelled = asyncio.ensure_future(storage.commit(big_batch(4, 2, rows=3), after=first))
    await _until(lambda: len(storage._waiting) == 1)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    storage.release.set()
    await first
    assert not storage._waiting  # the thread never takes a cancelled commit up: it is not left queued

    storage.writing.clear()  # hold the next transaction too, and queue three behind it
    storage.release.clear()
    tasks = await _queued_behind_the_first(storage, [big_batch(4 + 3 * k, k + 2, rows=3) for k in range(4)])
    await asyncio.gather(*tasks)
    assert storage.transactions == [1, 1, 3]
    assert await stored_seqs(storage) == list(range(1, 16))  # the cancelled batch wrote nothing
