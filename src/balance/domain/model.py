"""Accounts, holds and journal entries: the state a shard writer keeps in memory.

Amounts are ``int`` minor units, times are ``int`` microseconds since the epoch.
Classes use ``__slots__`` because a shard keeps millions of them. Accounts and holds hold
only atomic values (str, int, bytes, None, tuples of them) and are untracked by the cyclic
GC when made (``balance.untrack``): a collection does not walk the millions a shard keeps.
Keep it so: a field holding a list, a dict or another object would need them tracked again.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Final

from balance.untrack import untrack

KINDS_USER = ("partner", "provider", "user")
KIND_FUNDING = "funding"
KIND_SETTLEMENT = "settlement"
KIND_TRANSIT = "transit"  # money between the two legs of a transfer across shards
KINDS_SYSTEM = (KIND_FUNDING, KIND_SETTLEMENT, KIND_TRANSIT)
REGIONS = ("US", "EU", "ASIA")
STATUS_ACTIVE = "active"
STATUS_FROZEN = "frozen"
STATUS_CLOSED = "closed"
ACCOUNT_STATUSES = (STATUS_ACTIVE, STATUS_FROZEN, STATUS_CLOSED)
# Not a status a client can set: the account was moved to another shard (``domain.moves``); its
# row stays here (balance 0, its history in the journal), its requests go to the new shard.
STATUS_MOVED = "moved"

HOLD_PENDING = "pending"
HOLD_CAPTURED = "captured"
HOLD_RELEASED = "released"
HOLD_EXPIRED = "expired"
HOLD_MOVED = "moved"  # moved with its account to another shard, pending there

# Journal kinds (the Txn ``kind`` of the API).
CREDIT = "credit"
DEBIT = "debit"
TRANSFER = "transfer"
HOLD = "hold"
CAPTURE = "capture"
RELEASE = "release"
EXPIRE = "expire"
OPEN = "open"  # an account created under a client id: its first answer (not listed in the history)
# A partner move (``domain.moves``): an account or a hold leaving or arriving, and an operation
# id's first answer carried to the new shard. Not listed in the history, not published.
MOVE_OUT = "move_out"
MOVE_IN = "move_in"
MOVE_RECORD = "move_record"
MOVE_KINDS = (MOVE_OUT, MOVE_IN, MOVE_RECORD)


_SHARED: dict[object, object] = {}


def principal(value: str) -> str:
    """The one copy of a principal's id (an account id or "admin"): holds and accounts that
    name it share it, so recording who placed a hold costs a pointer per hold."""
    return sys.intern(value)


def shared(value: object) -> object:
    """One object for a value repeated across millions of rows (kind, currency, status, ...).

    Only for low-cardinality fields: the table grows with the number of distinct values.
    """
    return _SHARED.setdefault(value, value)


EMPTY_METADATA = b"{}"

# Field orders: the state tuples and the storage rows (the hold folds three into one slot).
ACCOUNT_FIELDS = (
    "id", "parent_id", "kind", "region", "currency", "name", "status",
    "balance", "reserved", "credit_limit", "exhausted", "version",
    "created_at", "updated_at", "metadata", "frozen_by",
)  # fmt: skip
HOLD_FIELDS = (
    "account_id", "id", "amount", "captured_amount", "currency", "status",
    "destination_account_id", "expires_at", "created_at", "updated_at",
    "description", "metadata", "placed_by",
)  # fmt: skip
# Positions of fields in those tuples, as literal ints: mypyc folds a Final int into the code
# that indexes with it (tests/unit/test_model_fields.py checks each against the names above).
ACCOUNT_ID: Final = 0
ACCOUNT_REGION: Final = 3
ACCOUNT_CURRENCY: Final = 4
ACCOUNT_STATUS: Final = 6
ACCOUNT_BALANCE: Final = 7
ACCOUNT_EXHAUSTED: Final = 10
HOLD_ACCOUNT_ID: Final = 0
HOLD_ID: Final = 1
HOLD_AMOUNT: Final = 2
HOLD_CAPTURED_AMOUNT: Final = 3
HOLD_STATUS: Final = 5
HOLD_EXPIRES_AT: Final = 7
HOLD_UPDATED_AT: Final = 9
ACCOUNT_FROZEN_BY: Final = 15
HOLD_PLACED_BY: Final = 12
HOLD_CURRENCY: Final = 4
HOLD_DESTINATION: Final = 6
HOLD_DESCRIPTION: Final = 10
HOLD_METADATA: Final = 11
JOURNAL_SEQ: Final = 0  # in a journal row (``Entry.row()``, ``schema.JOURNAL_COLUMNS``)
JOURNAL_CREATED_AT: Final = 15  # in a journal row, as above


class Account:
    """One balance. ``available = balance + credit_limit - reserved``.

    ``frozen_by``: the principal (an account id or ``"admin"``) that froze it, so that only it,
    its ancestors or the admin lift the freeze; None when not frozen."""

    __slots__ = (
        "id", "parent_id", "kind", "region", "currency", "name", "status",
        "balance", "reserved", "credit_limit", "exhausted", "version",
        "created_at", "updated_at", "metadata", "frozen_by",
    )  # fmt: skip

    def __init__(
        self, id: str, parent_id: str | None, kind: str, region: str, currency: str, name: str,
        status: str, balance: int, reserved: int, credit_limit: int, exhausted: bool,
        version: int, created_at: int, updated_at: int, metadata: bytes, frozen_by: str | None = None,
    ) -> None:  # fmt: skip
        self.id = id
        self.parent_id = parent_id
        self.kind = kind
        self.region = region
        self.currency = currency
        self.name = name
        self.status = status
        self.balance = balance
        self.reserved = reserved
        self.credit_limit = credit_limit
        self.exhausted = exhausted
        self.version = version
        self.created_at = created_at
        self.updated_at = updated_at
        self.metadata = metadata
        self.frozen_by = frozen_by
        untrack(self)  # atomic fields only: no cycle through it (balance.untrack)

    @property
    def available(self) -> int:
        return self.balance + self.credit_limit - self.reserved

    @property
    def is_system(self) -> bool:
        return self.kind in KINDS_SYSTEM

    def state(self) -> tuple:  # type: ignore[type-arg]
        """All fields as a tuple: the row written to storage and the undo snapshot."""
        return (
            self.id, self.parent_id, self.kind, self.region, self.currency, self.name, self.status,
            self.balance, self.reserved, self.credit_limit, self.exhausted, self.version,
            self.created_at, self.updated_at, self.metadata, self.frozen_by,
        )  # fmt: skip

    def restore(self, state: tuple) -> None:  # type: ignore[type-arg]
        for name, value in zip(ACCOUNT_FIELDS, state, strict=True):
            setattr(self, name, value)

    @classmethod
    def from_row(cls, row: tuple) -> Account:  # type: ignore[type-arg]
        """A stored row, with repeated values shared (recovery of millions of accounts)."""
        (id_, parent_id, kind, region, currency, name, status, balance, reserved, credit_limit,
         exhausted, version, created_at, updated_at, metadata, frozen_by) = row  # fmt: skip
        share = _SHARED.setdefault  # bound once: this runs millions of times at recovery
        return cls(
            id_, parent_id, share(kind, kind), share(region, region), share(currency, currency),  # type: ignore[arg-type]
            name if name else "", share(status, status),  # type: ignore[arg-type]
            balance if type(balance) is int else int(balance),  # MariaDB's DECIMAL(39,0) column: a Decimal
            reserved, credit_limit,
            bool(exhausted), version, created_at,
            created_at if updated_at == created_at else updated_at,
            EMPTY_METADATA if metadata == EMPTY_METADATA else bytes(metadata),
            None if frozen_by is None else principal(frozen_by),
        )  # fmt: skip


class Hold:
    """Money set aside on ``account_id`` until captured, released or expired.

    The three fields a hold seldom has (a destination, a description, metadata) and never
    changes share one slot, ``None`` when all are defaults: 24 bytes less per hold, which
    counts at millions of pending holds.

    ``placed_by``: the principal whose key placed it (an account id or ``"admin"``; None for a
    hold placed before it was recorded). Interned: one string per principal, not per hold.
    """

    __slots__ = (
        "account_id", "id", "amount", "captured_amount", "currency", "status",
        "expires_at", "created_at", "updated_at", "_details", "placed_by",
    )  # fmt: skip

    def __init__(
        self, account_id: str, id: str, amount: int, captured_amount: int, currency: str,
        status: str, destination_account_id: str | None, expires_at: int, created_at: int,
        updated_at: int, description: str, metadata: bytes, placed_by: str | None = None,
    ) -> None:  # fmt: skip
        self.account_id = account_id
        self.id = id
        self.amount = amount
        self.captured_amount = captured_amount
        self.currency = currency
        self.status = status
        self.expires_at = expires_at
        self.created_at = created_at
        self.updated_at = updated_at
        self._details: tuple[str | None, str, bytes] | None = (
            None
            if destination_account_id is None and not description and metadata == EMPTY_METADATA
            else (destination_account_id, description, metadata)
        )
        self.placed_by = None if placed_by is None else principal(placed_by)
        untrack(self)  # atomic fields only (``_details``: a tuple of them): balance.untrack

    @property
    def destination_account_id(self) -> str | None:
        return None if self._details is None else self._details[0]

    @property
    def description(self) -> str:
        return "" if self._details is None else self._details[1]

    @property
    def metadata(self) -> bytes:
        return EMPTY_METADATA if self._details is None else self._details[2]

    def state(self) -> tuple:  # type: ignore[type-arg]
        """All fields in ``HOLD_FIELDS`` order: the row written to storage and the undo snapshot."""
        destination, description, metadata = (None, "", EMPTY_METADATA) if self._details is None else self._details
        return (
            self.account_id, self.id, self.amount, self.captured_amount, self.currency, self.status,
            destination, self.expires_at, self.created_at, self.updated_at, description, metadata,
            self.placed_by,
        )  # fmt: skip

    def restore(self, state: tuple) -> None:  # type: ignore[type-arg]
        """Undo: only the fields a capture, release or expiry change (the rest never change)."""
        self.amount, self.captured_amount = state[HOLD_AMOUNT], state[HOLD_CAPTURED_AMOUNT]
        self.status, self.expires_at, self.updated_at = (
            state[HOLD_STATUS],
            state[HOLD_EXPIRES_AT],
            state[HOLD_UPDATED_AT],
        )

    @classmethod
    def from_row(cls, row: tuple, account_id: str | None = None) -> Hold:  # type: ignore[type-arg]
        """A stored row, sharing the account's id object and repeated values."""
        (row_account_id, id_, amount, captured, currency, status, destination, expires_at, created_at,
         updated_at, description, metadata, placed_by) = row  # fmt: skip
        share = _SHARED.setdefault
        return cls(
            account_id if account_id == row_account_id else row_account_id, id_, amount, captured,  # type: ignore[arg-type]
            share(currency, currency), share(status, status), destination, expires_at, created_at,  # type: ignore[arg-type]
            created_at if updated_at == created_at else updated_at, description if description else "",
            EMPTY_METADATA if metadata == EMPTY_METADATA else bytes(metadata), placed_by,
        )  # fmt: skip


