"""The hold index: (account id, hold id) look-ups with one dict slot per hold id."""

from __future__ import annotations

import pytest

from balance.domain.holds import HoldIndex
from balance.domain.model import EMPTY_METADATA, Hold


def _hold(account_id: str, hold_id: str, amount: int = 10) -> Hold:
    return Hold(account_id, hold_id, amount, 0, "USD", "pending", None, 2, 1, 1, "", EMPTY_METADATA)


def test_two_accounts_may_use_the_same_hold_id() -> None:
    index = HoldIndex()
    a, b, c = _hold("A", "order-1", 1), _hold("B", "order-1", 2), _hold("C", "order-1", 3)
    for hold in (a, b, c):
        index.put(hold)
    assert len(index) == 3
    assert (index.find("A", "order-1"), index.find("B", "order-1"), index.find("C", "order-1")) == (a, b, c)
    assert index.find("D", "order-1") is None and index.find("A", "order-2") is None
    index.remove("B", "order-1")
    assert len(index) == 2 and index.find("B", "order-1") is None
    assert index.find("A", "order-1") is a and index.find("C", "order-1") is c
    index.remove("A", "order-1")
    assert index.find("C", "order-1") is c and list(index.values()) == [c]
    with pytest.raises(KeyError):
        index.remove("A", "order-1")


def test_put_replaces_the_hold_with_the_same_key_and_counts_it_once() -> None:
    index = HoldIndex()
    first, second, other = _hold("A", "h"), _hold("A", "h"), _hold("B", "h")
    index.put(first)
    index.put(other)
    index.put(second)
    assert len(index) == 2 and index.find("A", "h") is second
    assert dict(index.items()) == {("A", "h"): second, ("B", "h"): other}


def test_the_mapping_protocol_checks_the_key_against_the_hold() -> None:
    index = HoldIndex()
    hold = _hold("A", "h")
    index["A", "h"] = hold
    assert ("A", "h") in index and index["A", "h"] is hold and index.get(("B", "h")) is None
    with pytest.raises(KeyError):
        index["B", "h"] = hold
    with pytest.raises(KeyError):
        index["B", "h"]
    del index["A", "h"]
    assert len(index) == 0 and ("A", "h") not in index


@pytest.mark.parametrize(
    "details",
    [(None, "", EMPTY_METADATA), ("B", "", EMPTY_METADATA), (None, "rent", EMPTY_METADATA), (None, "", b'{"a":1}')],
)
def test_a_hold_gives_back_every_field_it_was_built_with(details: tuple[str | None, str, bytes]) -> None:
    destination, description, metadata = details
    state = ("A", "h", 10, 0, "USD", "pending", destination, 30, 10, 20, description, metadata, "P")
    hold = Hold(*state)
    assert hold.state() == state
    assert (hold.destination_account_id, hold.description, hold.metadata) == details
    hold.status, hold.captured_amount, hold.updated_at = "captured", 7, 25
    hold.restore(state)
    assert hold.state() == state
