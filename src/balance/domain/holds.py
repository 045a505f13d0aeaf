"""The holds a shard keeps in memory, and how a hold is rebuilt from its journal rows.

Memory: found by (account id, hold id) without a key tuple per hold.

A hold id is unique per account, not per shard, so the natural key is the pair. A dict keyed
by ``(account_id, hold_id)`` tuples costs a 64-byte tuple per hold on top of the hold itself:
at a million pending holds that was a sixth of a hold's memory. Here the dict is keyed by the
hold id alone (a string the hold already holds) and the account id is checked on the hold.
Two accounts using the same hold id share a slot that then holds a list of their holds
(rare: callers choose ids like order numbers).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from balance.domain.model import (
    CAPTURE,
    EMPTY_METADATA,
    EXPIRE,
    HOLD,
    HOLD_CAPTURED,
    HOLD_CAPTURED_AMOUNT,
    HOLD_EXPIRED,
    HOLD_PENDING,
    HOLD_RELEASED,
    HOLD_STATUS,
    HOLD_UPDATED_AT,
    RELEASE,
    Hold,
)
from balance.untrack import tracked

# A settling journal row's kind -> the status it leaves the hold in.
SETTLED_STATUS = {CAPTURE: HOLD_CAPTURED, RELEASE: HOLD_RELEASED, EXPIRE: HOLD_EXPIRED}
HOLD_KINDS = (HOLD, *SETTLED_STATUS)  # the journal kinds of a hold's rows

# What rebuilds a hold from its journal rows, in this order (``schema.HOLD_JOURNAL_COLUMNS``).
# The hold row places a hold; at most one capture, release or expiry row settles it.
HOLD_JOURNAL_FIELDS = (
    "seq", "account_id", "kind", "hold_id", "amount", "currency", "created_at", "description", "metadata",
    "expires_at", "destination_account_id", "placed_by",
)  # fmt: skip
# Positions in those rows, as literal ints (mypyc folds them; tests/unit/test_model_fields.py checks them).
HOLD_JOURNAL_SEQ: Final = 0
HOLD_JOURNAL_ACCOUNT_ID: Final = 1
HOLD_JOURNAL_KIND: Final = 2
HOLD_JOURNAL_HOLD_ID: Final = 3
HOLD_JOURNAL_AMOUNT: Final = 4
HOLD_JOURNAL_CREATED_AT: Final = 6
HOLD_JOURNAL_EXPIRES_AT: Final = 9


def placed_hold(row: tuple) -> tuple:  # type: ignore[type-arg]
    """The state (``HOLD_FIELDS``) a hold's journal row placed it in: pending."""
    (_, account_id, _, hold_id, amount, currency, created_at, description, metadata, expires_at, destination,
     placed_by) = row  # fmt: skip
    return (
        account_id, hold_id, amount, 0, currency, HOLD_PENDING, destination, expires_at, created_at, created_at,
        description if description else "", EMPTY_METADATA if metadata == EMPTY_METADATA else bytes(metadata),
        placed_by,
    )  # fmt: skip


def settlement(row: tuple) -> tuple[str, int, int]:  # type: ignore[type-arg]
    """(status, captured_amount, updated_at) a capture, release or expiry row leaves its hold with."""
    kind = row[HOLD_JOURNAL_KIND]
    return SETTLED_STATUS[kind], row[HOLD_JOURNAL_AMOUNT] if kind == CAPTURE else 0, row[HOLD_JOURNAL_CREATED_AT]


def hold_from_journal(rows: list[tuple]) -> tuple | None:  # type: ignore[type-arg]
    """A hold's state (``HOLD_FIELDS``) from its accepted primary journal rows, oldest first.
    None if no hold row is among them (or it predates the ``expires_at`` column)."""
    placed = next((row for row in rows if row[HOLD_JOURNAL_KIND] == HOLD), None)
    if placed is None or placed[HOLD_JOURNAL_EXPIRES_AT] is None:
        return None
    state = placed_hold(placed)
    settled = next(
        (
            row
            for row in rows
            if row[HOLD_JOURNAL_KIND] in SETTLED_STATUS and row[HOLD_JOURNAL_SEQ] > placed[HOLD_JOURNAL_SEQ]
        ),
        None,
    )
    if settled is None:
        return state
    status, captured, updated_at = settlement(settled)
    fields = list(state)
    fields[HOLD_CAPTURED_AMOUNT], fields[HOLD_STATUS], fields[HOLD_UPDATED_AT] = captured, status, updated_at
    return tuple(fields)