class Entry:
    """One journal row: one leg of an accepted operation on one account, or a recorded rejection.

    ``op_key`` is set on the operation's primary row only; it is unique per account and
    is what makes a replay return the first outcome, also after a restart.
    ``status`` is the HTTP status of the outcome; ``result`` the encoded answer (primary rows).
    A hold's row also carries its ``expires_at`` and ``destination_account_id``: with the
    capture, release or expiry row after it, the journal alone rebuilds the hold (the holds
    table is only a checkpoint of the pending ones; ``HoldIndex`` and the ledger explain).
    A plain class (one per operation): its compiled ``__init__`` is cheaper than a dataclass's.
    """

    __slots__ = (
        "seq", "account_id", "op_key", "kind", "op_id", "status", "code", "fingerprint", "amount",
        "currency", "counterparty_account_id", "hold_id", "balance_after", "reserved_after",
        "version", "created_at", "description", "metadata", "result", "expires_at", "destination_account_id",
        "placed_by",
    )  # fmt: skip

    def __init__(
        self, seq: int, account_id: str, op_key: str | None, kind: str, op_id: str, status: int, code: str,
        fingerprint: int, amount: int, currency: str, counterparty_account_id: str | None, hold_id: str | None,
        balance_after: int, reserved_after: int, version: int, created_at: int, description: str,
        metadata: bytes, result: bytes = b"", expires_at: int | None = None,
        destination_account_id: str | None = None, placed_by: str | None = None,
    ) -> None:  # fmt: skip
        self.seq = seq
        self.account_id = account_id
        self.op_key = op_key
        self.kind = kind
        self.op_id = op_id
        self.status = status
        self.code = code
        self.fingerprint = fingerprint
        self.amount = amount
        self.currency = currency
        self.counterparty_account_id = counterparty_account_id
        self.hold_id = hold_id
        self.balance_after = balance_after
        self.reserved_after = reserved_after
        self.version = version
        self.created_at = created_at
        self.description = description
        self.metadata = metadata
        self.result = result
        self.expires_at = expires_at
        self.destination_account_id = destination_account_id
        self.placed_by = placed_by  # a hold row: who placed it (``Hold.placed_by``)

    def row(self) -> tuple:  # type: ignore[type-arg]
        return (
            self.seq, self.account_id, self.op_key, self.kind, self.op_id, self.status,
            self.code, self.fingerprint, self.amount, self.currency,
            self.counterparty_account_id, self.hold_id, self.balance_after,
            self.reserved_after, self.version, self.created_at, self.description,
            self.metadata, self.result, self.expires_at, self.destination_account_id, self.placed_by,
        )  # fmt: skip


