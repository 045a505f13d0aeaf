"""A hold that leaves with a partner move and comes back while a checkpoint round is writing
(issue 18's rounds with issue 19's moves): the holds table must not keep a pending row of it
once it is settled. Found by the fleet's SIGKILL test (session 13): a hold came back while the
round that was to delete its row was in progress, was marked "no row in the table", the round
then wrote its pending row, and its release later deleted nothing. Recovery then refused the
shard (``reserved`` 10, pending holds 12)."""

from __future__ import annotations

from test_moves import Shard, move, ok, world

from balance.domain import commands as c
from balance.domain.model import Account, Hold
from balance.domain.outcomes import Changes


class TabledShard(Shard):
    """A shard whose commits also keep the holds table (the checkpoint's pending rows)."""

    def __init__(self, number: int) -> None:
        super().__init__(number)
        # The holds table as the adapters key it: (expires_at, account_id, id).
        self.holds_table: dict[tuple[int, str, str], tuple] = {}  # type: ignore[type-arg]

    def write(self, commands: list[c.Command], checkpoint: bool = False, rows: int | None = 0) -> None:
        ledger = self.ledger
        ledger.begin()
        for command in commands:
            ok(ledger.apply(command, self.now))
        changes = ledger.collect(checkpoint, rows if ledger.checkpointing or checkpoint else None)
        ledger.accept()
        self.tabled(changes)
        self.now += 1_000

    def tabled(self, changes: Changes) -> None:
        super().tabled(changes)
        for hold in changes.holds:
            self.holds_table[(hold.expires_at, hold.account_id, hold.id)] = hold.state()
        for key in changes.holds_deleted:
            self.holds_table.pop(key, None)

    def recovered_from_tables(self) -> None:
        """Recovery as it starts after a complete checkpoint: the tables alone, checked."""
        from balance.domain.ledger import Ledger

        ledger = Ledger(self.number)
        for row in self.rows.values():
            ledger.load_account(Account.from_row(row))
        for row in self.holds_table.values():
            owner = ledger.accounts[row[0]]
            ledger.load_hold(Hold.from_row(row, owner.id))
        ledger.check_invariants()

    def row(self, account_id: str, hold_id: str) -> tuple | None:  # type: ignore[type-arg]
        """The hold's one row in the table (None: no row; two rows fail)."""
        (found,) = [row for key, row in self.holds_table.items() if key[1:] == (account_id, hold_id)] or [None]
        return found

    def hold_keys(self) -> set[tuple[str, str]]:
        return {key[1:] for key in self.holds_table}


def test_a_hold_back_during_the_round_that_deletes_its_row_is_deleted_once_settled() -> None:
    _, b = world()
    a = TabledShard(0)
    a.do(c.CreateAccount("EU-0-root", None, "partner", "EU", "EUR", "root", 0, b"{}"))
    a.write([c.CreateAccount("EU-0-kid", "EU-0-root", "user", "EU", "EUR", "kid", 0, b"{}")])
    a.write([c.Credit("EU-0-kid", "cr", 1_000), c.PlaceHold("EU-0-kid", "h1", 10, 600)])
    a.write([c.PlaceHold("EU-0-kid", "h2", 2, 600)])
    a.write([], checkpoint=True, rows=None)  # a whole round: both holds' rows are in the table
    assert a.hold_keys() == {("EU-0-kid", "h1"), ("EU-0-kid", "h2")}
    move(a, b, "m1")  # they leave: their rows are to be deleted by the next round
    a.write([], checkpoint=True, rows=0)  # that round begins, and writes nothing yet
    assert a.ledger.checkpointing
    move(b, a, "m2")  # they come back while it is in progress
    a.write([], rows=None)  # the round ends: it writes them as they are now, pending
    assert a.row("EU-0-kid", "h2")[5] == "pending"  # type: ignore[index]
    a.write([c.ReleaseHold("EU-0-kid", "h2")])
    a.write([], checkpoint=True, rows=None)
    assert a.row("EU-0-kid", "h2") is None  # released: its row is gone
    assert a.row("EU-0-kid", "h1")[5] == "pending"  # type: ignore[index]
    a.recovered_from_tables()  # reserved (10) equals the pending holds' rows (10)
    a.ledger.check_invariants()


def test_a_hold_back_with_another_expiry_leaves_no_row_under_the_old_one() -> None:
    """The holds table is keyed by expiry first: a hold that comes back with another expiry than
    its row has (written before it left) gets its old row deleted, not a second row beside it."""
    _, b = world()
    a = TabledShard(0)
    a.do(c.CreateAccount("EU-0-root", None, "partner", "EU", "EUR", "root", 0, b"{}"))
    a.write([c.CreateAccount("EU-0-kid", "EU-0-root", "user", "EU", "EUR", "kid", 0, b"{}")])
    a.write([c.Credit("EU-0-kid", "cr", 1_000), c.PlaceHold("EU-0-kid", "h1", 10, 600)])
    a.write([], checkpoint=True, rows=None)
    (old_key,) = a.holds_table
    move(a, b, "m1")  # it leaves; no round deletes its row before it is back
    moved = b.ledger.holds.find("EU-0-kid", "h1")
    assert moved is not None
    moved.expires_at += 5_000_000  # (a fault injected: the shard it went to keeps another expiry)
    move(b, a, "m2")
    a.write([], checkpoint=True, rows=None)
    assert old_key not in a.holds_table
    assert list(a.holds_table) == [(old_key[0] + 5_000_000, "EU-0-kid", "h1")]
    a.recovered_from_tables()
