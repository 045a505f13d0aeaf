"""Partner moves in the pure ledger (``domain.moves``): two shards, each step balanced, each
step idempotent, every change recovered from the rows a commit writes (accounts and journal,
replayed into a fresh ledger as recovery does), by example and by property."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain.ledger import RECOVERY_JOURNAL_FIELDS, Ledger
from balance.domain.model import HOLD_PENDING, STATUS_ACTIVE, STATUS_MOVED, Account
from balance.domain.moves import MOVE_BLOCKED, MOVE_STALE, export
from balance.domain.outcomes import Changes, Outcome

T0 = 1_790_000_000_000_000


class Shard:
    """A ledger and what its commits wrote (account rows by id, journal rows in order)."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.ledger = Ledger(number)
        self.rows: dict[str, tuple] = {}  # type: ignore[type-arg]
        self.journal: list[tuple] = []  # type: ignore[type-arg]
        self.now = T0

    def batch(self, commands: list[c.Command]) -> list[Outcome]:
        ledger = self.ledger
        ledger.begin()
        outcomes = [ledger.apply(command, self.now) for command in commands]
        changes = ledger.collect()
        ledger.accept()
        self.tabled(changes)
        for entry in changes.entries:
            if entry.status < 300:
                self.journal.append(tuple(getattr(entry, name) for name in RECOVERY_JOURNAL_FIELDS))
        for outcome in outcomes:
            if outcome.record is not None and outcome.rejection is None and not outcome.record.body:
                outcome.record.body = b"ok"
        self.now += 1_000
        return outcomes

    def do(self, command: c.Command) -> Outcome:
        return self.batch([command])[0]

    def tabled(self, changes: Changes) -> None:
        """What a commit writes to the tables kept here (accounts' rows)."""
        for account in changes.accounts:
            self.rows[account.id] = account.state()

    def recovered(self) -> Ledger:
        """What recovery would load: the account rows, then the whole journal replayed."""
        ledger = Ledger(self.number)
        for row in self.rows.values():
            ledger.load_account(Account.from_row(row))
        for row in self.journal:
            ledger.replay_journal_row(row)
        ledger.rebuild_reserved()
        ledger.check_invariants()
        return ledger


def world() -> tuple[Shard, Shard]:
    a, b = Shard(0), Shard(1)
    a.do(c.CreateAccount("EU-0-root", None, "partner", "EU", "EUR", "root", 0, b"{}"))
    return a, b


def ok(outcome: Outcome) -> Outcome:
    assert outcome.rejection is None, outcome.rejection
    return outcome


def move(source: Shard, target: Shard, move_id: str, root: str = "EU-0-root") -> None:
    ok(source.do(c.FreezeMove(move_id, root)))
    exported = export(source.ledger, move_id, root)
    assert exported is not None
    accounts, holds = exported
    records = tuple(
        (account_id, op_key, record.fingerprint, record.status, record.body)
        for (account_id, op_key), record in source.ledger.records.items()
        if account_id in {state[0] for state in accounts}
    )
    versions = tuple((state[0], state[11]) for state in accounts)
    ok(source.do(c.MoveOut(move_id, root, target.number, versions)))
    ok(target.do(c.MoveIn(move_id, root, tuple(accounts), tuple(holds), records)))


def totals(*shards: Shard) -> dict[str, int]:
    sums: dict[str, int] = {}
    for shard in shards:
        for account in shard.ledger.accounts.values():
            sums[account.currency] = sums.get(account.currency, 0) + account.balance
    return sums


def live(shard: Shard, account_id: str) -> Account:
    return shard.ledger.accounts[account_id]


