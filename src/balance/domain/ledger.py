"""The ledger rules of one shard: apply commands to accounts and holds held in memory.

Pure: no IO, no clock (``now`` is passed in, microseconds). The shard writer calls
``begin``, then ``apply`` once per command, then ``accept`` (the batch is durable)
or ``rollback`` (it is not: every account, hold and outcome is put back as it was).

Each operation runs its checks in one documented order, then a block that cannot
fail: lookups → idempotency → shape → state → currency → funds → overflow → mutation.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain import limits
from balance.domain.holds import HOLD_JOURNAL_FIELDS, HOLD_KINDS, HoldIndex, placed_hold, settlement
from balance.domain.model import (
    CAPTURE,
    CREDIT,
    DEBIT,
    EXPIRE,
    HOLD,
    HOLD_CAPTURED,
    HOLD_EXPIRED,
    HOLD_PENDING,
    HOLD_RELEASED,
    KIND_FUNDING,
    KIND_SETTLEMENT,
    KIND_TRANSIT,
    RELEASE,
    STATUS_ACTIVE,
    STATUS_CLOSED,
    TRANSFER,
    Account,
    Entry,
    Event,
    Hold,
)  # fmt: skip


class Record:
    """The first outcome of an operation id: what a replay answers."""

    __slots__ = ("fingerprint", "status", "body")

    def __init__(self, fingerprint: int, status: int, body: bytes = b"") -> None:
        self.fingerprint = fingerprint
        self.status = status
        self.body = body


class Outcome:
    """What ``apply`` answers. The caller renders it at once (the accounts are live objects).

    A plain class, not a dataclass: one is made per operation, and a compiled ``__init__``
    costs a fraction of the generated one."""

    __slots__ = ("status", "rejection", "replay", "record", "entry", "accounts", "hold")

    def __init__(
        self, status: int, rejection: e.Rejection | None = None, replay: Record | None = None,
        record: Record | None = None, entry: Entry | None = None, accounts: tuple[Account, ...] = (),
        hold: Hold | None = None,
    ) -> None:  # fmt: skip
        self.status = status
        self.rejection = rejection
        self.replay = replay
        self.record = record  # to receive the rendered body
        self.entry = entry  # the primary journal row
        self.accounts = accounts
        self.hold = hold


@dataclass(slots=True)
class Changes:
    """What one accepted batch changed: the rows its commit must write."""

    # Accounts whose row this batch writes: created or changed beyond what a journal row says,
    # system accounts (no journal rows of their own), and at a checkpoint every unsaved one.
    accounts: list[Account] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)  # a checkpoint's pending holds (upserted)
    holds_deleted: list[tuple[str, str]] = field(default_factory=list)  # a checkpoint's finished holds
    checkpoint_seq: int = 0  # > 0: the holds and accounts tables reflect the journal up to here once committed
    entries: list[Entry] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    keys: list[tuple[str, str, int]] = field(default_factory=list)  # (key_hash, account_id, at)
    transfers_started: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]  # TRANSFER_COLUMNS
    transfers_completed: list[tuple[bytes, str, str]] = field(default_factory=list)  # (body, account, op_id)


class _ExpiryWheel:
    """Pending holds by the second they expire in.

    8 bytes per hold in a bucket list, instead of a 64-byte (expires_at, account, id) tuple on
    a heap: at millions of pending holds that is most of a hold's memory. Entries are lazy:
    a hold that was captured, released or rolled back is skipped when its second comes.
    """

    __slots__ = ("buckets", "seconds")

    def __init__(self) -> None:
        self.buckets: dict[int, list[Hold]] = {}
        self.seconds: list[int] = []  # heap of the bucket keys

    def add(self, hold: Hold) -> None:
        second = hold.expires_at // 1_000_000
        bucket = self.buckets.get(second)
        if bucket is None:
            bucket = self.buckets[second] = []
            heapq.heappush(self.seconds, second)
        bucket.append(hold)

    def take_due(self, now: int, limit: int, is_live: Callable[[Hold], bool]) -> list[Hold]:
        due: list[Hold] = []
        seen: set[int] = set()
        while self.seconds and self.seconds[0] <= now // 1_000_000:
            second = self.seconds[0]
            keep: list[Hold] = []
            for hold in self.buckets[second]:
                if id(hold) in seen or not is_live(hold):
                    continue
                seen.add(id(hold))
                (due if hold.expires_at <= now and len(due) < limit else keep).append(hold)
            if keep:  # later in this second, or over the limit: they wait for the next sweep
                self.buckets[second] = keep
                break
            del self.buckets[second]
            heapq.heappop(self.seconds)
        return due


class _Frame:
    """Undo information of one batch: snapshots before its first change, outcomes it added."""

    __slots__ = (
        "seq_at_begin", "accounts", "holds", "records", "restores", "changes", "rewritten", "checkpoint",
        "checkpoint_accounts",
    )  # fmt: skip

    def __init__(self, seq_at_begin: int) -> None:
        self.seq_at_begin = seq_at_begin
        self.accounts: dict[str, tuple | None] = {}  # type: ignore[type-arg]  # None: created here
        self.holds: dict[tuple[str, str], tuple | None] = {}  # type: ignore[type-arg]
        self.records: list[tuple[str, str]] = []
        self.restores: list[tuple[Record, int, bytes]] = []  # outcomes changed in place
        self.changes = Changes()
        self.rewritten: set[str] = set()  # accounts whose row this batch must write (not only the journal's fields)
        self.checkpoint: dict[Hold, bool] | None = None  # the unsaved holds this batch checkpoints
        self.checkpoint_accounts: set[str] | None = None  # ... and the unsaved accounts


# What recovery replays of each accepted journal row after the checkpoint: a hold's fields
# first (``HOLD_JOURNAL_FIELDS``), then what the row says of its account's state after it.
RECOVERY_JOURNAL_FIELDS = (*HOLD_JOURNAL_FIELDS, "op_key", "balance_after", "reserved_after", "version")
HOLD_ROW_LENGTH = len(HOLD_JOURNAL_FIELDS)
RECOVERY_OP_KEY, RECOVERY_BALANCE, RECOVERY_RESERVED, RECOVERY_VERSION = range(HOLD_ROW_LENGTH, HOLD_ROW_LENGTH + 4)

TRANSFER_IN_PROGRESS = 202  # a cross-shard transfer whose second leg is not yet confirmed


def transfer_target_refusal(target: Account | None, transfer: c.Transfer) -> e.Rejection | None:
    """Why the target of a cross-shard transfer cannot take it (checked on its own shard,
    on committed state, before the source leg); None if it can."""
    if target is None:
        return e.Rejection(e.ACCOUNT_NOT_FOUND, f"account {transfer.to_account_id} not found")
    if target.is_system:
        return e.Rejection(e.VALIDATION_ERROR, "system accounts cannot take part in transfers")
    if target.currency != transfer.currency:
        return e.Rejection(e.CURRENCY_MISMATCH, f"{transfer.currency} transfer to a {target.currency} account")
    if target.status != STATUS_ACTIVE:
        return e.Rejection(e.ACCOUNT_INACTIVE, f"account {target.id} is {target.status}")
    return None


def system_account_id(shard: int, currency: str, kind: str) -> str:
    return f"SYS-{shard}-{kind}-{currency}"


def is_system_account_id(shard: int, account_id: str) -> bool:
    """One of the shard's system accounts, whether it exists yet or not (a fact of the id alone)."""
    return account_id.startswith(f"SYS-{shard}-")