# Outbox event kinds (``Event.kind``).
EVENT_ACCOUNT_CREATED = "account_created"
EVENT_ACCOUNT_UPDATED = "account_updated"
EVENT_ACCOUNT_EXHAUSTED = "account_exhausted"
EVENT_ACCOUNT_REPLENISHED = "account_replenished"
EVENT_HOLD_RESULT_CONFLICT = "hold_result_conflict"  # a payment succeeded for a hold already expired or released


@dataclass(frozen=True, slots=True)
class Event:
    """A fact about an account that no journal row holds, written to the outbox in the same
    commit (what the journal holds, the event relay reads from the journal itself).

    ``state`` is the account as the operation left it (``Account.state()``), ``previous`` as it
    found it (an update only): the relay needs no other read to publish the whole account."""

    kind: str  # EVENT_ACCOUNT_CREATED | _UPDATED | _EXHAUSTED | _REPLENISHED | EVENT_HOLD_RESULT_CONFLICT
    account_id: str
    version: int
    created_at: int
    state: tuple | None = None  # type: ignore[type-arg]
    previous: tuple | None = None  # type: ignore[type-arg]
    hold: tuple | None = None  # type: ignore[type-arg]  # a result conflict: the hold as it stands (``Hold.state()``)
    result: tuple[tuple[str, object], ...] | None = None  # a result conflict: the payment result, as pairs