def placed_before_expiries(rows: list[tuple]) -> bool:  # type: ignore[type-arg]
    """Was the hold of these journal rows placed by an earlier version (its placement row has no
    expiry column)? Only such a hold is read from the holds table by (account, id): the table is
    keyed by expiry first, so that read scans it. Any other hold the journal cannot rebuild (one
    that arrived with a partner move and settled here, an id nothing knows) is not looked for."""
    return any(row[HOLD_JOURNAL_KIND] == HOLD and row[HOLD_JOURNAL_EXPIRES_AT] is None for row in rows)


class HoldIndex:
    """A mapping ``(account_id, hold_id) -> Hold`` storing one dict slot per distinct hold id."""

    __slots__ = ("_by_id", "_count")

    def __init__(self) -> None:
        # Tracked from the start: recovery's gc.freeze() then takes it out of every later
        # collection (``balance.untrack.tracked``), however many holds come into it.
        self._by_id: dict[str, Hold | list[Hold]] = tracked({})
        self._count = 0

    def find(self, account_id: str, hold_id: str) -> Hold | None:
        found = self._by_id.get(hold_id)
        if found is None:
            return None
        if isinstance(found, Hold):
            return found if found.account_id == account_id else None
        for hold in found:
            if hold.account_id == account_id:
                return hold
        return None

    def put(self, hold: Hold) -> None:
        """Add ``hold``, or replace the one with the same account and id."""
        found = self._by_id.get(hold.id)
        if found is None:
            self._by_id[hold.id] = hold
        elif isinstance(found, Hold):
            if found.account_id == hold.account_id:
                self._by_id[hold.id] = hold
                return
            self._by_id[hold.id] = [found, hold]
        else:
            for i, other in enumerate(found):
                if other.account_id == hold.account_id:
                    found[i] = hold
                    return
            found.append(hold)
        self._count += 1

    def remove(self, account_id: str, hold_id: str) -> None:
        """Forget the hold; a missing one is a bug in the caller (KeyError)."""
        found = self._by_id.get(hold_id)
        if isinstance(found, Hold) and found.account_id == account_id:
            del self._by_id[hold_id]
            self._count -= 1
            return
        if isinstance(found, list):
            for i, other in enumerate(found):
                if other.account_id == account_id:
                    del found[i]
                    if len(found) == 1:
                        self._by_id[hold_id] = found[0]
                    self._count -= 1
                    return
        raise KeyError((account_id, hold_id))

    def __len__(self) -> int:
        return self._count

    def values(self) -> Iterator[Hold]:
        for found in self._by_id.values():
            if isinstance(found, Hold):
                yield found
            else:
                yield from found

    def items(self) -> Iterator[tuple[tuple[str, str], Hold]]:
        for hold in self.values():
            yield (hold.account_id, hold.id), hold

    # The mapping protocol over (account_id, hold_id) pairs: the undo frames' keys, tests, audits.

    def get(self, key: tuple[str, str]) -> Hold | None:
        return self.find(key[0], key[1])

    def __contains__(self, key: tuple[str, str]) -> bool:
        return self.find(key[0], key[1]) is not None

    def __getitem__(self, key: tuple[str, str]) -> Hold:
        hold = self.find(key[0], key[1])
        if hold is None:
            raise KeyError(key)
        return hold

    def __setitem__(self, key: tuple[str, str], hold: Hold) -> None:
        if key != (hold.account_id, hold.id):
            raise KeyError(f"{key} is not the key of hold {(hold.account_id, hold.id)}")
        self.put(hold)

    def __delitem__(self, key: tuple[str, str]) -> None:
        self.remove(key[0], key[1])
