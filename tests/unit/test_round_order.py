"""A checkpoint round's order: every row once, in key order once all are fed, and no slice
paying for the whole round."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from balance.domain.round_order import ORDER_STEP, RoundOrder


class CountedKey:
    """The key function, counting its calls (each call is a row put in order)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, item: str) -> str:
        self.calls += 1
        return item


def test_a_slice_puts_in_order_a_step_of_the_round_not_all_of_it() -> None:
    """Sorting the round at its first slice held the event loop ~8-10 ms for 10,000 holds."""
    items = [f"acct-{n:05d}" for n in range(10_000)]
    random.Random(1).shuffle(items)
    key = CountedKey()
    order = RoundOrder(list(items), key)
    order.feed(16)
    taken = [order.pop() for _ in range(16)]
    assert key.calls <= ORDER_STEP + 1 + 16  # the run, its head, and each next head
    assert all(item is not None for item in taken)
    assert taken == sorted(taken)  # type: ignore[type-var]
    before = key.calls
    order.feed(3_000)  # a larger slice: a run of twice its size
    assert key.calls == before + 6_000 + 1


def test_once_every_row_is_fed_they_come_out_in_key_order() -> None:
    items = [(f"acct-{n % 97:03d}", f"hold-{n}") for n in range(2_000)]
    random.Random(2).shuffle(items)
    order = RoundOrder(list(items), lambda item: item[0] + "\x00" + item[1])
    for _ in range(4):
        order.feed(0)  # four runs of 512
    out = [order.pop() for _ in range(len(items))]
    assert out == sorted(items)
    assert order.pop() is None and len(order) == 0


def test_a_hold_s_key_is_the_tables_first_column_its_expiry() -> None:
    """Holds are written in expiry order, the holds table's key order (expires_at, account, id)."""
    from balance.domain.ledger import _hold_key
    from balance.domain.model import Hold

    def hold(account: str, hold_id: str, expires_at: int) -> Hold:
        return Hold(account, hold_id, 1, 0, "EUR", "pending", None, expires_at, 0, 0, "", b"")

    keys = [("EU-0-b", "a", 3), ("EU-0-a", "z", 1), ("EU-0-c", "0", 2)]
    assert [k[2] for k in sorted(keys, key=lambda k: _hold_key(hold(*k)))] == [1, 2, 3]


def test_equal_keys_never_compare_the_items() -> None:
    """Two holds with the same key (one moved away and back) are different objects that do not
    compare: the tie is broken by the order they came in."""

    class Opaque:
        pass

    first, second = Opaque(), Opaque()
    order = RoundOrder([first, second], lambda item: "a\x00same")
    assert {id(order.pop()), id(order.pop())} == {id(first), id(second)}


@given(
    st.lists(st.integers(0, 50), max_size=300),
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=30),
)
def test_every_row_comes_out_exactly_once_however_slices_are_taken(
    items: list[int], slices: list[tuple[int, int]]
) -> None:
    order = RoundOrder(list(enumerate(items)), lambda item: f"{item[1]:03d}")
    out = []
    for rows, extra in slices:
        order.feed(rows)
        for _ in range(rows + extra):
            taken = order.pop()
            if taken is not None:
                out.append(taken)
    while (taken := order.pop()) is not None:
        out.append(taken)
    assert sorted(out) == sorted(enumerate(items))
    assert len(order) == 0


def test_the_ledger_writes_a_round_in_the_holds_tables_key_order() -> None:
    """2,000 holds on 300 accounts placed in random order, expiring in random order; the round's
    slices of 16: once every hold is in the order (each slice feeds 512), each slice's rows
    follow the one before's in the table's key order (expiry first)."""
    from test_moves_checkpoint import TabledShard

    from balance.domain import commands as c

    shard = TabledShard(0)
    shard.do(c.CreateAccount("EU-0-root", None, "partner", "EU", "EUR", "root", 0, b"{}"))
    accounts = [f"EU-0-a{n:03d}" for n in range(300)]
    shard.write([c.CreateAccount(a, "EU-0-root", "user", "EU", "EUR", a, 0, b"{}") for a in accounts])
    shard.write([c.Credit(a, "cr", 1_000_000) for a in accounts])
    shard.write([], checkpoint=True, rows=None)  # the accounts' rows: the next round is holds only
    pick = random.Random(3)
    placed = [(pick.choice(accounts), f"h{n:05d}") for n in range(2_000)]
    pick.shuffle(placed)
    for start in range(0, len(placed), 100):
        shard.write([c.PlaceHold(a, h, 1, 600 + pick.randrange(3_000)) for a, h in placed[start : start + 100]])

    slices: list[list[tuple[int, str, str]]] = []
    ledger = shard.ledger
    ledger.begin()
    changes = ledger.collect(True, 16)
    ledger.accept()
    slices.append([(hold.expires_at, hold.account_id, hold.id) for hold in changes.holds])
    while ledger.checkpointing:
        ledger.begin()
        changes = ledger.collect(False, 16)
        ledger.accept()
        slices.append([(hold.expires_at, hold.account_id, hold.id) for hold in changes.holds])
    written = [key[1:] for chunk in slices for key in chunk]
    assert sorted(written) == sorted(placed)
    # (What a commit's pages are is its set of rows; the order inside one commit does not matter.)
    full = [chunk for chunk in slices[4:] if chunk]  # after 4 slices, 2,048 fed: every hold
    assert len(full) > 100
    assert all(max(earlier)[0] <= min(later)[0] for earlier, later in zip(full, full[1:], strict=False))