def test_a_subtree_moves_with_balances_holds_and_answers_and_back() -> None:
    a, b = world()
    a.do(c.CreateAccount("EU-0-kid", "EU-0-root", "user", "EU", "EUR", "kid", 50, b"{}"))
    ok(a.do(c.Credit("EU-0-kid", "cr1", 1_000)))
    ok(a.do(c.PlaceHold("EU-0-kid", "h1", 300, 60)))
    ok(a.do(c.Transfer("t1", "EU-0-kid", "EU-0-root", 100, "EUR")))
    before = live(a, "EU-0-kid").state()
    move(a, b, "m1")
    kid = live(b, "EU-0-kid")
    assert (kid.balance, kid.reserved, kid.version, kid.credit_limit) == (900, 300, before[11], 50)
    hold = b.ledger.holds.find("EU-0-kid", "h1")
    assert hold is not None and hold.status == HOLD_PENDING and hold.placed_by == "admin"
    assert live(a, "EU-0-kid").status == STATUS_MOVED and live(a, "EU-0-kid").balance == 0
    for shard in (a, b):  # each shard's books balance on their own
        shard.ledger.check_invariants()
    # The old shard refuses (the service routes to the new one); the new one replays first answers.
    assert a.do(c.Credit("EU-0-kid", "cr2", 5)).rejection == e.Rejection(
        e.ACCOUNT_MOVED, "account EU-0-kid was moved to another shard; retry"
    )
    replay = b.do(c.Credit("EU-0-kid", "cr1", 1_000))
    assert replay.replay is not None and replay.replay.body == b"ok"
    assert b.do(c.Credit("EU-0-kid", "cr1", 7)).rejection.code == e.IDEMPOTENCY_CONFLICT  # type: ignore[union-attr]
    ok(b.do(c.CaptureHold("EU-0-kid", "h1", 200)))
    ok(b.do(c.PlaceHold("EU-0-kid", "h2", 100, 60)))
    assert live(b, "EU-0-kid").version == before[11] + 2  # the versions go on, no gap
    move(b, a, "m2")  # and back
    kid = live(a, "EU-0-kid")
    assert (kid.status, kid.balance, kid.reserved) == (STATUS_ACTIVE, 700, 100)
    assert a.do(c.PlaceHold("EU-0-kid", "h1", 300, 60)).replay is not None  # placed before the first move
    ok(a.do(c.ReleaseHold("EU-0-kid", "h2")))
    for shard in (a, b):
        shard.ledger.check_invariants()
        assert shard.recovered().committed_account("EU-0-kid") == shard.ledger.committed_account("EU-0-kid")
    assert set(totals(a, b).values()) == {0}


def test_freeze_refuses_the_subtree_only_and_a_stale_export_is_refused() -> None:
    a, b = world()
    a.do(c.CreateAccount("EU-0-kid", "EU-0-root", "user", "EU", "EUR", "kid", 0, b"{}"))
    a.do(c.CreateAccount("EU-0-other", None, "partner", "EU", "EUR", "other", 0, b"{}"))
    ok(a.do(c.FreezeMove("m1", "EU-0-root")))
    assert a.do(c.Credit("EU-0-kid", "x", 1)).rejection.code == e.ACCOUNT_MOVING  # type: ignore[union-attr]
    assert a.do(c.Transfer("y", "EU-0-other", "EU-0-kid", 1, "EUR")).rejection.code == e.ACCOUNT_MOVING  # type: ignore[union-attr]
    kid = c.CreateAccount("EU-0-kid2", "EU-0-kid", "user", "EU", "EUR", "k", 0, b"{}")
    assert a.do(kid).rejection.code == e.ACCOUNT_MOVING  # type: ignore[union-attr]
    ok(a.do(c.Credit("EU-0-other", "z", 5)))
    stale = c.MoveOut("m1", "EU-0-root", 1, (("EU-0-root", 1),))
    assert a.do(stale).rejection.code == MOVE_STALE  # type: ignore[union-attr]
    ok(a.do(c.ThawMove("m1", "EU-0-root")))
    ok(a.do(c.Credit("EU-0-kid", "x", 1)))


def test_move_out_is_blocked_by_money_in_flight_and_holds_with_destinations() -> None:
    a, _ = world()
    ok(a.do(c.Credit("EU-0-root", "c", 100)))
    ok(a.do(c.TransferOut(c.Transfer("t", "EU-0-root", "EU-1-x", 10, "EUR"))))
    ok(a.do(c.FreezeMove("m1", "EU-0-root")))
    versions = (("EU-0-root", live(a, "EU-0-root").version),)
    assert a.do(c.MoveOut("m1", "EU-0-root", 1, versions)).rejection.code == MOVE_BLOCKED  # type: ignore[union-attr]
    ok(a.do(c.CompleteTransfer("EU-0-root", "t", b"done")))  # the leg under way still lands
    ok(a.do(c.MoveOut("m1", "EU-0-root", 1, versions)))
    assert a.do(c.MoveOut("m1", "EU-0-root", 1, versions)).replay is not None  # idempotent


