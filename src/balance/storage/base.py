"""The storage port: what a shard writer needs from its database, and the errors it may raise.

Rows are plain tuples in the column orders of ``schema``; adapters translate their driver's
exceptions into ``StorageError`` at the edge (``raise StorageError(...) from exc``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

Row: TypeAlias = tuple[Any, ...]  # one stored row: its columns' types are the driver's


class StorageError(Exception):
    """The database failed or is unreachable. Retryable with the same operation ids."""


class Fenced(StorageError):
    """The shard's fence row holds another owner's epoch: this process no longer owns the
    shard, and the commit was refused inside the database (nothing of it was written)."""


class DuplicateOperation(StorageError):
    """A journal row's (account_id, op_key) is already stored: an old operation id came back."""


@dataclass(slots=True)
class BatchWrite:
    """Everything one batch changes, written in ONE transaction (the durability point)."""

    accounts: list[Row] = field(default_factory=list)  # upserted, ACCOUNT_COLUMNS
    # The holds checkpoint (only some batches carry one): pending holds upserted (HOLD_COLUMNS),
    # finished ones deleted by (expires_at, account_id, hold_id), and the journal seq it is complete up to.
    holds: list[Row] = field(default_factory=list)
    holds_deleted: list[tuple[int, str, str]] = field(default_factory=list)  # by key (``schema.HOLD_KEY_COLUMNS``)
    checkpoint_seq: int = 0  # 0: no checkpoint in this batch
    journal: list[Row] = field(default_factory=list)  # inserted, JOURNAL_COLUMNS
    outbox: list[Row] = field(default_factory=list)  # inserted, OUTBOX_COLUMNS
    keys: list[Row] = field(default_factory=list)  # upserted (a revocation rewrites the row), KEY_COLUMNS
    transfers_started: list[Row] = field(default_factory=list)  # inserted, TRANSFER_COLUMNS
    # (final result, account_id, op_id): the journal row of that transfer gets status 201 and
    # this result; its transfers_pending row is deleted.
    transfers_completed: list[tuple[bytes, str, str, int, str]] = field(
        default_factory=list
    )  # body, account, op_id, status, op_key
    moves: list[Row] = field(default_factory=list)  # upserted, MOVE_COLUMNS (a partner move's record)
    # What an adapter's ``prepare`` made of the rows ahead of ``commit`` (e.g. SQL text), or None.
    prepared: object = None

    def __len__(self) -> int:
        return (
            len(self.accounts) + len(self.holds) + len(self.holds_deleted) + len(self.journal) + len(self.outbox) + len(self.keys)
            + len(self.transfers_started) + len(self.transfers_completed) + len(self.moves)
        )  # fmt: skip


@dataclass(slots=True)
class LoadedShard:
    """The tables at a glance (tests): every account, the pending holds of the holds
    checkpoint (recovery adds the journal's hold rows after it), where the journal ends."""

    accounts: list[Row]
    pending_holds: list[Row]
    next_seq: int


@dataclass(slots=True)
class StoredOperation:
    account_id: str
    op_key: str
    fingerprint: int
    status: int
    result: bytes


