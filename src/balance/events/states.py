"""An account and a hold as a journal row leaves them, in their public shapes (``views``).

A money operation's journal row carries what it changed of its account (balance, reserved,
version, time); the rest (name, status, limit, metadata...) changes only by an account update,
which the outbox records with the account before and after it. So the account after any row
is the row's fields on top of the account's other fields as they stood at that seq.
"""

from __future__ import annotations

from typing import Any, Final

from balance import views
from balance.domain.holds import placed_hold, settlement
from balance.domain.model import HOLD
from balance.storage.schema import JOURNAL_COLUMNS

JOURNAL_FIELDS = JOURNAL_COLUMNS  # a journal row's order (``Entry.row()``)
SEQ: Final = 0
ACCOUNT_ID: Final = 1
OP_KEY: Final = 2
KIND: Final = 3
CODE: Final = 6
HOLD_ID: Final = 11
BALANCE_AFTER: Final = 12
RESERVED_AFTER: Final = 13
VERSION: Final = 14
CREATED_AT: Final = 15
ACCOUNT_KEYS = (
    "id", "parent_id", "kind", "region", "currency", "name", "status", "balance", "reserved", "available",
    "credit_limit", "exhausted", "version", "created_at", "updated_at", "metadata",
)  # fmt: skip
# A journal row's fields in ``holds.HOLD_JOURNAL_FIELDS`` order (what rebuilds a hold).
_HOLD_JOURNAL_POSITIONS = tuple(
    JOURNAL_FIELDS.index(name)
    for name in (
        "seq", "account_id", "kind", "hold_id", "amount", "currency", "created_at", "description", "metadata",
        "expires_at", "destination_account_id", "placed_by",
    )
)  # fmt: skip


def account_at(static: dict[str, Any], row: tuple) -> dict[str, Any]:  # type: ignore[type-arg]
    """The account (``views.account_view`` shape) right after journal ``row``: ``static`` gives
    what the row does not carry. Exhausted only after a hold that left nothing available (every
    other change lifts the flag: ``Ledger.changed``)."""
    account = {key: static.get(key) for key in ACCOUNT_KEYS}  # the API's order (``views.account_view``)
    balance, reserved = row[BALANCE_AFTER], row[RESERVED_AFTER]
    available = balance + account["credit_limit"] - reserved
    account["balance"], account["reserved"], account["available"] = balance, reserved, available
    account["exhausted"] = row[KIND] == HOLD and row[OP_KEY] is not None and available <= 0
    account["version"], account["updated_at"] = row[VERSION], views.timestamp(row[CREATED_AT])
    return account


def hold_journal_row(row: tuple) -> tuple:  # type: ignore[type-arg]
    """A journal row as ``holds.HOLD_JOURNAL_FIELDS``."""
    return tuple(row[position] for position in _HOLD_JOURNAL_POSITIONS)


def hold_after(placement: tuple, row: tuple) -> dict[str, Any]:  # type: ignore[type-arg]
    """The hold (``views.hold_view`` shape) right after ``row``: its placement (``row`` itself,
    or the hold row that placed it) and, for a capture, release or expiry, how it settled."""
    state = list(placed_hold(hold_journal_row(placement)))
    if row[KIND] != HOLD:
        state[5], state[3], state[9] = settlement(hold_journal_row(row))  # status, captured_amount, updated_at
    return views.hold_view(tuple(state))
