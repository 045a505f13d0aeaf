"""An account and a hold as a journal row leaves them, in their public shapes (``views``).

A money operation's journal row carries what it changed of its account (balance, reserved,
version, time); the rest (name, status, limit, metadata...) changes only by an account update,
which the outbox records with the account before and after it. So the account after any row
is the row's fields on top of the account's other fields as they stood at that seq.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Final

from balance import views
from balance.domain.holds import SETTLED_STATUS, placed_hold
from balance.domain.model import CAPTURE, HOLD
from balance.storage.schema import JOURNAL_COLUMNS

JOURNAL_FIELDS = JOURNAL_COLUMNS  # a journal row's order (``Entry.row()``)
SEQ: Final = 0
ACCOUNT_ID: Final = 1
OP_KEY: Final = 2
KIND: Final = 3
CODE: Final = 6
AMOUNT: Final = 8
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


_ACCOUNT_TAIL = (
    b',"balance":%d,"reserved":%d,"available":%d,"credit_limit":%d,"exhausted":%b,"version":%d,'
    b'"created_at":%b,"updated_at":"%b","metadata":%b}'
)


class AccountHead:
    """What an account's JSON after any journal row takes from ``static`` (as ``account_at``),
    encoded once: the row adds its balance, reserved, flag, version and time (``render``)."""

    __slots__ = ("account_id", "head", "credit_limit", "created_at", "metadata", "region", "region_json", "id_json")

    def __init__(self, account_id: str, static: dict[str, Any]) -> None:
        encode = views.encoder.encode
        self.account_id = account_id
        self.head = b'{"id":%b,"parent_id":%b,"kind":%b,"region":%b,"currency":%b,"name":%b,"status":%b' % tuple(
            encode(static.get(key)) for key in ACCOUNT_KEYS[:7]
        )
        self.credit_limit: int = static.get("credit_limit")  # type: ignore[assignment]
        self.created_at = encode(static.get("created_at"))
        self.metadata = encode(static.get("metadata"))
        self.region: str = static.get("region") or account_id.partition("-")[0]
        self.region_json = encode(self.region)
        self.id_json = encode(account_id)

    def render(self, row: tuple) -> bytes:  # type: ignore[type-arg]
        """``encoder.encode(account_at(static, row))``."""
        balance, reserved, credit_limit = row[BALANCE_AFTER], row[RESERVED_AFTER], self.credit_limit
        available = balance + credit_limit - reserved
        exhausted = row[KIND] == HOLD and row[OP_KEY] is not None and available <= 0
        return self.head + _ACCOUNT_TAIL % (
            balance, reserved, available, credit_limit, b"true" if exhausted else b"false", row[VERSION],
            self.created_at, views.stamp_bytes(row[CREATED_AT]), self.metadata,
        )  # fmt: skip


_hold_journal_fields = itemgetter(*_HOLD_JOURNAL_POSITIONS)


def hold_journal_row(row: tuple) -> tuple:  # type: ignore[type-arg]
    """A journal row as ``holds.HOLD_JOURNAL_FIELDS``."""
    fields: tuple = _hold_journal_fields(row)  # type: ignore[type-arg]
    return fields


def hold_state_after(placement: tuple, row: tuple) -> tuple:  # type: ignore[type-arg]
    """The hold's state (``HOLD_FIELDS``) right after ``row``: its placement (``row`` itself, or
    the hold row that placed it) and, for a capture, release or expiry, how it settled."""
    state = placed_hold(hold_journal_row(placement))
    if row[KIND] == HOLD:
        return state
    kind = row[KIND]  # ``settlement`` of the row, read from it directly
    status, captured, updated_at = SETTLED_STATUS[kind], row[AMOUNT] if kind == CAPTURE else 0, row[CREATED_AT]
    return (*state[:3], captured, state[4], status, *state[6:9], updated_at, *state[10:])


def hold_after(placement: tuple, row: tuple) -> dict[str, Any]:  # type: ignore[type-arg]
    """The hold (``views.hold_view`` shape) right after ``row`` (``hold_state_after``)."""
    return views.hold_view(hold_state_after(placement, row))
