"""The ledger of one shard: accounts and holds held in memory, and the batch they change in.

Pure: no IO, no clock (``now`` is passed in, microseconds). The shard writer calls
``begin``, then ``apply`` once per command, then ``accept`` (the batch is durable)
or ``rollback`` (it is not: every account, hold and outcome is put back as it was).

The rules of each operation live in the rule modules (``account_rules``, ``movements``,
``hold_rules``, ``cross_shard``); ``apply`` dispatches to them, and they change the ledger
through the building blocks here (``touch``, ``move``, ``entries``, ``accepted``...), which
keep the undo frame and the journal rows. Each operation runs its checks in one documented
order, then a block that cannot fail: lookups → idempotency → shape → state → currency →
funds → overflow → mutation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from balance.domain import account_rules, authority, cross_shard, hold_rules, limits, move_records, movements, moves
from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain.cross_shard import INBOUND_HOLD as INBOUND_HOLD  # (importable from here, as before)
from balance.domain.cross_shard import inbound_hold_mark as inbound_hold_mark
from balance.domain.expiry import ExpiryWheel
from balance.domain.holds import (
    HOLD_JOURNAL_ACCOUNT_ID,
    HOLD_JOURNAL_CREATED_AT,
    HOLD_JOURNAL_FIELDS,
    HOLD_JOURNAL_HOLD_ID,
    HOLD_JOURNAL_KIND,
    HOLD_JOURNAL_SEQ,
    HOLD_KINDS,
    HoldIndex,
    placed_hold,
    settlement,
)
from balance.domain.ids import ACCOUNT_OP_KIND, op_key_of, system_account_id
from balance.domain.model import (
    ACCOUNT_BALANCE,
    CAPTURE,
    CREDIT,
    DEBIT,
    EVENT_ACCOUNT_REPLENISHED,
    HOLD,
    HOLD_DESTINATION,
    HOLD_MOVED,
    HOLD_PENDING,
    HOLD_STATUS,
    MOVE_KINDS,
    MOVE_OUT,
    RELEASE,
    STATUS_ACTIVE,
    STATUS_CLOSED,
    STATUS_MOVED,
    TRANSFER,
    Account,
    Entry,
    Event,
    Hold,
)
from balance.domain.outcomes import REFUSED, Changes, Outcome, Record, reject
from balance.domain.round_order import RoundOrder
from balance.untrack import tracked, untrack


class _Frame:
    """Undo information of one batch: snapshots before its first change, outcomes it added."""

    __slots__ = (
        "seq_at_begin", "accounts", "holds", "records", "restores", "changes", "rewritten", "checkpoint",
        "checkpoint_accounts", "round_begun", "round_done", "flights", "moving",
    )  # fmt: skip

    def __init__(self, seq_at_begin: int) -> None:
        self.seq_at_begin = seq_at_begin
        self.accounts: dict[str, tuple | None] = {}  # type: ignore[type-arg]  # None: created here
        self.holds: dict[tuple[str, str], tuple | None] = {}  # type: ignore[type-arg]
        self.records: list[tuple[str, str]] = []
        self.restores: list[tuple[Record, int, bytes]] = []  # outcomes changed in place
        self.changes = Changes()
        self.rewritten: set[str] = set()  # accounts whose row this batch must write (not only the journal's fields)
        self.checkpoint: dict[Hold, bool] | None = None  # the holds of the checkpoint round this batch writes
        self.checkpoint_accounts: set[str] | None = None  # ... and its accounts
        self.round_begun = False  # a checkpoint round began with this batch
        self.round_done = 0  # > 0: this batch wrote the last rows of the round (its seq)
        self.flights: list[tuple[dict[str, set[str]], str, str, bool]] = []  # in-flight marks changed
        self.moving: list[tuple[str, str | None]] = []  # (account, its ``Ledger.moving`` entry before)


# What recovery replays of each accepted journal row after the checkpoint: a hold's fields
# first (``HOLD_JOURNAL_FIELDS``), then what the row says of its account's state after it.
RECOVERY_JOURNAL_FIELDS = (*HOLD_JOURNAL_FIELDS, "op_key", "balance_after", "reserved_after", "version")
HOLD_ROW_LENGTH = len(HOLD_JOURNAL_FIELDS)
RECOVERY_OP_KEY, RECOVERY_BALANCE, RECOVERY_RESERVED, RECOVERY_VERSION = range(HOLD_ROW_LENGTH, HOLD_ROW_LENGTH + 4)


class Ledger:
    """Accounts, open holds and recent outcomes of one shard, and the building blocks the rules change them with."""

    def __init__(
        self,
        shard: int,
        *,
        records_max: int = limits.IDEMPOTENCY_CACHE_ENTRIES,
        finished_holds_max: int = limits.FINISHED_HOLDS_CACHE_ENTRIES,
    ) -> None:
        self.shard = shard
        self.accounts: dict[str, Account] = tracked({})  # frozen by recovery (``balance.untrack.tracked``)
        self.holds = HoldIndex()  # pending, plus recently finished ones
        # (account_id, op_key) -> first outcome, oldest first. Windows evicted from the front are
        # OrderedDicts: a plain dict skips every slot deleted before its first live one on
        # each next(iter(d)) (measured: ~44 us per eviction at 200,000 entries, 0.6 here).
        self.records: OrderedDict[tuple[str, str], Record] = OrderedDict()
        self.next_seq = 1
        self._records_max = records_max
        self._finished: OrderedDict[Hold, None] = OrderedDict()  # finished holds, oldest first (by identity)
        self._finished_max = finished_holds_max
        self.expiry = ExpiryWheel()
        # Holds changed since the last checkpoint -> "a row of it may be in the holds table".
        # The journal is the record of holds; the holds table is a checkpoint of the pending
        # ones, written with a batch now and then (``collect(checkpoint=True)``), so that a
        # hold and its capture cost one journal row each instead of a journal row and a hold
        # row (measured: the hold upserts took half of MariaDB's time per batch).
        self.unsaved: dict[Hold, bool] = {}
        # Accounts whose row is behind the journal, by id. The same idea: a money operation
        # changes only what its journal row carries (balance, reserved, version; ``exhausted``
        # follows from them), so the account's row waits for the next checkpoint. Without it a
        # batch spread over many accounts rewrote a row per account: on SQLite a page each.
        self._unsaved_accounts: set[str] = set()
        # A checkpoint round in progress: what was unsaved when it began (at journal seq
        # ``round_seq``), written a slice per batch (``collect(rows=...)``) so that no commit
        # carries the whole of it; once all is written, the tables reflect the journal up to
        # ``round_seq`` (and some rows beyond: recovery's replay takes that, see ``_replay_hold_row``).
        self.round: dict[Hold, bool] | None = None
        # Keys of hold rows left behind: a hold that came back (a partner move) with another
        # expiry than the row it may have in the table (keyed by expiry first). The next batch
        # deletes them (``set_hold_expiry``).
        self.stale_hold_rows: list[tuple[int, str, str]] = []
        self.round_accounts: set[str] = set()
        self.round_seq = 0
        # The round's rows in key order, put together a run per slice (``round_order``): a slice
        # then covers neighbouring keys, a few table pages, where one in random order touched
        # a page per row (SQLite writes each page a commit dirties, whole).
        self._round_order: RoundOrder[Hold, int] | None = None
        self._round_account_order: RoundOrder[str, str] | None = None
        self.frames: list[_Frame] = []  # batches applied and not yet durable, oldest first
        # The open batch's frame, by its parts (what the rules write to):
        self.undo_accounts: dict[str, tuple | None] = {}  # type: ignore[type-arg]
        self.undo_holds: dict[tuple[str, str], tuple | None] = {}  # type: ignore[type-arg]
        self._new_records: list[tuple[str, str]] = []
        self.changes = Changes()
        self._in_batch = False
        # What keeps an account from being closed besides its balance and reserve (account id ->
        # the operations concerned): pending holds of this shard naming it as destination
        # (rebuilt with the holds at recovery); cross-shard movements whose source leg took
        # money from it and whose outcome is not settled (it may come back); and, kept by the
        # service, cross-shard movements on their way to it (counted once the source leg
        # commits, released once the target leg lands or is refused; at start, from the
        # pending transfers).
        # Pending holds of other shards naming an account here are kept by the service in
        # ``inbound`` too (``inbound_hold_mark``): set before such a hold is placed, removed once
        # its settling commits, rebuilt at start from the pending holds of every shard.
        self.inbound_holds: dict[str, set[str]] = {}
        self.outbound: dict[str, set[str]] = {}
        self.inbound: dict[str, set[str]] = {}
        # Recovery: this shard's pending holds whose destination lives on another shard, as
        # loaded (hold key -> destination); the service marks them there, then empties it.
        self.remote_holds_loaded: dict[tuple[str, str], str] = {}
        # A fleet node's shard whose marks of other nodes' holds are not all known yet (since
        # its recovery, not every node has answered: ``node.remote_marks``): closes wait (503).
        self.remote_marks_unknown = False
        # Partner moves (``moves``): account -> the move freezing it, or ``moves.MOVED_AWAY`` once
        # it lives on another shard. Empty on most shards: ``apply`` then checks nothing more.
        self.moving: dict[str, str] = {}

    # ---- loading (recovery and look-ups) -------------------------------------------------

    def load_account(self, account: Account) -> None:
        self.accounts[account.id] = account
        if account.status == STATUS_MOVED:
            self.moving[account.id] = moves.MOVED_AWAY

    def load_hold(self, hold: Hold) -> None:
        """A hold read from storage: pending ones count in ``reserved``, finished ones are cached."""
        if self.holds.find(hold.account_id, hold.id) is not None:
            return
        self.holds.put(hold)
        if hold.status == HOLD_PENDING:
            self.expiry.add(hold)
            self._count_inbound_hold(hold, True)
        else:
            self._remember_finished(hold)

    def load_record(self, account_id: str, op_key: str, fingerprint: int, status: int, body: bytes) -> None:
        key = (account_id, op_key)
        if key not in self.records:
            self._remember_record(key, Record(fingerprint, status, body))

    def replay_journal_row(self, row: tuple) -> None:  # type: ignore[type-arg]
        """Recovery: an accepted journal row written after the last checkpoint
        (``schema.RECOVERY_JOURNAL_COLUMNS``, in journal order) is applied to the accounts and
        holds loaded from the tables. An account takes the row's state if the row is newer than
        its stored one (by version: a row written since also carries any later change)."""
        account = self.accounts.get(row[HOLD_JOURNAL_ACCOUNT_ID])
        if account is None:
            raise e.InvariantViolation(
                f"journal: row {row[HOLD_JOURNAL_SEQ]} on unknown account {row[HOLD_JOURNAL_ACCOUNT_ID]}"
            )
        if row[HOLD_JOURNAL_KIND] in MOVE_KINDS:  # the account's row was written with it
            if row[HOLD_JOURNAL_HOLD_ID] is not None:
                self._replay_moved_hold(row, account)
            return
        version = row[RECOVERY_VERSION]
        if version > account.version and not account.is_system:
            account.balance, account.reserved = row[RECOVERY_BALANCE], row[RECOVERY_RESERVED]
            account.version, account.updated_at = version, row[HOLD_JOURNAL_CREATED_AT]
            # Every change lifts the flag; only a hold that leaves nothing available sets it.
            account.exhausted = (
                row[HOLD_JOURNAL_KIND] == HOLD and row[RECOVERY_OP_KEY] is not None and account.available <= 0
            )
            self._unsaved_accounts.add(account.id)
        if row[RECOVERY_OP_KEY] is not None and row[HOLD_JOURNAL_KIND] in HOLD_KINDS:
            self._replay_hold_row(row, account)

    def _replay_hold_row(self, row: tuple, owner: Account) -> None:  # type: ignore[type-arg]
        """A hold's primary journal row (``schema.HOLD_JOURNAL_COLUMNS`` first) on the holds loaded."""
        account_id, kind, hold_id = row[HOLD_JOURNAL_ACCOUNT_ID], row[HOLD_JOURNAL_KIND], row[HOLD_JOURNAL_HOLD_ID]
        if kind == HOLD:
            found = self.holds.find(account_id, hold_id)
            if found is not None and found.status == HOLD_PENDING and found not in self.unsaved:
                return  # its row is in the holds table: a checkpoint slice wrote it after this row
            e.require(found is None, f"journal: hold {hold_id} placed twice")
            hold = Hold.from_row(placed_hold(row[:HOLD_ROW_LENGTH]), owner.id)
            self.holds.put(hold)
            self.unsaved[hold] = False
            self.expiry.add(hold)
            self._count_inbound_hold(hold, True)
            return
        found = self.holds.find(account_id, hold_id)
        if found is None:
            # Placed before the checkpoint, and a slice of the round after it deleted its row
            # once it had finished; the account's row carries its effect (``reserved`` is
            # checked against the pending holds at the end).
            return
        if found.status != HOLD_PENDING:
            raise e.InvariantViolation(f"journal: {kind} of hold {hold_id} not pending")
        if found not in self.unsaved:
            self.unsaved[found] = True  # loaded from the holds table
        found.status, found.captured_amount, found.updated_at = settlement(row)
        self._count_inbound_hold(found, False)
        self._remember_finished(found)

    def _replay_moved_hold(self, row: tuple, owner: Account) -> None:  # type: ignore[type-arg]
        """A hold that left with its account (``MOVE_OUT``: it ends ``moved``) or arrived with it
        (``MOVE_IN``: pending again, as it was)."""
        account_id, hold_id = row[HOLD_JOURNAL_ACCOUNT_ID], row[HOLD_JOURNAL_HOLD_ID]
        found = self.holds.find(account_id, hold_id)
        if row[HOLD_JOURNAL_KIND] == MOVE_OUT:
            if found is None:
                return  # a checkpoint since deleted its row
            e.require(found.status == HOLD_PENDING, f"journal: move of hold {hold_id} not pending")
            if found not in self.unsaved:
                self.unsaved[found] = True
            found.status = HOLD_MOVED
            self._count_inbound_hold(found, False)
            self._remember_finished(found)
            return
        if found is not None and found.status == HOLD_PENDING and found not in self.unsaved:
            return  # its row is in the holds table: a checkpoint slice wrote it after this row
        arrived = Hold.from_row(placed_hold(row[:HOLD_ROW_LENGTH]), owner.id)
        if found is not None:
            e.require(found.status == HOLD_MOVED, f"journal: hold {hold_id} arrived while {found.status}")
            found.amount, found.captured_amount, found.status = arrived.amount, 0, HOLD_PENDING
            self.set_hold_expiry(found, arrived.expires_at)
            self.unsaved.setdefault(found, False)
            self.expiry.add(found)
            self._count_inbound_hold(found, True)
            return
        self.holds.put(arrived)
        self.unsaved[arrived] = False
        self.expiry.add(arrived)
        self._count_inbound_hold(arrived, True)

    def rebuild_reserved(self) -> None:
        """Recovery: ``reserved`` is recomputed from the pending holds, never trusted alone."""
        sums = self.pending_sums()
        for account in self.accounts.values():
            e.require(
                account.reserved == sums.get(account.id, 0),
                f"account {account.id}: stored reserved {account.reserved} != pending holds {sums.get(account.id, 0)}",
            )

    # ---- queries -------------------------------------------------------------------------

    def committed_account(self, account_id: str) -> tuple | None:  # type: ignore[type-arg]
        """The account as last committed (no dirty read of a batch still being written)."""
        for frame in self.frames:  # oldest first: its snapshot is the committed state
            if account_id in frame.accounts:
                return frame.accounts[account_id]
        account = self.accounts.get(account_id)
        return None if account is None else account.state()

    def committed_hold(self, account_id: str, hold_id: str) -> tuple | None:  # type: ignore[type-arg]
        key = (account_id, hold_id)
        for frame in self.frames:
            if key in frame.holds:
                return frame.holds[key]
        hold = self.holds.find(account_id, hold_id)
        return None if hold is None else hold.state()

    def parent_of(self, account_id: str) -> str | None:
        account = self.accounts.get(account_id)
        return None if account is None else account.parent_id

    def chain(self, account_id: str) -> tuple[str, ...]:
        """``account_id`` and its ancestors (a child lives on its parent's shard: all are here)."""
        return authority.chain(self.parent_of, account_id)

    def knows_hold(self, account_id: str, hold_id: str) -> bool:
        """True if memory holds the hold or a batch in flight created it (no storage read needed)."""
        if self.holds.find(account_id, hold_id) is not None:
            return True
        key = (account_id, hold_id)
        return any(key in frame.holds for frame in self.frames)

    def due_holds(self, now: int, limit: int) -> list[tuple[str, str]]:
        """Pending holds whose expiry has passed, oldest second first (stale entries dropped)."""
        return [(hold.account_id, hold.id) for hold in self.expiry.take_due(now, limit, self._is_live)]

    def oldest_due(self, now: int) -> int | None:
        """The expiry of the oldest pending hold past it as of ``now`` (None: none is due)."""
        return self.expiry.oldest_due(now, self._is_live)

    def _is_live(self, hold: Hold) -> bool:
        return hold.status == HOLD_PENDING and self.holds.find(hold.account_id, hold.id) is hold

    def rearm(self, account_id: str, hold_id: str) -> None:
        """Put a hold taken by ``due_holds`` back on the expiry wheel (it was not expired)."""
        hold = self.holds.find(account_id, hold_id)
        if hold is not None and hold.status == HOLD_PENDING:
            self.expiry.add(hold)

    def lookups_needed(self, command: c.Command) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(op keys, hold keys) that must be read from storage before ``command`` can be applied."""
        if self.moving and moves.refusal(self, command) is not None:
            return [], []  # refused without reading (a hold of a moved account is not here)
        if isinstance(command, (c.CaptureHold, c.ReleaseHold)):
            kind = CAPTURE if isinstance(command, c.CaptureHold) else RELEASE
            key = (command.account_id, op_key_of(kind, command.hold_id))
            if command.account_id not in self.accounts:
                return [], []
            hold = self.holds.find(command.account_id, command.hold_id)
            if key in self.records:  # the hold too: who placed it decides who may see the replay
                self._keep_record(key)
                return [], ([] if hold is not None else [(command.account_id, command.hold_id)])
            if hold is not None and hold.status == HOLD_PENDING:
                return [], []  # a pending hold was never captured or released: nothing to read
            if hold is not None and hold in self._finished:
                self._finished.move_to_end(hold)  # kept, as records are
            return [key], ([] if hold is not None else [(command.account_id, command.hold_id)])
        if isinstance(command, c.CreateAccount) and command.client_id is not None:
            key = (command.account_id, op_key_of(ACCOUNT_OP_KIND, command.client_id))
            if key in self.records:
                self._keep_record(key)
            elif command.account_id in self.accounts:  # created earlier: its first answer is in storage
                return [key], []
            return [], []
        if isinstance(command, c.ReturnTransfer):
            t = command.transfer
            key = (t.from_account_id, cross_shard.leg_op_key(t.op_id))
            holds = []
            if cross_shard.is_capture_leg(t.op_id):
                hold_id = t.op_id[len(cross_shard.CAPTURE_LEG) :]
                if self.holds.find(t.from_account_id, hold_id) is None:
                    holds.append((t.from_account_id, hold_id))
            return ([] if key in self.records else [key]), holds
        if isinstance(command, c.ResumeLeg):
            key = (command.account_id, cross_shard.leg_op_key(command.op_id))
            return ([] if key in self.records else [key]), []
        if isinstance(command, c.PlaceHold):
            key = (command.account_id, op_key_of(HOLD, command.op_id))
            if key in self.records:
                self._keep_record(key)
            elif self.holds.find(command.account_id, command.op_id) is not None:
                return [key], []
        if isinstance(command, (c.MoveOut, c.MoveIn)):  # (rare: last)
            return moves.lookups_needed(self, command), []
        return [], []

    def _keep_record(self, key: tuple[str, str]) -> None:
        """Found in memory, so not read from storage: make it the newest, so that the entries
        the batch adds before applying it (far fewer than the window holds) cannot evict it."""
        self.records.move_to_end(key)

    def pending_sums(self) -> dict[str, int]:
        sums: dict[str, int] = {}
        for hold in self.holds.values():
            if hold.status == HOLD_PENDING:
                sums[hold.account_id] = sums.get(hold.account_id, 0) + hold.amount
        return sums

    def check_invariants(self) -> None:
        """Full check (recovery, tests, audits): O(accounts + holds)."""
        totals: dict[str, int] = {}
        sums = self.pending_sums()
        for account in self.accounts.values():
            totals[account.currency] = totals.get(account.currency, 0) + account.balance
            _check_account(account)
            if account.reserved != sums.get(account.id, 0):
                raise e.InvariantViolation(
                    f"account {account.id}: reserved {account.reserved} != pending {sums.get(account.id, 0)}"
                )
        for currency, total in totals.items():
            e.require(total == 0, f"sum of balances in {currency} is {total}, not 0")
        accounts = self.accounts
        for hold in self.holds.values():
            if hold.account_id not in accounts:
                raise e.InvariantViolation(f"hold {hold.id} on unknown account {hold.account_id}")

    # ---- batch lifecycle -----------------------------------------------------------------
    #
    # A batch is a frame of undo information. The writer may apply batch N+1 while batch N is
    # still being committed, so frames stack: ``accept`` drops the oldest (it is durable),
    # ``rollback`` undoes them all, newest first (N+1 was built on N).

    def begin(self) -> None:
        e.require(not self._in_batch, "begin() inside a batch")
        frame = _Frame(self.next_seq)
        self.frames.append(frame)
        self.undo_accounts, self.undo_holds = frame.accounts, frame.holds
        self._new_records, self.changes = frame.records, frame.changes
        self._in_batch = True

    def collect(self, checkpoint: bool = False, rows: int | None = None) -> Changes:
        """Close the open batch: the rows to write, after a cheap check of what it touched.

        ``checkpoint`` begins a checkpoint round (none may be in progress): every hold and
        account changed so far is to be written, a hold upserted if pending and deleted if
        finished (unless no row of it can be there: placed and finished in between). While a
        round is in progress each batch writes ``rows`` of it (None: all that is left); the
        batch that writes the last carries the round's ``checkpoint_seq``."""
        e.require(self._in_batch, "collect() outside a batch")
        self._in_batch = False
        changes = self.changes
        changes.accounts = []
        changes.holds = []
        if self.stale_hold_rows:
            changes.holds_deleted += self.stale_hold_rows
            self.stale_hold_rows = []
        delta: dict[str, int] = {}
        frame = self.frames[-1]
        rewritten, unsaved_accounts = frame.rewritten, self._unsaved_accounts
        for account_id, before in self.undo_accounts.items():
            account = self.accounts[account_id]
            _check_account(account)
            if before is None or account_id in rewritten or account.is_system:
                changes.accounts.append(account)
            else:
                unsaved_accounts.add(account_id)
            old_balance = 0 if before is None else before[ACCOUNT_BALANCE]
            delta[account.currency] = delta.get(account.currency, 0) + account.balance - old_balance
        for currency, moved in delta.items():
            e.require(moved == 0, f"batch created {moved} {currency} out of nothing")
        if checkpoint:
            e.require(self.round is None, "a checkpoint round began while one is in progress")
            self.round, self.unsaved = self.unsaved, {}
            self.round_accounts, self._unsaved_accounts = unsaved_accounts, set()
            self.round_seq = self.next_seq - 1
            self._round_order = self._round_account_order = None
            frame.round_begun = True
        if self.round is not None:
            self._write_round(frame, changes, rows)
        return changes

    def _write_round(self, frame: _Frame, changes: Changes, rows: int | None) -> None:
        """Up to ``rows`` rows of the round in progress into this batch (holds first)."""
        round_holds = self.round
        assert round_holds is not None
        if rows is None or rows >= len(round_holds):
            chunk, self.round = round_holds, {}
        else:
            chunk = {}
            order = self._round_order
            if order is None:
                order = self._round_order = RoundOrder(list(round_holds), _hold_key)
            order.feed(rows)
            while len(chunk) < rows:
                taken = order.pop()
                if taken is None:  # (put back by a rollback after it was taken)
                    hold, in_table = round_holds.popitem()
                    chunk[hold] = in_table
                elif taken in round_holds:  # (not: written already, or undone since)
                    chunk[taken] = round_holds.pop(taken)
        frame.checkpoint = chunk
        for hold, in_table in chunk.items():
            if hold.status == HOLD_PENDING:
                changes.holds.append(hold)
            elif in_table:
                changes.holds_deleted.append((hold.expires_at, hold.account_id, hold.id))
        left = None if rows is None else rows - len(chunk)
        if left is None or left >= len(self.round_accounts):
            accounts, self.round_accounts = self.round_accounts, set()
        else:
            accounts = set()
            round_accounts = self.round_accounts
            account_order = self._round_account_order
            if account_order is None:
                account_order = self._round_account_order = RoundOrder(list(round_accounts), _account_key)
            account_order.feed(left)
            while len(accounts) < left:
                account_id = account_order.pop()
                if account_id is None:
                    accounts.add(round_accounts.pop())
                elif account_id in round_accounts:
                    round_accounts.discard(account_id)
                    accounts.add(account_id)
        frame.checkpoint_accounts = accounts
        if accounts:
            written = {account.id for account in changes.accounts}
            for account_id in accounts:
                unsaved = self.accounts.get(account_id)  # None: created by a batch since undone
                if unsaved is not None and account_id not in written:
                    changes.accounts.append(unsaved)
        if not self.round and not self.round_accounts:  # all written: the round is complete
            changes.checkpoint_seq = frame.round_done = self.round_seq
            self.round = None

    @property
    def round_rows(self) -> int:
        """Rows of the checkpoint round in progress still to be written (0: none in progress)."""
        return 0 if self.round is None else len(self.round) + len(self.round_accounts)

    @property
    def checkpointing(self) -> bool:
        """A checkpoint round is in progress."""
        return self.round is not None

    @property
    def unsaved_holds(self) -> int:
        """Holds changed since the last checkpoint (the engine decides when to write one)."""
        return len(self.unsaved)

    @property
    def unsaved_accounts(self) -> int:
        """Accounts whose row is behind the journal (the next checkpoint writes them)."""
        return len(self._unsaved_accounts)

    def accept(self) -> None:
        """The oldest collected batch is durable: forget its undo information."""
        e.require(bool(self.frames) and (len(self.frames) > 1 or not self._in_batch), "accept() without a batch")
        frame = self.frames.pop(0)
        for key in frame.holds:
            hold = self.holds[key]
            if hold.status != HOLD_PENDING:
                self._remember_finished(hold)

    @property
    def batches_in_flight(self) -> int:
        return len(self.frames)

    @property
    def committed_seq(self) -> int:
        """The first seq not yet durable (batches applied and still being written come after)."""
        return self.frames[0].seq_at_begin if self.frames else self.next_seq

    def event_seq(self) -> int:
        """A sequence number for an outbox row (shared with the journal: one order per shard)."""
        return self._seq()

    def rollback(self) -> None:
        """No batch in flight was written: put every account, hold, outcome and sequence back."""
        e.require(bool(self.frames), "rollback() without a batch")
        created: list[Hold] = []
        for frame in reversed(self.frames):
            for account_id, before in frame.accounts.items():
                if before is None:
                    del self.accounts[account_id]
                else:
                    self.accounts[account_id].restore(before)
            for key, hold_before in frame.holds.items():
                if hold_before is None:
                    created.append(self.holds[key])
                    del self.holds[key]
                else:
                    hold = self.holds[key]
                    hold.restore(hold_before)
                    if hold_before[HOLD_STATUS] == HOLD_PENDING:  # re-arm its expiry (stale entries are skipped)
                        self.expiry.add(hold)
            for key in frame.records:
                self.records.pop(key, None)
            for record, status, body in reversed(frame.restores):
                record.status, record.body = status, body
            for marks, account_id, op, added in reversed(frame.flights):
                _mark(marks, account_id, op, not added)
            for account_id, before_move in reversed(frame.moving):
                if before_move is None:
                    self.moving.pop(account_id, None)
                else:
                    self.moving[account_id] = before_move
            self.next_seq = frame.seq_at_begin
            if frame.checkpoint is not None:  # its slice of the round was not written: back to the round
                if self.round is None:  # it was the round's last slice
                    self.round, self.round_seq = {}, frame.round_done
                for hold, in_table in frame.checkpoint.items():
                    self.round[hold] = in_table or self.round.get(hold, False)
                self.round_accounts |= frame.checkpoint_accounts or set()
            if frame.round_begun:  # the round began here: what it was to write is unsaved again
                assert self.round is not None
                for hold, in_table in self.round.items():
                    self.unsaved[hold] = in_table or self.unsaved.get(hold, False)
                self._unsaved_accounts |= self.round_accounts
                self.round, self.round_accounts = None, set()
        for hold in created:
            self.unsaved.pop(hold, None)
            if self.round:
                self.round.pop(hold, None)
        self.frames = []
        self._in_batch = False

    # ---- apply ---------------------------------------------------------------------------

    def apply(self, command: c.Command, now: int) -> Outcome:
        e.require(self._in_batch, "apply() outside a batch")
        handler = _HANDLERS[type(command)]
        if self.moving and (refused := moves.refusal(self, command)) is not None:
            return refused
        return handler(self, command, now)

    def set_moving(self, account_id: str, move: str | None) -> None:
        """Freeze ``account_id`` for a move, mark it moved away (``moves.MOVED_AWAY``), or neither
        (None); undone with the batch if it is not written."""
        if self._in_batch:
            self.frames[-1].moving.append((account_id, self.moving.get(account_id)))
        if move is None:
            self.moving.pop(account_id, None)
        else:
            self.moving[account_id] = move

    def remember(self, key: tuple[str, str], record: Record) -> None:
        """A first answer this batch records (forgotten again if the batch is undone)."""
        self._remember_record(key, record)
        self._new_records.append(key)

    # ---- building blocks -----------------------------------------------------------------

    def replay(self, key: tuple[str, str], fingerprint: int, conflict: str = e.IDEMPOTENCY_CONFLICT) -> Outcome | None:
        record = self.records.get(key)
        if record is None:
            return None
        if record.fingerprint == fingerprint:
            return Outcome(record.status, replay=record)
        return reject(conflict, f"operation id {key[1].partition(':')[2]} was already used with a different body")

    def insufficient(
        self,
        key: tuple[str, str],
        fingerprint: int,
        cmd: c.Debit | c.Transfer | c.PlaceHold,
        account: Account,
        now: int,
    ) -> Outcome:
        """The recorded refusal of an amount above what the account has available."""
        detail = f"available {account.available} < amount {cmd.amount}"
        return self.refuse_recorded(key, fingerprint, cmd, account, e.INSUFFICIENT_FUNDS, detail, now)

    def refuse_recorded(
        self, key: tuple[str, str], fingerprint: int, cmd: c.MoneyCommand,
        account: Account, code: str, detail: str, now: int,
    ) -> Outcome:  # fmt: skip
        """A business refusal that is recorded: replaying the id answers the same refusal.
        Its id is that of the operation key (``op_key_of``), its kind the command's."""
        rejection = e.Rejection(code, detail)
        amount = getattr(cmd, "amount", 0) or 0
        kind, op_id = key[1].split(":", 1)
        if kind == "op":  # a client operation's key (``op_key_of``) names no kind: the command does
            kind = _KIND_OF_COMMAND[type(cmd)]
        entry = Entry(
            self._seq(), account.id, key[1], kind, op_id, REFUSED, code,
            fingerprint, amount, account.currency, None, None, account.balance, account.reserved,
            account.version, now, "", b"{}",
        )  # fmt: skip
        self.changes.entries.append(entry)
        record = Record(fingerprint, REFUSED)
        self._remember_record(key, record)
        self._new_records.append(key)
        return Outcome(REFUSED, rejection=rejection, record=record, entry=entry)

    def accepted(
        self, status: int, key: tuple[str, str], fingerprint: int, entry: Entry, accounts: tuple[Account, ...]
    ) -> Outcome:
        entry.status = status
        record = Record(fingerprint, status)
        self._remember_record(key, record)
        self._new_records.append(key)
        return Outcome(status, record=record, entry=entry, accounts=accounts)

    def entries(
        self, key: tuple[str, str], fingerprint: int, kind: str, op_id: str, amount: int,
        account: Account, counterparty: Account | None, hold_id: str | None,
        description: str, metadata: bytes, now: int,
    ) -> Entry:  # fmt: skip
        """Journal rows: the primary one on ``account``, a second on a non-system counterparty."""
        primary = Entry(
            self._seq(), account.id, key[1], kind, op_id, 200, "", fingerprint, amount,
            account.currency, None if counterparty is None else counterparty.id, hold_id,
            account.balance, account.reserved, account.version, now, description, metadata,
        )  # fmt: skip
        self.changes.entries.append(primary)
        if counterparty is not None and not counterparty.is_system:
            self.changes.entries.append(Entry(
                self._seq(), counterparty.id, None, kind, op_id, 200, "", fingerprint, amount,
                counterparty.currency, account.id, hold_id, counterparty.balance,
                counterparty.reserved, counterparty.version, now, description, metadata,
            ))  # fmt: skip
        return primary

    def move(self, source: Account, target: Account, amount: int, now: int) -> None:
        self.touch(source)
        self.touch(target)
        source.balance -= amount
        target.balance += amount
        self.changed(source, now)
        self.changed(target, now)

    def changed(self, account: Account, now: int) -> None:
        """Balance or holds changed: a new version, and the exhausted flag lifts."""
        account.version += 1
        account.updated_at = now
        if account.exhausted:
            account.exhausted = False
            self.changes.events.append(
                Event(EVENT_ACCOUNT_REPLENISHED, account.id, account.version, now, account.state())
            )

    def system_account(self, currency: str, kind: str, now: int) -> Account:
        account_id = system_account_id(self.shard, currency, kind)
        account = self.accounts.get(account_id)
        if account is None:
            account = Account(account_id, None, kind, "SYS", currency, f"{kind} {currency}",
                              STATUS_ACTIVE, 0, 0, 0, False, 1, now, now, b"{}")  # fmt: skip
            self.undo_accounts[account_id] = None
            self.accounts[account_id] = account
        return account

    def mark(self, marks: dict[str, set[str]], account_id: str, op: str, add: bool) -> None:
        """Add or remove ``op`` among ``account_id``'s marks (``inbound_holds``, ``outbound``),
        undone with the batch if it is not written."""
        if _mark(marks, account_id, op, add) and self._in_batch:
            self.frames[-1].flights.append((marks, account_id, op, add))

    def _count_inbound_hold(self, hold: Hold, add: bool) -> None:
        destination = hold.destination_account_id
        if destination is None:
            return
        if self.lives_here(destination):
            self.mark(self.inbound_holds, destination, f"{hold.account_id}:{hold.id}", add)
        elif self._in_batch:  # on another shard: it learns of it when this batch commits
            self.changes.remote_holds.append((hold.account_id, hold.id, destination, add))
        elif add:
            self.remote_holds_loaded[(hold.account_id, hold.id)] = destination
        else:
            self.remote_holds_loaded.pop((hold.account_id, hold.id), None)

    def lives_here(self, account_id: str) -> bool:
        """The account is on this shard and has not moved away (a moved account's row stays)."""
        return account_id in self.accounts and not (self.moving and self.moving.get(account_id) == moves.MOVED_AWAY)

    def money_in_flight(self, account_id: str) -> bool:
        """A cross-shard movement from or to ``account_id`` is not settled (the marks of holds
        of other shards naming it are not money in flight: they move with it)."""
        if account_id in self.outbound:
            return True
        inbound = self.inbound.get(account_id)
        return inbound is not None and any(not op.startswith(INBOUND_HOLD) for op in inbound)

    def inbound_marks(self, prefix: str) -> list[tuple[str, str]]:
        """(account, mark) of the inbound marks that begin with ``prefix``."""
        return [
            (account_id, mark)
            for account_id, marks in self.inbound.items()
            for mark in marks
            if mark.startswith(prefix)
        ]

    def take_remote_holds_loaded(self) -> dict[tuple[str, str], str]:
        """Once, after a load: the pending holds naming another shard's account (then empty)."""
        loaded, self.remote_holds_loaded = self.remote_holds_loaded, {}
        return loaded

    def hold_may_be_pending(self, account_id: str, hold_id: str, destination_id: str) -> bool:
        """The hold naming ``destination_id`` is pending, in memory or as committed (a batch that
        settles it may still be undone): its mark on the destination's shard stays meanwhile."""
        hold = self.holds.find(account_id, hold_id)
        if hold is not None and hold.status == HOLD_PENDING and hold.destination_account_id == destination_id:
            return True
        committed = self.committed_hold(account_id, hold_id)
        return (
            committed is not None
            and committed[HOLD_STATUS] == HOLD_PENDING
            and committed[HOLD_DESTINATION] == destination_id
        )

    def count_inbound_hold(self, hold: Hold, add: bool) -> None:
        """A hold naming an account of this shard as destination was placed (or settled)."""
        self._count_inbound_hold(hold, add)

    def closing_refusal(self, account: Account) -> str | None:
        """Why ``account`` cannot be closed now, or None: money on it, set aside on it, on its
        way to it, or possibly coming back to it."""
        if account.balance != 0 or account.reserved != 0:
            return f"balance {account.balance}, reserved {account.reserved}"
        account_id = account.id
        if account_id in self.inbound_holds:
            return "pending holds name it as destination"
        inbound = self.inbound.get(account_id)
        if inbound is not None and any(op.startswith(INBOUND_HOLD) for op in inbound):
            return "pending holds of another shard name it as destination"
        if inbound is not None or account_id in self.outbound:
            return "money is in flight to or from it"
        return None

    def touch(self, account: Account) -> None:
        if account.id not in self.undo_accounts:
            self.undo_accounts[account.id] = account.state()

    def set_hold_expiry(self, hold: Hold, expires_at: int) -> None:
        """A hold that came back (a partner move) takes the expiry it arrived with. A row of it in
        the holds table under another expiry (the table's key begins with it) is deleted with the
        next batch: the only way a hold's expiry changes, so the only way a row is left behind."""
        if hold.expires_at != expires_at:
            self.stale_hold_rows.append((hold.expires_at, hold.account_id, hold.id))
            hold.expires_at = expires_at

    def touch_hold(self, hold: Hold) -> None:
        key = (hold.account_id, hold.id)
        if key not in self.undo_holds:
            self.undo_holds[key] = hold.state()
        if hold not in self.unsaved:  # saved: a pending hold is in the holds table, a finished one not
            # A moved hold may have its row still (the round or slice that deletes it not yet
            # written or undone) and may come back pending (a move back) to be written again:
            # its settlement must delete the row, never assume none.
            self.unsaved[hold] = hold.status == HOLD_PENDING or hold.status == HOLD_MOVED

    def _seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def _remember_record(self, key: tuple[str, str], record: Record) -> None:
        # Two strings, kept as long as the record: untracked, no young collection walks it
        # (``balance.untrack``). Boxed once as Any: the compiled code would box a typed tuple
        # afresh for each call, and the dict would keep another copy than the one untracked.
        boxed: Any = key
        untrack(boxed)
        self.records[boxed] = record
        if len(self.records) > self._records_max:
            self.records.popitem(last=False)  # the oldest; storage still has it

    def _remember_finished(self, hold: Hold) -> None:
        self._finished[hold] = None
        while len(self._finished) > self._finished_max:
            old, _ = self._finished.popitem(last=False)
            if old.status != HOLD_PENDING and self.holds.find(old.account_id, old.id) is old:
                self.holds.remove(old.account_id, old.id)


