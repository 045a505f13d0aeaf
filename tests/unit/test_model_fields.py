"""The named positions in state tuples and rows are literal ints (mypyc folds them): each must
stay the index of the field it names."""

from __future__ import annotations

import pytest

from balance.domain import holds, model
from balance.storage import schema

POSITIONS = [
    (model.ACCOUNT_ID, model.ACCOUNT_FIELDS, "id"),
    (model.ACCOUNT_REGION, model.ACCOUNT_FIELDS, "region"),
    (model.ACCOUNT_CURRENCY, model.ACCOUNT_FIELDS, "currency"),
    (model.ACCOUNT_STATUS, model.ACCOUNT_FIELDS, "status"),
    (model.ACCOUNT_BALANCE, model.ACCOUNT_FIELDS, "balance"),
    (model.ACCOUNT_EXHAUSTED, model.ACCOUNT_FIELDS, "exhausted"),
    (model.HOLD_ACCOUNT_ID, model.HOLD_FIELDS, "account_id"),
    (model.HOLD_ID, model.HOLD_FIELDS, "id"),
    (model.HOLD_AMOUNT, model.HOLD_FIELDS, "amount"),
    (model.HOLD_CAPTURED_AMOUNT, model.HOLD_FIELDS, "captured_amount"),
    (model.HOLD_STATUS, model.HOLD_FIELDS, "status"),
    (model.HOLD_CURRENCY, model.HOLD_FIELDS, "currency"),
    (model.HOLD_DESTINATION, model.HOLD_FIELDS, "destination_account_id"),
    (model.HOLD_DESCRIPTION, model.HOLD_FIELDS, "description"),
    (model.HOLD_METADATA, model.HOLD_FIELDS, "metadata"),
    (model.HOLD_EXPIRES_AT, model.HOLD_FIELDS, "expires_at"),
    (model.HOLD_UPDATED_AT, model.HOLD_FIELDS, "updated_at"),
    (model.JOURNAL_SEQ, schema.JOURNAL_COLUMNS, "seq"),
    (holds.HOLD_JOURNAL_SEQ, holds.HOLD_JOURNAL_FIELDS, "seq"),
    (holds.HOLD_JOURNAL_ACCOUNT_ID, holds.HOLD_JOURNAL_FIELDS, "account_id"),
    (holds.HOLD_JOURNAL_KIND, holds.HOLD_JOURNAL_FIELDS, "kind"),
    (holds.HOLD_JOURNAL_HOLD_ID, holds.HOLD_JOURNAL_FIELDS, "hold_id"),
    (holds.HOLD_JOURNAL_AMOUNT, holds.HOLD_JOURNAL_FIELDS, "amount"),
    (holds.HOLD_JOURNAL_CREATED_AT, holds.HOLD_JOURNAL_FIELDS, "created_at"),
    (holds.HOLD_JOURNAL_EXPIRES_AT, holds.HOLD_JOURNAL_FIELDS, "expires_at"),
]


@pytest.mark.parametrize(("position", "fields", "name"), POSITIONS, ids=[f"{p[1][0]}-{p[2]}" for p in POSITIONS])
def test_each_named_position_is_the_index_of_its_field(position: int, fields: tuple[str, ...], name: str) -> None:
    assert fields[position] == name


def test_the_state_tuples_follow_the_field_orders() -> None:
    account = model.Account("A", None, "user", "EU", "EUR", "A", "active", 7, 3, 0, True, 2, 10, 11, b"{}")
    hold = model.Hold("A", "h1", 5, 2, "EUR", "captured", None, 99, 10, 12, "", b"{}")
    for thing, fields in ((account, model.ACCOUNT_FIELDS), (hold, model.HOLD_FIELDS)):
        assert thing.state() == tuple(getattr(thing, name) for name in fields)
