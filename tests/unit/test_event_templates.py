"""The relay's envelopes rendered from byte templates are byte for byte what msgspec makes of
the dict shapes (``account_at``, ``views.txn_view``, ``views.hold_view``)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from balance import views
from balance.domain.model import CAPTURE, CREDIT, HOLD, RELEASE
from balance.events.states import AccountHead, account_at, hold_after, hold_state_after

T0 = 1_780_000_000_123_456


def journal_row(seq: int, kind: str, op_key: str | None, **fields: Any) -> tuple[Any, ...]:
    row: dict[str, Any] = {
        "seq": seq, "account_id": "EU-0-aaaa", "op_key": op_key, "kind": kind, "op_id": f"op-{seq}", "status": 201,
        "code": "", "fingerprint": b"", "amount": 400, "currency": "EUR", "counterparty_account_id": None,
        "hold_id": "order-1", "balance_after": 10_000, "reserved_after": 400, "version": seq, "created_at": T0 + seq,
        "description": 'a "quoted" description \u00e9', "metadata": b'{"k":[1,2]}', "result": b"{}",
        "expires_at": T0 + 900_000_000, "destination_account_id": None, "placed_by": None,
    }  # fmt: skip
    row.update(fields)
    from balance.storage.schema import JOURNAL_COLUMNS

    return tuple(row[name] for name in JOURNAL_COLUMNS)


STATICS = [
    views.account_view(
        ("EU-0-aaaa", None, "user", "EU", "EUR", 'Ann "A"', "active", 0, 0, 50, False, 1, T0, T0, b'{"tier":1}')
    ),
    {"id": "EU-0-aaaa", "region": "EU", "credit_limit": 0},  # an account not stored: what is known
    # decoded from an outbox row's "previous": metadata as a dict, no money fields
    msgspec.json.decode(
        b'{"id":"EU-0-aaaa","parent_id":"EU-0-pppp","kind":"partner","region":"EU","currency":"EUR",'
        b'"name":"n","status":"frozen","credit_limit":7,"created_at":"2026-01-01T00:00:00.000000Z",'
        b'"metadata":{"b":{"c":null},"a":"\\u2028"}}'
    ),
]
ROWS = [
    journal_row(5, HOLD, "h:order-1"),
    journal_row(6, HOLD, "h:order-2", balance_after=400, reserved_after=400),  # nothing left: exhausted
    journal_row(7, CAPTURE, "c:order-1", amount=250, description=None),
    journal_row(8, RELEASE, "r:order-1", metadata="{}"),  # a driver giving the JSON as text
    journal_row(9, CREDIT, None, hold_id=None, counterparty_account_id="EU-0-bbbb"),
]


@pytest.mark.parametrize("static", STATICS)
@pytest.mark.parametrize("row", ROWS)
def test_an_account_after_a_row_renders_as_its_dict_encodes(static: dict[str, Any], row: tuple[Any, ...]) -> None:
    expected = views.encoder.encode(account_at(static, row))
    assert AccountHead("EU-0-aaaa", static).render(row) == expected


@pytest.mark.parametrize("row", ROWS)
def test_a_transaction_renders_as_its_view_encodes(row: tuple[Any, ...]) -> None:
    for shard in (0, 3):
        assert views.txn_row_bytes(row, shard) == views.encoder.encode(views.txn_view(row, shard))


@pytest.mark.parametrize("row", ROWS[:4])
def test_a_hold_after_a_row_renders_as_its_view_encodes(row: tuple[Any, ...]) -> None:
    placement = ROWS[0]
    state = hold_state_after(placement, row)
    assert views.hold_state_bytes(state) == views.encoder.encode(hold_after(placement, row))