def _hold_key(hold: Hold) -> int:
    """A hold's place in the holds table: its expiry, the primary key's first column
    (``schema.HOLD_KEY_COLUMNS``; holds of one expiry are neighbours whatever their ids)."""
    return hold.expires_at


def _account_key(account_id: str) -> str:
    """An account's key in the accounts table."""
    return account_id


def _check_account(account: Account) -> None:
    """Per-account invariants. The fast test first: messages are only formatted on a failure
    (this runs for every account a batch touches and for every account at recovery)."""
    reserved, balance = account.reserved, account.balance
    if reserved >= 0 and (
        account.is_system
        or (
            balance + account.credit_limit - reserved >= 0
            and -limits.BALANCE_MAX <= balance <= limits.BALANCE_MAX
            and reserved <= limits.BALANCE_MAX
            and account.credit_limit <= limits.CREDIT_LIMIT_MAX
            and (account.status != STATUS_CLOSED or (reserved == 0 and balance == 0))
        )
    ):
        return
    _explain_account(account)


def _explain_account(account: Account) -> None:
    e.require(account.reserved >= 0, f"account {account.id}: negative reserved {account.reserved}")
    if not account.is_system:
        e.require(abs(account.balance) <= limits.BALANCE_MAX, f"account {account.id}: balance out of range")
        e.require(account.reserved <= limits.BALANCE_MAX, f"account {account.id}: reserved out of range")
        e.require(account.credit_limit <= limits.CREDIT_LIMIT_MAX, f"account {account.id}: limit out of range")
        e.require(account.available >= 0, f"account {account.id}: negative available {account.available}")
        e.require(account.reserved == 0 or account.status != STATUS_CLOSED, "closed account with holds")
        e.require(account.balance == 0 or account.status != STATUS_CLOSED, "closed account holding money")


