"""Partner moves with holds naming a destination (``domain.moves``), in the pure ledger: three
shards, the service's part (marks of holds of other shards, the capture's legs, the switch)
played by ``World`` as ``BalanceService`` plays it. After every step each live account's marks
are exactly the pending holds (anywhere) naming it, each shard balances, money is conserved,
recovery rebuilds the same marks; captures pay the destination once, where it lives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_moves import Shard, ok

from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain import moves
from balance.domain.cross_shard import TRANSFER_IN_PROGRESS, capture_leg_id
from balance.domain.ledger import INBOUND_HOLD, RECOVERY_JOURNAL_FIELDS, Ledger, inbound_hold_mark
from balance.domain.model import HOLD_PENDING, STATUS_ACTIVE, STATUS_MOVED
from balance.domain.moves import MOVE_BLOCKED, export
from balance.domain.outcomes import Outcome

PARTNER, PAYER, MERCHANT = "EU-0-p", "EU-0-payer", "EU-0-shop"  # the partner that moves (shard 0 -> 1)
GATEWAY, BUYER, SHOP0 = "EU-0-g", "EU-0-buyer", "EU-0-gshop"  # another partner staying on shard 0
SHOP1, BUYER1 = "EU-1-shop", "EU-1-buyer"  # accounts of shard 1 (the target)
SHOP2, BUYER2 = "EU-2-shop", "EU-2-buyer"  # accounts of a third shard


class World:
    """Three shards and what the service does between them: where each account lives, the
    marks of holds naming an account of another shard, a capture's target leg."""

    def __init__(self) -> None:
        self.shards = [Shard(n) for n in range(3)]
        self.placed: dict[str, int] = {}

    def where(self, account_id: str) -> Shard:
        return self.shards[self.placed.get(account_id, int(account_id.split("-")[1]))]

    def run(self, shard: Shard, command: c.Command) -> Outcome:
        """One commit, then the marks its holds change on their destinations' shards."""
        ledger = shard.ledger
        ledger.begin()
        outcome = ledger.apply(command, shard.now)
        changes = ledger.collect()
        remote = list(changes.remote_holds)
        ledger.accept()
        for account in changes.accounts:
            shard.rows[account.id] = account.state()
        for entry in changes.entries:
            if entry.status < 300:
                shard.journal.append(tuple(getattr(entry, name) for name in RECOVERY_JOURNAL_FIELDS))
        if outcome.record is not None and outcome.rejection is None and not outcome.record.body:
            outcome.record.body = b"ok"
        shard.now += 1_000
        for account_id, hold_id, destination, add in remote:
            there = self.where(destination).ledger
            there.mark(there.inbound, destination, inbound_hold_mark(account_id, hold_id), add)
        return outcome

    def do(self, command: c.Command) -> Outcome:
        """As the service routes it: a hold naming another shard's account carries what that
        shard has of it, and its capture's money goes on to the destination's shard."""
        shard = self.where(command.account_id)
        if isinstance(command, c.PlaceHold) and command.destination_account_id is not None:
            other = self.where(command.destination_account_id)
            if other is not shard:
                dest = other.ledger.accounts.get(command.destination_account_id)
                assert dest is not None
                remote = c.RemoteAccount(True, dest.currency, dest.status, False)
                command = c.PlaceHold(
                    command.account_id, command.op_id, command.amount, command.expires_in_s,
                    command.destination_account_id, remote_destination=remote,
                )  # fmt: skip
        outcome = self.run(shard, command)
        if isinstance(command, c.CaptureHold) and outcome.status == TRANSFER_IN_PROGRESS:
            hold = shard.ledger.holds.find(command.account_id, command.hold_id)
            assert hold is not None and hold.destination_account_id is not None
            leg = c.Transfer(
                capture_leg_id(hold.id), hold.account_id, hold.destination_account_id, hold.captured_amount, "EUR"
            )
            ok(self.run(self.where(leg.to_account_id), c.TransferIn(leg)))
            ok(self.run(shard, c.CompleteTransfer(hold.account_id, leg.op_id, b"done", 200)))
        return outcome

    def move(self, root: str, to: int, move_id: str) -> None:
        source, target = self.where(root), self.shards[to]
        ok(self.run(source, c.FreezeMove(move_id, root)))
        exported = export(source.ledger, move_id, root)
        assert exported is not None
        accounts, holds = exported
        versions = tuple((state[0], state[11]) for state in accounts)
        ok(self.run(source, c.MoveOut(move_id, root, to, versions)))
        ok(self.run(target, c.MoveIn(move_id, root, tuple(accounts), tuple(holds), ())))
        moved = {state[0] for state in accounts}
        for shard in self.shards:  # the switch (``BalanceService._remark``)
            if shard is target:
                continue
            moves.forget_marks(shard.ledger, moved)
            for account_id, hold_id, destination in moves.holds_naming(shard.ledger, moved):
                target.ledger.mark(target.ledger.inbound, destination, inbound_hold_mark(account_id, hold_id), True)
        for account_id in moved:
            self.placed[account_id] = to

    def check(self) -> None:
        """Each live account's marks are the pending holds naming it; books; recovery agrees."""
        naming: dict[str, set[str]] = {}
        for shard in self.shards:
            for hold in shard.ledger.holds.values():
                if hold.status == HOLD_PENDING and hold.destination_account_id is not None:
                    naming.setdefault(hold.destination_account_id, set()).add(f"{hold.account_id}:{hold.id}")
        for shard in self.shards:
            ledger = shard.ledger
            ledger.check_invariants()
            for account_id, account in ledger.accounts.items():
                if account.status == STATUS_MOVED or account.is_system:
                    continue
                assert self.where(account_id) is shard
                local = ledger.inbound_holds.get(account_id, set())
                remote = {
                    m[len(INBOUND_HOLD) :] for m in ledger.inbound.get(account_id, ()) if m.startswith(INBOUND_HOLD)
                }
                assert not local & remote, account_id
                assert local | remote == naming.get(account_id, set()), account_id
                assert all(self.where(h.split(":")[0]) is shard for h in local)
                assert all(self.where(h.split(":")[0]) is not shard for h in remote)
            recovered = shard.recovered()
            assert recovered.inbound_holds == {k: v for k, v in ledger.inbound_holds.items() if ledger.lives_here(k)}
            for (account_id, hold_id), destination in recovered.take_remote_holds_loaded().items():
                assert f"{account_id}:{hold_id}" in naming[destination]
        sums: dict[str, int] = {}
        for shard in self.shards:
            for account in shard.ledger.accounts.values():
                sums[account.currency] = sums.get(account.currency, 0) + account.balance
        assert set(sums.values()) <= {0}