def test_a_move_in_rolls_back_onto_the_source_and_recovery_agrees() -> None:
    a, _ = world()
    ok(a.do(c.Credit("EU-0-root", "c", 100)))
    ok(a.do(c.PlaceHold("EU-0-root", "h", 40, 60)))
    ok(a.do(c.FreezeMove("m1", "EU-0-root")))
    exported = export(a.ledger, "m1", "EU-0-root")
    assert exported is not None
    accounts, holds = exported
    ok(a.do(c.MoveOut("m1", "EU-0-root", 1, (("EU-0-root", accounts[0][11]),))))
    mid = a.recovered()
    assert mid.accounts["EU-0-root"].status == STATUS_MOVED and mid.moving["EU-0-root"] == ""
    ok(a.do(c.MoveIn("m1", "EU-0-root", tuple(accounts), tuple(holds), (), tag="back")))
    root = live(a, "EU-0-root")
    assert (root.status, root.balance, root.reserved) == (STATUS_ACTIVE, 100, 40)
    again = a.recovered()
    assert again.accounts["EU-0-root"].state() == root.state()
    assert again.holds.find("EU-0-root", "h").status == HOLD_PENDING  # type: ignore[union-attr]
    assert not again.moving


def test_a_commit_that_fails_undoes_a_move_out() -> None:
    a, _ = world()
    ok(a.do(c.Credit("EU-0-root", "c", 100)))
    ok(a.do(c.PlaceHold("EU-0-root", "h", 40, 60)))
    ok(a.do(c.FreezeMove("m1", "EU-0-root")))
    before = live(a, "EU-0-root").state()
    a.ledger.begin()
    ok(a.ledger.apply(c.MoveOut("m1", "EU-0-root", 1, (("EU-0-root", before[11]),)), a.now))
    a.ledger.collect()
    a.ledger.rollback()
    assert live(a, "EU-0-root").state() == before
    assert a.ledger.moving == {"EU-0-root": "m1"}
    assert a.ledger.holds.find("EU-0-root", "h").status == HOLD_PENDING  # type: ignore[union-attr]
    a.ledger.check_invariants()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["credit", "hold", "capture", "release", "transfer", "move"]), st.integers(0, 4),
                  st.integers(1, 50)),
        min_size=1, max_size=40,
    )
)  # fmt: skip
def test_property_moves_among_operations_keep_every_invariant(steps: list[tuple[str, int, int]]) -> None:
    """Random operations on a root with four children, moved back and forth between two shards
    at random: each shard balances, money is conserved, each account is live on exactly one
    shard, replays answer first, and recovery rebuilds each shard exactly."""
    shards = world()
    a = shards[0]
    kids = [f"EU-0-k{i}" for i in range(5)]
    for kid in kids:
        ok(a.do(c.CreateAccount(kid, "EU-0-root", "user", "EU", "EUR", kid, 0, b"{}")))
    home, ids = 0, itertools.count()
    answered: list[tuple[c.Command, int]] = []
    holds: list[tuple[str, str]] = []
    for kind, who, amount in steps:
        shard, account = shards[home], kids[who]
        op = f"o{next(ids)}"
        command: c.Command
        if kind == "move":
            move(shard, shards[1 - home], f"m{op}")
            home = 1 - home
            continue
        if kind == "credit":
            command = c.Credit(account, op, amount)
        elif kind == "hold":
            command = c.PlaceHold(account, op, amount, 60)
            holds.append((account, op))
        elif kind == "transfer":
            command = c.Transfer(op, account, kids[(who + 1) % 5], amount, "EUR")
        elif not holds:
            continue
        else:
            held = holds[amount % len(holds)]
            command = c.CaptureHold(*held) if kind == "capture" else c.ReleaseHold(*held)
        outcome = shard.do(command)
        assert outcome.rejection is None or outcome.rejection.code not in (e.ACCOUNT_MOVED, e.ACCOUNT_MOVING)
        if outcome.record is not None:
            answered.append((command, outcome.status))
    for shard in shards:
        shard.ledger.check_invariants()
        recovered = shard.recovered()
        for account_id, account in shard.ledger.accounts.items():
            assert recovered.accounts[account_id].state()[:12] == account.state()[:12]
    assert set(totals(*shards).values()) <= {0}
    for kid in ["EU-0-root", *kids]:
        statuses = [shard.ledger.accounts[kid].status for shard in shards if kid in shard.ledger.accounts]
        assert statuses.count(STATUS_ACTIVE) == 1
    for command, status in answered:  # every first answer replays where the account lives now
        again = shards[home].do(command)
        assert again.replay is not None and again.status == status