def _mark(marks: dict[str, set[str]], account_id: str, op: str, add: bool) -> bool:
    """True if it changed anything."""
    found = marks.get(account_id)
    if add:
        if found is None:
            marks[account_id] = {op}
            return True
        if op in found:
            return False
        found.add(op)
        return True
    if found is None or op not in found:
        return False
    found.discard(op)
    if not found:
        del marks[account_id]
    return True


_KIND_OF_COMMAND = {c.Credit: CREDIT, c.Debit: DEBIT, c.Transfer: TRANSFER, c.PlaceHold: HOLD}

# Each handler takes its own command class (hence Any: the key picks the handler).
_HANDLERS: dict[type, Callable[[Ledger, Any, int], Outcome]] = {
    c.TransferOut: cross_shard.transfer_out,
    c.TransferIn: cross_shard.transfer_in,
    c.CompleteTransfer: cross_shard.complete_transfer,
    c.ReturnTransfer: cross_shard.return_transfer,
    c.ResumeLeg: cross_shard.resume_leg,
    c.CreateAccount: account_rules.create_account,
    c.UpdateAccount: account_rules.update_account,
    c.CreateKey: account_rules.create_key,
    c.RevokeKey: account_rules.revoke_key,
    c.Credit: movements.credit,
    c.Debit: movements.debit,
    c.Transfer: movements.transfer,
    c.PlaceHold: hold_rules.place_hold,
    c.CaptureHold: hold_rules.capture_hold,
    c.ReleaseHold: hold_rules.release_hold,
    c.ExpireHold: hold_rules.expire_hold,
    c.RecordResultConflict: hold_rules.record_result_conflict,
    c.FreezeMove: moves.freeze,
    c.ThawMove: moves.thaw,
    c.MoveOut: moves.move_out,
    c.MoveIn: moves.move_in,
    c.RecordMove: move_records.record_move,
}