def open_world() -> World:
    w = World()
    a, b, d = w.shards
    for shard, account_id, parent in [
        (a, PARTNER, None), (a, PAYER, PARTNER), (a, MERCHANT, PARTNER), (a, GATEWAY, None), (a, BUYER, GATEWAY),
        (a, SHOP0, GATEWAY), (b, SHOP1, None), (b, BUYER1, None), (d, SHOP2, None), (d, BUYER2, None),
    ]:  # fmt: skip
        kind = "partner" if parent is None else "user"
        ok(w.run(shard, c.CreateAccount(account_id, parent, kind, "EU", "EUR", account_id, 0, b"{}")))
    for account_id in (PAYER, BUYER, BUYER1, BUYER2):
        ok(w.do(c.Credit(account_id, f"seed-{account_id}", 10_000)))
    return w


def balance(w: World, account_id: str) -> int:
    return w.where(account_id).ledger.accounts[account_id].balance


def test_holds_naming_destinations_move_and_pay_once_where_the_destination_lives() -> None:
    w = open_world()
    # (a) holds of the subtree naming a destination on the same shard, on the target, on a
    # third shard, and in the subtree itself; (b) holds of others naming the subtree's merchant,
    # from the source, the target and a third shard.
    ok(w.do(c.PlaceHold(PAYER, "a-same", 10, 60, SHOP0)))
    ok(w.do(c.PlaceHold(PAYER, "a-target", 20, 60, SHOP1)))
    ok(w.do(c.PlaceHold(PAYER, "a-third", 30, 60, SHOP2)))
    ok(w.do(c.PlaceHold(PAYER, "a-inside", 40, 60, MERCHANT)))
    ok(w.do(c.PlaceHold(BUYER, "b-source", 50, 60, MERCHANT)))
    ok(w.do(c.PlaceHold(BUYER1, "b-target", 60, 60, MERCHANT)))
    ok(w.do(c.PlaceHold(BUYER2, "b-third", 70, 60, MERCHANT)))
    w.check()
    w.move(PARTNER, 1, "m1")
    w.check()
    a, b, _ = w.shards
    assert a.ledger.accounts[MERCHANT].status == STATUS_MOVED and b.ledger.accounts[MERCHANT].status == STATUS_ACTIVE
    for hold_id in ("a-same", "a-target", "a-third", "a-inside"):
        hold = b.ledger.holds.find(PAYER, hold_id)
        assert hold is not None and hold.status == HOLD_PENDING
    # A new hold naming the moved merchant from its old shard is placed (as naming another shard's).
    ok(w.do(c.PlaceHold(BUYER, "b-after", 5, 60, MERCHANT)))
    w.check()
    for account_id, hold_id in [
        (PAYER, "a-same"), (PAYER, "a-target"), (PAYER, "a-third"), (PAYER, "a-inside"),
        (BUYER, "b-source"), (BUYER1, "b-target"), (BUYER2, "b-third"),
    ]:  # fmt: skip
        assert w.do(c.CaptureHold(account_id, hold_id)).status in (200, TRANSFER_IN_PROGRESS)
        w.check()
    assert (balance(w, SHOP0), balance(w, SHOP1), balance(w, SHOP2)) == (10, 20, 30)
    assert balance(w, MERCHANT) == 40 + 50 + 60 + 70
    assert a.ledger.accounts[MERCHANT].balance == 0  # nothing paid into the row it left
    ok(w.do(c.ReleaseHold(BUYER, "b-after")))
    w.check()
    assert balance(w, PAYER) == 10_000 - 100 and balance(w, BUYER) == 10_000 - 50