def op_key_of(kind: str, op_id: str) -> str:
    return f"{kind}:{op_id}"


class Ledger:
    """Accounts, open holds and recent outcomes of one shard, and the rules that change them."""

    def __init__(
        self,
        shard: int,
        *,
        records_max: int = limits.IDEMPOTENCY_CACHE_ENTRIES,
        finished_holds_max: int = limits.FINISHED_HOLDS_CACHE_ENTRIES,
    ) -> None:
        self.shard = shard
        self.accounts: dict[str, Account] = {}
        self.holds = HoldIndex()  # pending, plus recently finished ones
        # (account_id, op_key) -> first outcome, oldest first. Windows evicted from the front are
        # OrderedDicts: a plain dict skips every slot deleted before its first live one on
        # each next(iter(d)) (measured: ~44 us per eviction at 200,000 entries, 0.6 here).
        self.records: OrderedDict[tuple[str, str], Record] = OrderedDict()
        self.next_seq = 1
        self._records_max = records_max
        self._finished: OrderedDict[Hold, None] = OrderedDict()  # finished holds, oldest first (by identity)
        self._finished_max = finished_holds_max
        self._expiry = _ExpiryWheel()
        # Holds changed since the last checkpoint -> "a row of it may be in the holds table".
        # The journal is the record of holds; the holds table is a checkpoint of the pending
        # ones, written with a batch now and then (``collect(checkpoint=True)``), so that a
        # hold and its capture cost one journal row each instead of a journal row and a hold
        # row (measured: the hold upserts took half of MariaDB's time per batch).
        self._unsaved: dict[Hold, bool] = {}
        # Accounts whose row is behind the journal, by id. The same idea: a money operation
        # changes only what its journal row carries (balance, reserved, version; ``exhausted``
        # follows from them), so the account's row waits for the next checkpoint. Without it a
        # batch spread over many accounts rewrote a row per account: on SQLite a page each.
        self._unsaved_accounts: set[str] = set()
        self._frames: list[_Frame] = []  # batches applied and not yet durable, oldest first
        # The open batch's frame, by its parts (what the rules write to):
        self._undo_accounts: dict[str, tuple | None] = {}  # type: ignore[type-arg]
        self._undo_holds: dict[tuple[str, str], tuple | None] = {}  # type: ignore[type-arg]
        self._new_records: list[tuple[str, str]] = []
        self._changes = Changes()
        self._in_batch = False

    # ---- loading (recovery and look-ups) -------------------------------------------------

    def load_account(self, account: Account) -> None:
        self.accounts[account.id] = account

    def load_hold(self, hold: Hold) -> None:
        """A hold read from storage: pending ones count in ``reserved``, finished ones are cached."""
        if self.holds.find(hold.account_id, hold.id) is not None:
            return
        self.holds.put(hold)
        if hold.status == HOLD_PENDING:
            self._expiry.add(hold)
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
        account = self.accounts.get(row[1])
        if account is None:
            raise e.InvariantViolation(f"journal: row {row[0]} on unknown account {row[1]}")
        version = row[RECOVERY_VERSION]
        if version > account.version and not account.is_system:
            account.balance, account.reserved = row[RECOVERY_BALANCE], row[RECOVERY_RESERVED]
            account.version, account.updated_at = version, row[6]
            # Every change lifts the flag; only a hold that leaves nothing available sets it.
            account.exhausted = row[2] == HOLD and row[RECOVERY_OP_KEY] is not None and account.available <= 0
            self._unsaved_accounts.add(account.id)
        if row[RECOVERY_OP_KEY] is not None and row[2] in HOLD_KINDS:
            self._replay_hold_row(row, account)

    def _replay_hold_row(self, row: tuple, owner: Account) -> None:  # type: ignore[type-arg]
        """A hold's primary journal row (``schema.HOLD_JOURNAL_COLUMNS`` first) on the holds loaded."""
        account_id, kind, hold_id = row[1], row[2], row[3]
        if kind == HOLD:
            e.require(self.holds.find(account_id, hold_id) is None, f"journal: hold {hold_id} placed twice")
            hold = Hold.from_row(placed_hold(row[:HOLD_ROW_LENGTH]), owner.id)
            self.holds.put(hold)
            self._unsaved[hold] = False
            self._expiry.add(hold)
            return
        found = self.holds.find(account_id, hold_id)
        if found is None or found.status != HOLD_PENDING:
            raise e.InvariantViolation(f"journal: {kind} of hold {hold_id} not pending")
        if found not in self._unsaved:
            self._unsaved[found] = True  # loaded from the holds table
        found.status, found.captured_amount, found.updated_at = settlement(row)
        self._remember_finished(found)

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
        for frame in self._frames:  # oldest first: its snapshot is the committed state
            if account_id in frame.accounts:
                return frame.accounts[account_id]
        account = self.accounts.get(account_id)
        return None if account is None else account.state()

    def committed_hold(self, account_id: str, hold_id: str) -> tuple | None:  # type: ignore[type-arg]
        key = (account_id, hold_id)
        for frame in self._frames:
            if key in frame.holds:
                return frame.holds[key]
        hold = self.holds.find(account_id, hold_id)
        return None if hold is None else hold.state()

    def knows_hold(self, account_id: str, hold_id: str) -> bool:
        """True if memory holds the hold or a batch in flight created it (no storage read needed)."""
        if self.holds.find(account_id, hold_id) is not None:
            return True
        key = (account_id, hold_id)
        return any(key in frame.holds for frame in self._frames)

    def due_holds(self, now: int, limit: int) -> list[tuple[str, str]]:
        """Pending holds whose expiry has passed, oldest second first (stale entries dropped)."""
        return [(hold.account_id, hold.id) for hold in self._expiry.take_due(now, limit, self._is_live)]

    def _is_live(self, hold: Hold) -> bool:
        return hold.status == HOLD_PENDING and self.holds.find(hold.account_id, hold.id) is hold

    def rearm(self, account_id: str, hold_id: str) -> None:
        """Put a hold taken by ``due_holds`` back on the expiry wheel (it was not expired)."""
        hold = self.holds.find(account_id, hold_id)
        if hold is not None and hold.status == HOLD_PENDING:
            self._expiry.add(hold)

    def lookups_needed(self, command: c.Command) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(op keys, hold keys) that must be read from storage before ``command`` can be applied."""
        if isinstance(command, (c.CaptureHold, c.ReleaseHold)):
            kind = CAPTURE if isinstance(command, c.CaptureHold) else RELEASE
            key = (command.account_id, op_key_of(kind, command.hold_id))
            if command.account_id not in self.accounts:
                return [], []
            if key in self.records:
                self._keep_record(key)
                return [], []
            hold = self.holds.find(command.account_id, command.hold_id)
            if hold is not None and hold.status == HOLD_PENDING:
                return [], []  # a pending hold was never captured or released: nothing to read
            if hold is not None and hold in self._finished:
                self._finished.move_to_end(hold)  # kept, as records are
            return [key], ([] if hold is not None else [(command.account_id, command.hold_id)])
        if isinstance(command, c.PlaceHold):
            key = (command.account_id, op_key_of(HOLD, command.op_id))
            if key in self.records:
                self._keep_record(key)
            elif self.holds.find(command.account_id, command.op_id) is not None:
                return [key], []
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
        self._frames.append(frame)
        self._undo_accounts, self._undo_holds = frame.accounts, frame.holds
        self._new_records, self._changes = frame.records, frame.changes
        self._in_batch = True

    def collect(self, checkpoint: bool = False) -> Changes:
        """Close the open batch: the rows to write, after a cheap check of what it touched.

        With ``checkpoint`` the batch also brings the holds table up to date: every hold
        changed since the last checkpoint is upserted if pending and deleted if finished
        (unless no row of it can be there: placed and finished in between)."""
        e.require(self._in_batch, "collect() outside a batch")
        self._in_batch = False
        changes = self._changes
        changes.accounts = []
        changes.holds = []
        delta: dict[str, int] = {}
        frame = self._frames[-1]
        rewritten, unsaved_accounts = frame.rewritten, self._unsaved_accounts
        for account_id, before in self._undo_accounts.items():
            account = self.accounts[account_id]
            _check_account(account)
            if before is None or account_id in rewritten or account.is_system:
                changes.accounts.append(account)
            else:
                unsaved_accounts.add(account_id)
            old_balance = 0 if before is None else before[7]
            delta[account.currency] = delta.get(account.currency, 0) + account.balance - old_balance
        for currency, moved in delta.items():
            e.require(moved == 0, f"batch created {moved} {currency} out of nothing")
        if checkpoint:
            saved, self._unsaved = self._unsaved, {}
            frame.checkpoint = saved
            for hold, in_table in saved.items():
                if hold.status == HOLD_PENDING:
                    changes.holds.append(hold)
                elif in_table:
                    changes.holds_deleted.append((hold.account_id, hold.id))
            saved_accounts, self._unsaved_accounts = unsaved_accounts, set()
            frame.checkpoint_accounts = saved_accounts
            written = {account.id for account in changes.accounts}
            for account_id in saved_accounts:
                unsaved = self.accounts.get(account_id)  # None: created by a batch since undone
                if unsaved is not None and account_id not in written:
                    changes.accounts.append(unsaved)
            changes.checkpoint_seq = self.next_seq - 1
        return changes

    @property
    def unsaved_holds(self) -> int:
        """Holds changed since the last checkpoint (the engine decides when to write one)."""
        return len(self._unsaved)

    @property
    def unsaved_accounts(self) -> int:
        """Accounts whose row is behind the journal (the next checkpoint writes them)."""
        return len(self._unsaved_accounts)

    def accept(self) -> None:
        """The oldest collected batch is durable: forget its undo information."""
        e.require(bool(self._frames) and (len(self._frames) > 1 or not self._in_batch), "accept() without a batch")
        frame = self._frames.pop(0)
        for key in frame.holds:
            hold = self.holds[key]
            if hold.status != HOLD_PENDING:
                self._remember_finished(hold)

    @property
    def batches_in_flight(self) -> int:
        return len(self._frames)

    def event_seq(self) -> int:
        """A sequence number for an outbox row (shared with the journal: one order per shard)."""
        return self._seq()

    def rollback(self) -> None:
        """No batch in flight was written: put every account, hold, outcome and sequence back."""
        e.require(bool(self._frames), "rollback() without a batch")
        created: list[Hold] = []
        for frame in reversed(self._frames):
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
                    if hold_before[5] == HOLD_PENDING:  # re-arm its expiry (stale entries are skipped)
                        self._expiry.add(hold)
            for key in frame.records:
                self.records.pop(key, None)
            for record, status, body in reversed(frame.restores):
                record.status, record.body = status, body
            self.next_seq = frame.seq_at_begin
            if frame.checkpoint is not None:  # not written: its holds are unsaved again
                for hold, in_table in frame.checkpoint.items():
                    self._unsaved[hold] = in_table or self._unsaved.get(hold, False)
            if frame.checkpoint_accounts is not None:  # ... and its accounts
                self._unsaved_accounts |= frame.checkpoint_accounts
        for hold in created:
            self._unsaved.pop(hold, None)
        self._frames = []
        self._in_batch = False

    # ---- apply ---------------------------------------------------------------------------

    def apply(self, command: c.Command, now: int) -> Outcome:
        e.require(self._in_batch, "apply() outside a batch")
        handler = _HANDLERS[type(command)]
        return handler(self, command, now)  # type: ignore[operator]

    def _create_account(self, cmd: c.CreateAccount, now: int) -> Outcome:
        if cmd.account_id in self.accounts:
            return _reject(e.VALIDATION_ERROR, f"account {cmd.account_id} exists")
        if cmd.parent_id is not None:
            parent = self.accounts.get(cmd.parent_id)
            if parent is None:
                return _reject(e.ACCOUNT_NOT_FOUND, f"parent account {cmd.parent_id} not found")
            if parent.is_system:
                return _reject(e.VALIDATION_ERROR, "a system account cannot have children")
            if parent.status == STATUS_CLOSED:
                return _reject(e.ACCOUNT_INACTIVE, f"parent account {cmd.parent_id} is closed")
        if not 0 <= cmd.credit_limit <= limits.CREDIT_LIMIT_MAX:
            return _reject(e.VALIDATION_ERROR, "credit_limit out of range")
        self._system_account(cmd.currency, KIND_FUNDING, now)
        self._system_account(cmd.currency, KIND_SETTLEMENT, now)
        account = Account(
            cmd.account_id, cmd.parent_id, cmd.kind, cmd.region, cmd.currency, cmd.name,
            STATUS_ACTIVE, 0, 0, cmd.credit_limit, False, 1, now, now, cmd.metadata,
        )  # fmt: skip
        self._undo_accounts[account.id] = None  # created: its row is written with the batch
        self.accounts[account.id] = account
        return Outcome(201, accounts=(account,))

    def _update_account(self, cmd: c.UpdateAccount, now: int) -> Outcome:
        account = self.accounts.get(cmd.account_id)
        if account is None:
            return _reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.account_id} not found")
        if account.is_system:
            return _reject(e.VALIDATION_ERROR, "system accounts cannot be changed")
        if account.status == STATUS_CLOSED:
            return _reject(e.ACCOUNT_INACTIVE, "a closed account cannot be changed")
        if cmd.status == STATUS_CLOSED and (account.balance != 0 or account.reserved != 0):
            return _reject(e.VALIDATION_ERROR, "only an account with zero balance and no pending holds can be closed")
        credit_limit = account.credit_limit if cmd.credit_limit is None else cmd.credit_limit
        if not 0 <= credit_limit <= limits.CREDIT_LIMIT_MAX:
            return _reject(e.VALIDATION_ERROR, "credit_limit out of range")
        if account.balance + credit_limit - account.reserved < 0:
            return _reject(e.VALIDATION_ERROR, "credit_limit is below what the account already uses")
        self._touch(account)
        self._frames[-1].rewritten.add(account.id)  # no journal row says what changed: write the row
        if cmd.status is not None:
            account.status = cmd.status
        if cmd.name is not None:
            account.name = cmd.name
        if cmd.metadata is not None:
            account.metadata = cmd.metadata
        limit_changed = credit_limit != account.credit_limit
        account.credit_limit = credit_limit
        account.version += 1
        account.updated_at = now
        if limit_changed and account.exhausted:  # what it may spend changed: the flag lifts
            account.exhausted = False
            self._changes.events.append(Event("account_replenished", account.id, account.version, now))
        return Outcome(200, accounts=(account,))

    def _create_key(self, cmd: c.CreateKey, now: int) -> Outcome:
        account = self.accounts.get(cmd.account_id)
        if account is None or account.is_system:
            return _reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.account_id} not found")
        self._changes.keys.append((cmd.key_hash, cmd.account_id, now))
        return Outcome(201, accounts=(account,))

    def _credit(self, cmd: c.Credit, now: int) -> Outcome:
        account = self.accounts.get(cmd.account_id)
        if account is None:
            return _reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.account_id} not found")
        key, fingerprint = (account.id, op_key_of(CREDIT, cmd.op_id)), cmd.fingerprint()
        if (early := self._replay(key, fingerprint)) is not None:
            return early
        if account.is_system:
            return _reject(e.VALIDATION_ERROR, "system accounts cannot be credited directly")
        if account.status != STATUS_ACTIVE:
            return self._refuse(key, fingerprint, cmd, account, e.ACCOUNT_INACTIVE, f"account is {account.status}", now)
        funding = self._system_account(account.currency, KIND_FUNDING, now)
        if account.balance + cmd.amount > limits.BALANCE_MAX or funding.balance - cmd.amount < -limits.BALANCE_MAX:
            return _reject(e.VALIDATION_ERROR, "amount would overflow the balance")
        self._move(funding, account, cmd.amount, now)
        entry = self._entries(
            key, fingerprint, CREDIT, cmd.op_id, cmd.amount, account, funding, None, cmd.description, cmd.metadata, now
        )
        return self._accepted(201, key, fingerprint, entry, (account,))

    def _debit(self, cmd: c.Debit, now: int) -> Outcome:
        account = self.accounts.get(cmd.account_id)
        if account is None:
            return _reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.account_id} not found")
        key, fingerprint = (account.id, op_key_of(DEBIT, cmd.op_id)), cmd.fingerprint()
        if (early := self._replay(key, fingerprint)) is not None:
            return early
        if account.is_system:
            return _reject(e.VALIDATION_ERROR, "system accounts cannot be debited directly")
        if account.status != STATUS_ACTIVE:
            return self._refuse(key, fingerprint, cmd, account, e.ACCOUNT_INACTIVE, f"account is {account.status}", now)
        if account.available < cmd.amount:
            return self._insufficient(key, fingerprint, cmd, account, now)
        settlement = self._system_account(account.currency, KIND_SETTLEMENT, now)
        if settlement.balance + cmd.amount > limits.BALANCE_MAX:
            return _reject(e.VALIDATION_ERROR, "amount would overflow the settlement balance")
        self._move(account, settlement, cmd.amount, now)
        entry = self._entries(
            key,
            fingerprint,
            DEBIT,
            cmd.op_id,
            cmd.amount,
            account,
            settlement,
            None,
            cmd.description,
            cmd.metadata,
            now,
        )
        return self._accepted(201, key, fingerprint, entry, (account,))

    def _transfer(self, cmd: c.Transfer, now: int) -> Outcome:
        source = self.accounts.get(cmd.from_account_id)
        if source is None:
            return _reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.from_account_id} not found")
        key, fingerprint = (source.id, op_key_of(TRANSFER, cmd.op_id)), cmd.fingerprint()
        if (early := self._replay(key, fingerprint)) is not None:
            return early
        if cmd.from_account_id == cmd.to_account_id:
            return _reject(e.VALIDATION_ERROR, "from_account_id and to_account_id are the same")
        # By id, before the look-up: a system account created later must not turn a recorded
        # account_not_found into an unrecorded rejection for the same request.
        if source.is_system or is_system_account_id(self.shard, cmd.to_account_id):
            return _reject(e.VALIDATION_ERROR, "system accounts cannot take part in transfers")
        target = self.accounts.get(cmd.to_account_id)
        if target is None:
            return self._refuse(
                key, fingerprint, cmd, source, e.ACCOUNT_NOT_FOUND, f"account {cmd.to_account_id} not found", now
            )
        if cmd.currency != source.currency or cmd.currency != target.currency:
            return self._refuse(
                key,
                fingerprint,
                cmd,
                source,
                e.CURRENCY_MISMATCH,
                f"{cmd.currency} transfer between {source.currency} and {target.currency} accounts",
                now,
            )
        for account in (source, target):
            if account.status != STATUS_ACTIVE:
                return self._refuse(
                    key, fingerprint, cmd, source, e.ACCOUNT_INACTIVE, f"account {account.id} is {account.status}", now
                )
        if source.available < cmd.amount:
            return self._insufficient(key, fingerprint, cmd, source, now)
        if target.balance + cmd.amount > limits.BALANCE_MAX:
            return _reject(e.VALIDATION_ERROR, "amount would overflow the target balance")
        self._move(source, target, cmd.amount, now)
        entry = self._entries(
            key, fingerprint, TRANSFER, cmd.op_id, cmd.amount, source, target, None, cmd.description, cmd.metadata, now
        )
        return self._accepted(201, key, fingerprint, entry, (source, target))

    def _transfer_out(self, cmd: c.TransferOut, now: int) -> Outcome:
        """The source leg of a cross-shard transfer. The service checked the target beforehand."""
        t = cmd.transfer
        source = self.accounts.get(t.from_account_id)
        if source is None:
            return _reject(e.ACCOUNT_NOT_FOUND, f"account {t.from_account_id} not found")
        key, fingerprint = (source.id, op_key_of(TRANSFER, t.op_id)), t.fingerprint()
        if (early := self._replay(key, fingerprint)) is not None:
            return early
        e.require(t.to_account_id not in self.accounts, "TransferOut to an account of this shard")
        if source.is_system:
            return _reject(e.VALIDATION_ERROR, "system accounts cannot take part in transfers")
        if t.currency != source.currency:
            return self._refuse(
                key,
                fingerprint,
                t,
                source,
                e.CURRENCY_MISMATCH,
                f"{t.currency} transfer from a {source.currency} account",
                now,
            )
        if source.status != STATUS_ACTIVE:
            return self._refuse(
                key, fingerprint, t, source, e.ACCOUNT_INACTIVE, f"account {source.id} is {source.status}", now
            )
        if source.available < t.amount:
            return self._insufficient(key, fingerprint, t, source, now)
        transit = self._system_account(source.currency, KIND_TRANSIT, now)
        self._move(source, transit, t.amount, now)
        entry = self._entries(
            key, fingerprint, TRANSFER, t.op_id, t.amount, source, transit, None, t.description, t.metadata, now
        )
        entry.counterparty_account_id = t.to_account_id  # the real counterparty, on its own shard
        self._changes.transfers_started.append(
            (source.id, t.op_id, t.to_account_id, t.amount, t.currency, t.description, t.metadata, now)
        )
        return self._accepted(TRANSFER_IN_PROGRESS, key, fingerprint, entry, (source,))

    def _transfer_in(self, cmd: c.TransferIn, now: int) -> Outcome:
        """The target leg: money leaves this shard's transit account for the target."""
        t = cmd.transfer
        target = self.accounts.get(t.to_account_id)
        e.require(target is not None, f"transfer {t.op_id}: target {t.to_account_id} vanished")
        assert target is not None
        key = (target.id, op_key_of("transfer_in", f"{t.from_account_id}:{t.op_id}"))
        if (early := self._replay(key, t.fingerprint())) is not None:
            return early
        e.require(target.currency == t.currency, f"transfer {t.op_id}: target currency changed")
        transit = self._system_account(t.currency, KIND_TRANSIT, now)
        self._move(transit, target, t.amount, now)
        entry = self._entries(
            key, t.fingerprint(), TRANSFER, t.op_id, t.amount, target, transit, None, t.description, t.metadata, now
        )
        entry.counterparty_account_id = t.from_account_id
        return self._accepted(201, key, t.fingerprint(), entry, (target,))

    def _complete_transfer(self, cmd: c.CompleteTransfer, now: int) -> Outcome:
        key = (cmd.from_account_id, op_key_of(TRANSFER, cmd.op_id))
        record = self.records.get(key)
        if record is not None:
            if record.status != TRANSFER_IN_PROGRESS:
                return Outcome(200)  # completed already
            self._frames[-1].restores.append((record, record.status, record.body))
            record.status, record.body = 201, cmd.body
        self._changes.transfers_completed.append((cmd.body, cmd.from_account_id, cmd.op_id))
        return Outcome(200)

    def _place_hold(self, cmd: c.PlaceHold, now: int) -> Outcome:
        account = self.accounts.get(cmd.account_id)
        if account is None:
            return _reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.account_id} not found")
        key, fingerprint = (account.id, op_key_of(HOLD, cmd.op_id)), cmd.fingerprint()
        if (early := self._replay(key, fingerprint)) is not None:
            return early
        if self.holds.find(account.id, cmd.op_id) is not None:  # its outcome was not found: never place twice
            return _reject(e.IDEMPOTENCY_CONFLICT, f"hold {cmd.op_id} exists")
        if account.is_system:
            return _reject(e.VALIDATION_ERROR, "system accounts cannot hold money")
        if not limits.EXPIRES_IN_S_MIN <= cmd.expires_in_s <= limits.EXPIRES_IN_S_MAX:
            return _reject(e.VALIDATION_ERROR, "expires_in_s out of range")
        # Shape before state: a rejection that is not recorded must not follow one that is, or a
        # re-sent request whose recorded outcome is not in memory (after a restart) would be
        # answered this rejection instead of its first outcome.
        if cmd.destination_account_id == account.id:
            return _reject(e.VALIDATION_ERROR, "destination_account_id is the holding account")
        if cmd.destination_account_id is not None and is_system_account_id(self.shard, cmd.destination_account_id):
            return _reject(e.VALIDATION_ERROR, "a system account cannot be a destination")
        destination = None if cmd.destination_account_id is None else self.accounts.get(cmd.destination_account_id)
        if account.status != STATUS_ACTIVE:
            return self._refuse(key, fingerprint, cmd, account, e.ACCOUNT_INACTIVE, f"account is {account.status}", now)
        if cmd.destination_account_id is not None:
            if destination is None:
                return self._refuse(
                    key,
                    fingerprint,
                    cmd,
                    account,
                    e.ACCOUNT_NOT_FOUND,
                    f"account {cmd.destination_account_id} not found",
                    now,
                )
            if destination.currency != account.currency:
                return self._refuse(
                    key,
                    fingerprint,
                    cmd,
                    account,
                    e.CURRENCY_MISMATCH,
                    f"destination is in {destination.currency}",
                    now,
                )
            if destination.status != STATUS_ACTIVE:
                return self._refuse(
                    key, fingerprint, cmd, account, e.ACCOUNT_INACTIVE, f"destination is {destination.status}", now
                )
        if account.exhausted:
            return self._refuse(key, fingerprint, cmd, account, e.INSUFFICIENT_FUNDS, "account is exhausted", now)
        if account.available < cmd.amount:
            return self._insufficient(key, fingerprint, cmd, account, now)
        self._touch(account)
        account.reserved += cmd.amount
        self._changed(account, now)
        if account.available <= 0:
            account.exhausted = True
            self._changes.events.append(Event("account_exhausted", account.id, account.version, now))
        expires_at = now + cmd.expires_in_s * 1_000_000
        hold = Hold(
            account.id, cmd.op_id, cmd.amount, 0, account.currency, HOLD_PENDING,
            cmd.destination_account_id, expires_at, now, now, cmd.description, cmd.metadata,
        )  # fmt: skip
        self._undo_holds[(account.id, hold.id)] = None
        self.holds.put(hold)
        self._unsaved[hold] = False  # no row of it anywhere but the journal yet
        self._expiry.add(hold)
        entry = self._entries(
            key, fingerprint, HOLD, cmd.op_id, cmd.amount, account, None, hold.id, cmd.description, cmd.metadata, now
        )
        entry.expires_at, entry.destination_account_id = expires_at, cmd.destination_account_id
        outcome = self._accepted(201, key, fingerprint, entry, (account,))
        outcome.hold = hold
        return outcome

    def _settling(
        self, cmd: c.CaptureHold | c.ReleaseHold, kind: str, now: int
    ) -> Outcome | tuple[Account, tuple[str, str], int, Hold]:
        """The checks a capture and a release share: lookups, replay, the hold still pending.

        A hold past its expiry that no sweep has reached yet is expired here, first.
        """
        account = self.accounts.get(cmd.account_id)
        if account is None:
            return _reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.account_id} not found")
        key, fingerprint = (account.id, op_key_of(kind, cmd.hold_id)), cmd.fingerprint()
        if (early := self._replay(key, fingerprint, conflict=e.HOLD_NOT_PENDING)) is not None:
            return early
        hold = self.holds.find(account.id, cmd.hold_id)
        if hold is None:
            return _reject(e.HOLD_NOT_FOUND, f"hold {cmd.hold_id} not found")
        if hold.status == HOLD_PENDING and hold.expires_at <= now:
            self._expire(hold, now)
        if hold.status != HOLD_PENDING:
            return _reject(e.HOLD_NOT_PENDING, f"hold is {hold.status}")
        return account, key, fingerprint, hold

    def _capture_hold(self, cmd: c.CaptureHold, now: int) -> Outcome:
        checked = self._settling(cmd, CAPTURE, now)
        if isinstance(checked, Outcome):
            return checked
        account, key, fingerprint, hold = checked
        amount = hold.amount if cmd.amount is None else cmd.amount
        if amount < limits.AMOUNT_MIN:
            return _reject(e.VALIDATION_ERROR, "amount must be at least 1")
        if amount > hold.amount:
            return _reject(e.AMOUNT_EXCEEDS_HOLD, f"amount {amount} > hold amount {hold.amount}")
        if hold.destination_account_id is None:
            target = self._system_account(account.currency, KIND_SETTLEMENT, now)
        else:
            target = self.accounts[hold.destination_account_id]
            if target.status == STATUS_CLOSED:
                return _reject(e.ACCOUNT_INACTIVE, f"destination {target.id} is closed")
        if target.balance + amount > limits.BALANCE_MAX:
            return _reject(e.VALIDATION_ERROR, "amount would overflow the destination balance")
        self._touch_hold(hold)
        self._touch(account)
        account.reserved -= hold.amount
        hold.status, hold.captured_amount, hold.updated_at = HOLD_CAPTURED, amount, now
        self._move(account, target, amount, now)
        entry = self._entries(
            key, fingerprint, CAPTURE, hold.id, amount, account, target, hold.id, hold.description, hold.metadata, now
        )
        outcome = self._accepted(200, key, fingerprint, entry, (account,))
        outcome.hold = hold
        return outcome

    def _release_hold(self, cmd: c.ReleaseHold, now: int) -> Outcome:
        checked = self._settling(cmd, RELEASE, now)
        if isinstance(checked, Outcome):
            return checked
        account, key, fingerprint, hold = checked
        self._touch_hold(hold)
        self._touch(account)
        account.reserved -= hold.amount
        hold.status, hold.updated_at = HOLD_RELEASED, now
        self._changed(account, now)
        entry = self._entries(
            key,
            fingerprint,
            RELEASE,
            hold.id,
            hold.amount,
            account,
            None,
            hold.id,
            hold.description,
            hold.metadata,
            now,
        )
        outcome = self._accepted(200, key, fingerprint, entry, (account,))
        outcome.hold = hold
        return outcome

    def _expire_hold(self, cmd: c.ExpireHold, now: int) -> Outcome:
        hold = self.holds.find(cmd.account_id, cmd.hold_id)
        if hold is None or hold.status != HOLD_PENDING or hold.expires_at > now:
            return _reject(e.HOLD_NOT_PENDING, "nothing to expire")
        entry = self._expire(hold, now)
        return Outcome(200, entry=entry, accounts=(self.accounts[hold.account_id],), hold=hold)

    # ---- building blocks -----------------------------------------------------------------

    def _expire(self, hold: Hold, now: int) -> Entry:
        account = self.accounts[hold.account_id]
        self._touch_hold(hold)
        self._touch(account)
        account.reserved -= hold.amount
        hold.status, hold.updated_at = HOLD_EXPIRED, now
        self._changed(account, now)
        key = (account.id, op_key_of(EXPIRE, hold.id))
        return self._entries(
            key, 0, EXPIRE, hold.id, hold.amount, account, None, hold.id, hold.description, hold.metadata, now
        )

    def _replay(self, key: tuple[str, str], fingerprint: int, conflict: str = e.IDEMPOTENCY_CONFLICT) -> Outcome | None:
        record = self.records.get(key)
        if record is None:
            return None
        if record.fingerprint == fingerprint:
            return Outcome(record.status, replay=record)
        return _reject(conflict, f"operation {key[1]} was already made with a different body")

    def _insufficient(
        self,
        key: tuple[str, str],
        fingerprint: int,
        cmd: c.Debit | c.Transfer | c.PlaceHold,
        account: Account,
        now: int,
    ) -> Outcome:
        """The recorded refusal of an amount above what the account has available."""
        detail = f"available {account.available} < amount {cmd.amount}"
        return self._refuse(key, fingerprint, cmd, account, e.INSUFFICIENT_FUNDS, detail, now)

    def _refuse(
        self, key: tuple[str, str], fingerprint: int, cmd: c.MoneyCommand,
        account: Account, code: str, detail: str, now: int,
    ) -> Outcome:  # fmt: skip
        """A business refusal that is recorded: replaying the id answers the same refusal.
        Its kind and id are those of the operation key (``op_key_of``)."""
        rejection = e.Rejection(code, detail)
        amount = getattr(cmd, "amount", 0) or 0
        kind, op_id = key[1].split(":", 1)
        entry = Entry(
            self._seq(), account.id, key[1], kind, op_id, rejection.status, code,
            fingerprint, amount, account.currency, None, None, account.balance, account.reserved,
            account.version, now, "", b"{}",
        )  # fmt: skip
        self._changes.entries.append(entry)
        record = Record(fingerprint, rejection.status)
        self._remember_record(key, record)
        self._new_records.append(key)
        return Outcome(rejection.status, rejection=rejection, record=record, entry=entry)

    def _accepted(
        self, status: int, key: tuple[str, str], fingerprint: int, entry: Entry, accounts: tuple[Account, ...]
    ) -> Outcome:
        entry.status = status
        record = Record(fingerprint, status)
        self._remember_record(key, record)
        self._new_records.append(key)
        return Outcome(status, record=record, entry=entry, accounts=accounts)

    def _entries(
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
        self._changes.entries.append(primary)
        if counterparty is not None and not counterparty.is_system:
            self._changes.entries.append(Entry(
                self._seq(), counterparty.id, None, kind, op_id, 200, "", fingerprint, amount,
                counterparty.currency, account.id, hold_id, counterparty.balance,
                counterparty.reserved, counterparty.version, now, description, metadata,
            ))  # fmt: skip
        return primary

    def _move(self, source: Account, target: Account, amount: int, now: int) -> None:
        self._touch(source)
        self._touch(target)
        source.balance -= amount
        target.balance += amount
        self._changed(source, now)
        self._changed(target, now)

    def _changed(self, account: Account, now: int) -> None:
        """Balance or holds changed: a new version, and the exhausted flag lifts."""
        account.version += 1
        account.updated_at = now
        if account.exhausted:
            account.exhausted = False
            self._changes.events.append(Event("account_replenished", account.id, account.version, now))

    def _system_account(self, currency: str, kind: str, now: int) -> Account:
        account_id = system_account_id(self.shard, currency, kind)
        account = self.accounts.get(account_id)
        if account is None:
            account = Account(account_id, None, kind, "SYS", currency, f"{kind} {currency}",
                              STATUS_ACTIVE, 0, 0, 0, False, 1, now, now, b"{}")  # fmt: skip
            self._undo_accounts[account_id] = None
            self.accounts[account_id] = account
        return account

    def _touch(self, account: Account) -> None:
        if account.id not in self._undo_accounts:
            self._undo_accounts[account.id] = account.state()

    def _touch_hold(self, hold: Hold) -> None:
        key = (hold.account_id, hold.id)
        if key not in self._undo_holds:
            self._undo_holds[key] = hold.state()
        if hold not in self._unsaved:  # saved: a pending hold is in the holds table, a finished one not
            self._unsaved[hold] = hold.status == HOLD_PENDING

    def _seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def _remember_record(self, key: tuple[str, str], record: Record) -> None:
        self.records[key] = record
        if len(self.records) > self._records_max:
            self.records.popitem(last=False)  # the oldest; storage still has it

    def _remember_finished(self, hold: Hold) -> None:
        self._finished[hold] = None
        while len(self._finished) > self._finished_max:
            old, _ = self._finished.popitem(last=False)
            if old.status != HOLD_PENDING and self.holds.find(old.account_id, old.id) is old:
                self.holds.remove(old.account_id, old.id)


def _reject(code: str, detail: str) -> Outcome:
    rejection = e.Rejection(code, detail)
    return Outcome(rejection.status, rejection=rejection)


def _check_account(account: Account) -> None:
    """Per-account invariants. The fast test first: messages are only formatted on a failure
    (this runs for every account a batch touches and for every account at recovery)."""
    reserved = account.reserved
    if (
        reserved >= 0
        and -limits.BALANCE_MAX <= account.balance <= limits.BALANCE_MAX
        and (account.is_system or (account.available >= 0 and (reserved == 0 or account.status != STATUS_CLOSED)))
    ):
        return
    _explain_account(account)


def _explain_account(account: Account) -> None:
    e.require(account.reserved >= 0, f"account {account.id}: negative reserved {account.reserved}")
    e.require(abs(account.balance) <= limits.BALANCE_MAX, f"account {account.id}: balance out of range")
    if not account.is_system:
        e.require(account.available >= 0, f"account {account.id}: negative available {account.available}")
        e.require(account.reserved == 0 or account.status != STATUS_CLOSED, "closed account with holds")


_HANDLERS = {
    c.TransferOut: Ledger._transfer_out,
    c.TransferIn: Ledger._transfer_in,
    c.CompleteTransfer: Ledger._complete_transfer,
    c.CreateAccount: Ledger._create_account,
    c.UpdateAccount: Ledger._update_account,
    c.CreateKey: Ledger._create_key,
    c.Credit: Ledger._credit,
    c.Debit: Ledger._debit,
    c.Transfer: Ledger._transfer,
    c.PlaceHold: Ledger._place_hold,
    c.CaptureHold: Ledger._capture_hold,
    c.ReleaseHold: Ledger._release_hold,
    c.ExpireHold: Ledger._expire_hold,
}
