"""The event stream reads journal and outbox rows by position: each position names its column."""

from __future__ import annotations

from balance.events import states, stream
from balance.storage import schema


def test_each_journal_position_is_its_column() -> None:
    for name in ("seq", "account_id", "op_key", "kind", "code", "hold_id", "balance_after", "reserved_after",
                 "version", "created_at"):  # fmt: skip
        assert schema.JOURNAL_COLUMNS[getattr(states, name.upper().replace("_AFTER", "_AFTER"))] == name


def test_each_outbox_position_is_its_column() -> None:
    for name in schema.OUTBOX_COLUMNS:
        assert schema.OUTBOX_COLUMNS[getattr(stream, f"OUTBOX_{name.upper()}")] == name