def test_a_close_of_the_moved_destination_still_waits_for_the_holds_naming_it() -> None:
    w = open_world()
    ok(w.do(c.PlaceHold(BUYER, "h0", 5, 60, MERCHANT)))
    ok(w.do(c.PlaceHold(BUYER2, "h2", 5, 60, MERCHANT)))
    w.move(PARTNER, 1, "m1")
    close = c.UpdateAccount(MERCHANT, status="closed")
    assert w.do(close).rejection.code == e.ACCOUNT_NOT_EMPTY  # type: ignore[union-attr]
    ok(w.do(c.ReleaseHold(BUYER, "h0")))
    assert w.do(close).rejection.code == e.ACCOUNT_NOT_EMPTY  # type: ignore[union-attr]
    ok(w.do(c.ReleaseHold(BUYER2, "h2")))
    w.check()
    assert w.do(close).status == 200


def test_while_frozen_a_capture_paying_into_the_subtree_waits_and_a_leg_under_way_lands() -> None:
    w = open_world()
    a, b, d = w.shards
    ok(w.do(c.PlaceHold(BUYER, "h0", 5, 60, MERCHANT)))
    ok(w.do(c.PlaceHold(BUYER2, "h2", 7, 60, MERCHANT)))
    ok(w.run(a, c.FreezeMove("m1", PARTNER)))
    refused = w.do(c.CaptureHold(BUYER, "h0"))
    assert refused.rejection is not None and refused.rejection.code == e.ACCOUNT_MOVING
    ok(w.do(c.ReleaseHold(BUYER, "h0")))  # a release pays no one: not held back
    # A capture of another shard's hold naming the frozen merchant: its leg lands (in flight).
    assert w.do(c.CaptureHold(BUYER2, "h2")).status == TRANSFER_IN_PROGRESS
    assert a.ledger.accounts[MERCHANT].balance == 7
    ok(w.run(a, c.ThawMove("m1", PARTNER)))
    w.check()
    # After the move out a leg for the merchant is refused where it left (the service sends it on).
    ok(w.do(c.PlaceHold(BUYER2, "h3", 3, 60, MERCHANT)))
    w.move(PARTNER, 1, "m2")
    stray = c.Transfer(capture_leg_id("h3"), BUYER2, MERCHANT, 3, "EUR")
    assert w.run(a, c.TransferIn(stray)).rejection.code == e.ACCOUNT_MOVED  # type: ignore[union-attr]
    assert w.do(c.CaptureHold(BUYER2, "h3")).status == TRANSFER_IN_PROGRESS
    assert balance(w, MERCHANT) == 10 and b.ledger.accounts[MERCHANT].balance == 10
    w.check()