class ShardStorage(Protocol):
    """One shard's database. Every method may raise StorageError."""

    async def open(self) -> None:
        """Connect, create the database and tables if missing."""

    async def close(self) -> None: ...

    def fence_with(self, epoch: int) -> None:
        """Own the shard with this epoch (the directory's ownership epoch), from the next
        ``open()`` on: open writes it to the fence row (refusing with ``Fenced`` if the row
        holds a newer one) after ending what a former owner left (its connections, its
        prepared XA branches); from then on every commit fails inside the database, in its
        own transaction, when the fence row holds another epoch. Never called: no check."""

    async def load(self) -> LoadedShard: ...

    async def scan_accounts(self, after_id: str, limit: int) -> list[Row]:
        """Recovery, page by page: up to ``limit`` accounts with id > ``after_id``, by id
        (``exhausted`` as stored: 0/1 or a bool; ``Account.from_row`` makes it a bool).
        The accounts table is a checkpoint: a row may be behind the journal after ``checkpoint_seq()``."""

    async def scan_pending_holds(self, after: tuple[int, str, str], limit: int) -> list[Row]:
        """Recovery, page by page: pending holds after (expires_at, account_id, hold_id), in that
        order (the table's key; ``HOLD_KEY_FIRST`` before every hold).
        The holds table is a checkpoint: complete up to ``checkpoint_seq()`` only."""

    async def checkpoint_seq(self) -> int:
        """The journal seq the holds and accounts tables are complete up to (the last checkpoint written)."""

    async def scan_recovery_journal(self, after_seq: int, limit: int) -> list[Row]:
        """Recovery, page by page: accepted journal rows with seq > ``after_seq``, by seq
        (``RECOVERY_JOURNAL_COLUMNS``)."""

    async def load_keys(self) -> list[Row]:
        """Every API key stored in this shard (KEY_COLUMNS)."""

    async def commit(self, batch: BatchWrite, after: asyncio.Future[None] | None = None) -> None:
        """Write the batch atomically and durably, or raise.

        ``after`` is the commit of the batch before this one when it is still running: this
        batch then takes effect only if that one succeeds (raise StorageError otherwise). An
        adapter may overlap the two (MariaDB writes this batch on a second connection and
        prepares it while ``after`` commits); SQLite waits for it.

        A raise usually means nothing was written, but not always: a connection lost during
        COMMIT leaves the outcome unknown. The engine then asks ``max_seq`` and reloads.
        """

    async def pending_transfers(self) -> list[Row]:
        """Cross-shard transfers whose second leg is not confirmed yet (TRANSFER_COLUMNS)."""

    def in_flight_max(self, batch: BatchWrite) -> int:
        """How many batches the engine may have applied and committing at once while ``batch``
        is the latest of them (at least 2: one being written while the next is applied)."""

    def prepare(self, batch: BatchWrite) -> None:
        """Optional head start, called while the previous batch is still committing: encode
        what ``commit`` will send (into ``batch.prepared``). Must not do IO."""

    async def max_seq(self) -> int:
        """The highest journal or outbox sequence number stored (0 if none).

        Final: what a failed commit may have left undecided is decided first (MariaDB rolls
        back the prepared XA branches of its failed commits)."""

    async def lookup(
        self, op_keys: list[tuple[str, str]], hold_keys: list[tuple[str, str]]
    ) -> tuple[list[StoredOperation], list[Row]]:
        """Stored first outcomes of (account_id, op_key), and holds by (account_id, hold_id)
        (rebuilt from the journal: ``balance.domain.holds.hold_from_journal``)."""

    async def history(
        self, account_id: str, limit: int, before_seq: int | None, since: int | None, until: int | None
    ) -> list[Row]:
        """Accepted journal rows of one account, newest first (JOURNAL_COLUMNS)."""

    async def get_hold(self, account_id: str, hold_id: str) -> Row | None: ...

    async def move_records(self, account_ids: list[str]) -> list[Row]:
        """A partner move's export: every stored first answer of these accounts' operation ids
        (account_id, op_key, fingerprint, status, result)."""

    async def children(self, parent_id: str, limit: int, after_id: str | None) -> list[str]:
        """Ids of the direct children of ``parent_id``, ordered by id, after ``after_id``."""

    async def unfinished_moves(self) -> list[tuple[Row, bytes]]:
        """Partner moves out of this shard not done nor rolled back: (part 0 of the record, in
        MOVE_COLUMNS, the export's parts joined), by move id (``domain.move_records``)."""


async def succeeded(commit: asyncio.Future[None] | None) -> bool:
    """Wait for an earlier commit (without cancelling it if the waiter is cancelled): did it succeed?"""
    if commit is None:
        return True
    await asyncio.wait([commit])
    return not commit.cancelled() and commit.exception() is None


HOLD_KEY_FIRST: tuple[int, str, str] = (-(2**63), "", "")  # before every hold's key (``scan_pending_holds``)
FENCE_META_KEY = "owner_epoch"  # the fence row (in meta): the epoch of the shard's owner
EARLIER_FAILED = "the batch before this one failed to commit: nothing of this one was written"