def test_a_move_rolled_back_after_its_move_out_brings_the_marks_back() -> None:
    w = open_world()
    a, b, _ = w.shards
    ok(w.do(c.PlaceHold(PAYER, "a-same", 10, 60, SHOP0)))
    ok(w.do(c.PlaceHold(BUYER, "b-source", 50, 60, MERCHANT)))
    ok(w.do(c.PlaceHold(BUYER2, "b-third", 70, 60, MERCHANT)))
    ok(w.run(a, c.FreezeMove("m1", PARTNER)))
    exported = export(a.ledger, "m1", PARTNER)
    assert exported is not None
    accounts, holds = exported
    ok(w.run(a, c.MoveOut("m1", PARTNER, 1, tuple((s[0], s[11]) for s in accounts))))
    ok(w.do(c.ReleaseHold(BUYER, "b-source")))  # settled while away
    ok(w.run(a, c.MoveIn("m1", PARTNER, tuple(accounts), tuple(holds), (), tag="back")))
    w.check()
    assert w.do(c.CaptureHold(PAYER, "a-same")).status == 200
    assert w.do(c.CaptureHold(BUYER2, "b-third")).status == TRANSFER_IN_PROGRESS
    assert (balance(w, SHOP0), balance(w, MERCHANT)) == (10, 70)
    w.check()


def test_the_old_rule_is_gone_nothing_blocks_but_money_in_flight() -> None:
    w = open_world()
    a, _, _ = w.shards
    ok(w.do(c.PlaceHold(PAYER, "a-third", 30, 60, SHOP2)))
    ok(w.do(c.PlaceHold(BUYER2, "b-third", 70, 60, MERCHANT)))
    ok(w.run(a, c.TransferOut(c.Transfer("t", PAYER, BUYER2, 1, "EUR"))))
    ok(w.run(a, c.FreezeMove("m1", PARTNER)))
    versions = tuple((s[0], s[11]) for s in export(a.ledger, "m1", PARTNER)[0])  # type: ignore[index]
    blocked = w.run(a, c.MoveOut("m1", PARTNER, 1, versions))
    assert blocked.rejection is not None and blocked.rejection.code == MOVE_BLOCKED
    assert "in flight" in blocked.rejection.detail
    ok(w.run(a, c.CompleteTransfer(PAYER, "t", b"done")))
    ok(w.run(a, c.MoveOut("m1", PARTNER, 1, versions)))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["hold", "capture", "release", "move"]),
            st.sampled_from([PAYER, MERCHANT, BUYER, BUYER1, BUYER2]),
            st.sampled_from([None, MERCHANT, SHOP0, SHOP1, SHOP2, PAYER]),
            st.integers(1, 50),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_property_marks_follow_holds_and_accounts_over_moves(
    steps: list[tuple[str, str, str | None, int]],
) -> None:
    """Holds naming destinations placed, captured, released, the partner moved among the three
    shards at random: after each step every live account's marks are the holds naming it."""
    w = open_world()
    ok(w.do(c.Credit(MERCHANT, "seed-m", 10_000)))
    pending: list[tuple[str, str]] = []
    here, n = 0, 0
    for kind, who, destination, amount in steps:
        n += 1
        if kind == "move":
            here = (here + 1 + amount % 2) % 3
            w.move(PARTNER, here, f"m{n}")
        elif kind == "hold":
            if destination == who:
                continue
            ok(w.do(c.PlaceHold(who, f"h{n}", amount, 60, destination)))
            pending.append((who, f"h{n}"))
        elif pending:
            account_id, hold_id = pending.pop(amount % len(pending))
            command = c.CaptureHold(account_id, hold_id) if kind == "capture" else c.ReleaseHold(account_id, hold_id)
            outcome = w.do(command)
            assert outcome.rejection is None, outcome.rejection
        w.check()
    for who, hold_id in pending:
        assert w.do(c.CaptureHold(who, hold_id)).rejection is None
    w.check()
    assert all(
        shard.ledger.accounts[PARTNER].status == (STATUS_ACTIVE if shard.number == here else STATUS_MOVED)
        for shard in w.shards
        if PARTNER in shard.ledger.accounts
    )


def test_recovery_of_a_shard_marks_a_moved_destination_as_another_shards() -> None:
    w = open_world()
    ok(w.do(c.PlaceHold(BUYER, "b", 5, 60, MERCHANT)))
    w.move(PARTNER, 1, "m1")
    recovered: Ledger = w.shards[0].recovered()
    assert MERCHANT not in recovered.inbound_holds
    assert recovered.take_remote_holds_loaded() == {(BUYER, "b"): MERCHANT}
