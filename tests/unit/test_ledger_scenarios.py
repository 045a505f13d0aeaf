"""Scenario tables for the pure ledger rules (no IO, no engine, no clock).

Each scenario is a list of steps written in a tiny language, one step per string::

    open A                     an active USD account (``open A EUR limit=100`` for others)
    credit A 100 #c1           Credit (``#c1`` is the operation id; a fresh one if omitted)
    debit A 30 #d1             Debit
    transfer A B 30 #t1        Transfer in A's currency (``cur=EUR`` to ask for another)
    hold A h1 50               PlaceHold (``to=B`` destination, ``ttl=10`` expires_in_s, default 60)
    capture A h1 30            CaptureHold (no amount: the whole hold)
    release A h1               ReleaseHold
    expire A h1                ExpireHold (the sweep's command)
    sweep -> 2                 expire every hold ``due_holds(now)`` returns; how many expired
    wait 61                    move the time on by 61 seconds
    freeze A / activate A / close A      UpdateAccount(status=...)
    limit A 50                 UpdateAccount(credit_limit=50)

followed by ``-> expected``: ``ok`` (the default), ``replay`` (the first outcome again; ``replay
insufficient_funds`` also names the replayed refusal), or a problem code. Checks::

    A = 70/20/50               balance/reserved/available
    A exhausted / A !exhausted
    h1@A captured 30           a hold's status (and captured amount)
    SYS USD = -100/100         funding/settlement balances of a currency

Every command runs in its own begin/apply/collect/accept cycle, and the invariants are
checked after every step.
"""

from __future__ import annotations

import copy
import itertools

import pytest

from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain.ids import op_key_of, system_account_id
from balance.domain.ledger import Ledger
from balance.domain.model import KIND_FUNDING, KIND_SETTLEMENT, STATUS_ACTIVE, STATUS_CLOSED, STATUS_FROZEN, Hold
from balance.domain.outcomes import REFUSED, Changes, Outcome

SHARD = 0
T0 = 1_790_000_000_000_000  # microseconds
DEFAULT_TTL_S = 60


class World:
    """A ledger, a time, and one begin/apply/collect/accept cycle per command."""

    def __init__(self) -> None:
        self.ledger = Ledger(SHARD)
        self.now = T0
        self._ids = itertools.count(1)

    def fresh_id(self) -> str:
        return f"op{next(self._ids)}"

    def do(self, command: c.Command) -> Outcome:
        return self.batch([command])[0]

    def batch(self, commands: list[c.Command]) -> list[Outcome]:
        ledger = self.ledger
        ledger.begin()
        outcomes = [self._apply(command) for command in commands]
        ledger.collect()
        ledger.accept()
        return outcomes

    def _apply(self, command: c.Command) -> Outcome:
        outcome = self.ledger.apply(command, self.now)
        # What the engine does: the rendered answer becomes the body a replay returns.
        if outcome.record is not None:
            outcome.record.body = (outcome.rejection.code if outcome.rejection else "ok").encode()
        return outcome

    def sweep(self) -> int:
        due = self.ledger.due_holds(self.now, limit=1000)
        outcomes = self.batch([c.ExpireHold(account_id, hold_id) for account_id, hold_id in due]) if due else []
        return sum(1 for outcome in outcomes if outcome.status == 200)


def _options(words: list[str]) -> tuple[list[str], dict[str, str], str | None]:
    """Positional words, ``key=value`` options and the ``#op_id``."""
    positional = [w for w in words if "=" not in w and not w.startswith("#")]
    options = dict(w.split("=", 1) for w in words if "=" in w)
    op_ids = [w[1:] for w in words if w.startswith("#")]
    return positional, options, op_ids[0] if op_ids else None


def _check_outcome(step: str, outcome: Outcome, expected: str) -> None:
    words = expected.split()
    if words[0] == "ok":
        assert outcome.rejection is None and outcome.replay is None, f"{step}: {outcome.rejection}"
        assert 200 <= outcome.status < 300, step
    elif words[0] == "replay":
        assert outcome.replay is not None, f"{step}: not a replay ({outcome.rejection})"
        assert outcome.status == outcome.replay.status, step
        if len(words) > 1:
            assert outcome.replay.body.decode() == words[1], f"{step}: replayed {outcome.replay.body!r}"
            assert outcome.status == REFUSED, step  # numbered by the API, not the domain
        else:
            assert outcome.replay.body == b"ok", f"{step}: replayed {outcome.replay.body!r}"
    else:
        code = words[0]
        assert outcome.rejection is not None, f"{step}: accepted, expected {code}"
        assert outcome.rejection.code == code, f"{step}: {outcome.rejection}"
        assert outcome.status == REFUSED, step


def run_step(world: World, step: str) -> None:
    text, _, expected = (part.strip() for part in step.partition("->"))
    expected = expected or "ok"
    words = text.split()
    verb, args, options, op_id = words[0], *_options(words[1:])
    ledger = world.ledger

    # ---- checks ------------------------------------------------------------------------
    if len(words) == 3 and words[1] == "=" and verb != "SYS":
        account = ledger.accounts[verb]
        balance, reserved, available = (int(x) for x in words[2].split("/"))
        got = (account.balance, account.reserved, account.available)
        assert got == (balance, reserved, available), f"{step}: got {got}"
        return
    if len(words) == 2 and words[1] in ("exhausted", "!exhausted"):
        assert ledger.accounts[verb].exhausted is (words[1] == "exhausted"), step
        return
    if "@" in verb:
        hold_id, account_id = verb.split("@")
        hold = ledger.holds[(account_id, hold_id)]
        assert hold.status == words[1], f"{step}: hold is {hold.status}"
        if len(words) > 2:
            assert hold.captured_amount == int(words[2]), f"{step}: captured {hold.captured_amount}"
        return
    if verb == "SYS":
        funding, settlement = (int(x) for x in words[3].split("/"))
        got = (
            ledger.accounts[system_account_id(SHARD, words[1], KIND_FUNDING)].balance,
            ledger.accounts[system_account_id(SHARD, words[1], KIND_SETTLEMENT)].balance,
        )
        assert got == (funding, settlement), f"{step}: got {got}"
        return

    # ---- time and sweep ----------------------------------------------------------------
    if verb == "wait":
        world.now += int(args[0]) * 1_000_000
        return
    if verb == "sweep":
        expired = world.sweep()
        assert expired == int(expected), f"{step}: expired {expired}"
        return

    # ---- commands ----------------------------------------------------------------------
    op = op_id or world.fresh_id()
    command: c.Command
    if verb == "open":
        currency = args[1] if len(args) > 1 else "USD"
        command = c.CreateAccount(args[0], None, "user", "EU", currency, args[0], int(options.get("limit", 0)), b"{}")
    elif verb in ("freeze", "activate", "close"):
        status = {"freeze": STATUS_FROZEN, "activate": STATUS_ACTIVE, "close": STATUS_CLOSED}[verb]
        command = c.UpdateAccount(args[0], status=status)
    elif verb == "limit":
        command = c.UpdateAccount(args[0], credit_limit=int(args[1]))
    elif verb == "credit":
        command = c.Credit(args[0], op, int(args[1]))
    elif verb == "debit":
        command = c.Debit(args[0], op, int(args[1]))
    elif verb == "transfer":
        source = ledger.accounts.get(args[0])
        currency = options.get("cur", source.currency if source else "USD")
        command = c.Transfer(op, args[0], args[1], int(args[2]), currency)
    elif verb == "hold":
        ttl = int(options.get("ttl", DEFAULT_TTL_S))
        command = c.PlaceHold(args[0], args[1], int(args[2]), ttl, options.get("to"))
    elif verb == "capture":
        command = c.CaptureHold(args[0], args[1], int(args[2]) if len(args) > 2 else None)
    elif verb == "release":
        command = c.ReleaseHold(args[0], args[1])
    elif verb == "expire":
        command = c.ExpireHold(args[0], args[1])
    else:
        raise AssertionError(f"unknown step {step!r}")
    _check_outcome(step, world.do(command), expected)


def run_scenario(steps: tuple[str, ...] | list[str]) -> World:
    world = World()
    for step in steps:
        run_step(world, step)
        world.ledger.check_invariants()
    return world


# A, B: USD; E: EUR. Most scenarios start from "A has 100".
A100 = ("open A", "open B", "credit A 100")

# fmt: off
SCENARIOS: dict[str, tuple[str, ...]] = {
    # ---- credit / debit / transfer ----------------------------------------------------
    "credit": ("open A", "credit A 100", "A = 100/0/100", "SYS USD = -100/0"),
    "credit-unknown-account": ("credit X 100 -> account_not_found",),
    "credit-system-account": ("open A", f"credit {system_account_id(SHARD, 'USD', KIND_FUNDING)} 5 -> validation_error"),
    "debit": (*A100, "debit A 30", "A = 70/0/70", "SYS USD = -100/30"),
    "debit-everything": (*A100, "debit A 100", "A = 0/0/0"),
    "debit-insufficient": (*A100, "debit A 101 -> insufficient_funds", "A = 100/0/100"),
    "debit-unknown-account": ("debit X 1 -> account_not_found",),
    "transfer": (*A100, "transfer A B 40", "A = 60/0/60", "B = 40/0/40", "SYS USD = -100/0"),
    "transfer-insufficient": (*A100, "transfer A B 101 -> insufficient_funds", "B = 0/0/0"),
    "transfer-to-unknown": (*A100, "transfer A X 1 -> account_not_found", "A = 100/0/100"),
    "transfer-from-unknown": ("open B", "transfer X B 1 -> account_not_found"),
    "transfer-to-self": (*A100, "transfer A A 1 -> validation_error"),
    "transfer-to-system": (*A100, f"transfer A {system_account_id(SHARD, 'USD', KIND_SETTLEMENT)} 1 -> validation_error"),
    # A system account that does not exist yet (no GBP account so far) is still a system account:
    "transfer-to-system-not-yet-created": (
        *A100, f"transfer A {system_account_id(SHARD, 'GBP', KIND_FUNDING)} 1 cur=GBP -> validation_error",
    ),
    "hold-to-system-not-yet-created": (*A100, f"hold A h1 1 to={system_account_id(SHARD, 'GBP', KIND_FUNDING)} -> validation_error"),
    "transfer-currency-mismatch-accounts": (
        *A100, "open E EUR", "transfer A E 10 -> currency_mismatch", "A = 100/0/100", "E = 0/0/0",
    ),
    "transfer-currency-mismatch-command": (*A100, "transfer A B 10 cur=EUR -> currency_mismatch"),
    "transfer-uses-available-not-balance": (*A100, "hold A h1 80", "transfer A B 21 -> insufficient_funds", "transfer A B 20"),
    # ---- credit limit ------------------------------------------------------------------
    "credit-limit-debit-below-zero": ("open A limit=50", "credit A 10", "debit A 60", "A = -50/0/0", "debit A 1 -> insufficient_funds"),
    "credit-limit-hold-beyond-balance": ("open A limit=50", "credit A 10", "hold A h1 55", "A = 10/55/5", "capture A h1", "A = -45/0/5"),
    "credit-limit-raised": (*A100, "limit A 50", "A = 100/0/150", "debit A 150", "A = -50/0/0"),
    "credit-limit-below-use": ("open A limit=50", "debit A 30", "limit A 29 -> validation_error", "limit A 30", "A = -30/0/0"),
    "credit-limit-raise-lifts-exhausted": (*A100, "hold A h1 100", "A exhausted", "limit A 10", "A !exhausted", "hold A h2 10"),
    "credit-limit-transfer": ("open A limit=100", "open B", "transfer A B 100", "A = -100/0/0", "B = 100/0/100"),
    # ---- holds -------------------------------------------------------------------------
    "hold-then-full-capture": (
        *A100, "hold A h1 50", "A = 100/50/50", "capture A h1", "A = 50/0/50", "h1@A captured 50", "SYS USD = -100/50",
    ),
    "hold-capture-explicit-full-amount": (*A100, "hold A h1 50", "capture A h1 50", "h1@A captured 50", "A = 50/0/50"),
    "partial-capture-releases-rest": (
        *A100, "hold A h1 50", "capture A h1 30", "A = 70/0/70", "h1@A captured 30", "SYS USD = -100/30",
    ),
    "release": (*A100, "hold A h1 50", "release A h1", "A = 100/0/100", "h1@A released 0", "SYS USD = -100/0"),
    "hold-insufficient": (*A100, "hold A h1 101 -> insufficient_funds", "A = 100/0/100"),
    "hold-unknown-account": ("hold X h1 1 -> account_not_found",),
    "hold-bad-expiry": (*A100, "hold A h1 1 ttl=0 -> validation_error", "hold A h2 1 ttl=604801 -> validation_error"),
    "capture-more-than-hold": (*A100, "hold A h1 50", "capture A h1 51 -> amount_exceeds_hold", "A = 100/50/50", "h1@A pending"),
    "capture-zero": (*A100, "hold A h1 50", "capture A h1 0 -> validation_error", "h1@A pending"),
    "capture-unknown-hold": (*A100, "capture A nope -> hold_not_found"),
    "release-unknown-hold": (*A100, "release A nope -> hold_not_found"),
    "capture-hold-of-other-account": (*A100, "credit B 10", "hold A h1 5", "capture B h1 -> hold_not_found"),
    "capture-on-unknown-account": ("capture X h1 -> account_not_found",),
    "capture-twice-other-amount": (*A100, "hold A h1 50", "capture A h1 10", "capture A h1 20 -> hold_not_pending"),
    "capture-after-release": (*A100, "hold A h1 50", "release A h1", "capture A h1 -> hold_not_pending", "A = 100/0/100"),
    "release-after-capture": (*A100, "hold A h1 50", "capture A h1 30", "release A h1 -> hold_not_pending", "A = 70/0/70"),
    "hold-capture-release-table": (*A100, "hold A h1 50", "capture A h1 30", "release A h1 -> hold_not_pending"),
    "two-holds-add-up": (*A100, "hold A h1 30", "hold A h2 30", "A = 100/60/40", "hold A h3 41 -> insufficient_funds", "release A h1", "A = 100/30/70"),
    "second-hold-same-id-same-body": (*A100, "hold A h1 30", "hold A h1 30 -> replay", "A = 100/30/70"),
    "second-hold-same-id-other-amount": (*A100, "hold A h1 30", "hold A h1 31 -> idempotency_conflict", "A = 100/30/70"),
    "second-hold-same-id-after-capture": (*A100, "hold A h1 30", "capture A h1", "hold A h1 30 -> replay", "hold A h1 5 -> idempotency_conflict", "A = 70/0/70"),
    "same-hold-id-on-two-accounts": (*A100, "credit B 100", "hold A h1 30", "hold B h1 30", "A = 100/30/70", "B = 100/30/70"),
    # ---- holds with a destination --------------------------------------------------------
    "hold-destination-capture": (
        *A100, "hold A h1 50 to=B", "B = 0/0/0", "capture A h1 20", "A = 80/0/80", "B = 20/0/20", "SYS USD = -100/0",
    ),
    "hold-destination-release": (*A100, "hold A h1 50 to=B", "release A h1", "A = 100/0/100", "B = 0/0/0"),
    "hold-destination-unknown": (*A100, "hold A h1 50 to=X -> account_not_found", "A = 100/0/100"),
    "hold-destination-self": (*A100, "hold A h1 50 to=A -> validation_error"),
    "hold-destination-system": (*A100, f"hold A h1 50 to={system_account_id(SHARD, 'USD', KIND_SETTLEMENT)} -> validation_error"),
    # What the request gets wrong comes before what the state refuses (and is not recorded):
    "hold-destination-self-on-frozen-account": (*A100, "freeze A", "hold A h1 5 to=A -> validation_error", "activate A", "hold A h1 5"),
    "hold-destination-system-on-frozen-account": (
        *A100, "freeze A", f"hold A h1 5 to={system_account_id(SHARD, 'USD', KIND_FUNDING)} -> validation_error",
    ),
    "hold-destination-currency-mismatch": (*A100, "open E EUR", "hold A h1 50 to=E -> currency_mismatch", "A = 100/0/100"),
    "hold-destination-frozen": (*A100, "freeze B", "hold A h1 50 to=B -> account_inactive"),
    "capture-to-closed-destination": (
        *A100, "hold A h1 50 to=B", "close B -> account_not_empty", "capture A h1", "B = 50/0/50",
        "close B -> account_not_empty",
    ),
    "capture-to-frozen-destination-is-allowed": (*A100, "hold A h1 50 to=B", "freeze B", "capture A h1", "B = 50/0/50"),
    # ---- expiry ------------------------------------------------------------------------
    "expire-command": (*A100, "hold A h1 50 ttl=10", "wait 10", "expire A h1", "h1@A expired", "A = 100/0/100"),
    "expire-command-too-early": (*A100, "hold A h1 50 ttl=10", "wait 9", "expire A h1 -> hold_not_pending", "h1@A pending"),
    "expire-command-on-released": (*A100, "hold A h1 50", "release A h1", "wait 61", "expire A h1 -> hold_not_pending"),
    "sweep-expires-due-holds-only": (
        *A100, "hold A h1 10 ttl=10", "hold A h2 20 ttl=20", "hold A h3 30 ttl=30", "wait 20", "sweep -> 2",
        "h1@A expired", "h2@A expired", "h3@A pending", "A = 100/30/70", "sweep -> 0", "wait 10", "sweep -> 1",
    ),
    "sweep-skips-finished-holds": (*A100, "hold A h1 10 ttl=10", "capture A h1", "wait 11", "sweep -> 0", "h1@A captured 10"),
    "capture-after-expiry": (
        *A100, "hold A h1 50 ttl=10", "wait 10", "capture A h1 -> hold_not_pending", "h1@A expired", "A = 100/0/100",
        "sweep -> 0",
    ),
    "release-after-expiry": (*A100, "hold A h1 50 ttl=10", "wait 11", "release A h1 -> hold_not_pending", "h1@A expired"),
    "capture-just-before-expiry": (*A100, "hold A h1 50 ttl=10", "wait 9", "capture A h1", "h1@A captured 50"),
    # ---- exhausted flag ----------------------------------------------------------------
    "exhausted-set-by-hold-of-everything": (*A100, "hold A h1 100", "A = 100/100/0", "A exhausted", "hold A h2 1 -> insufficient_funds"),
    "exhausted-not-set-when-some-left": (*A100, "hold A h1 99", "A !exhausted", "hold A h2 1", "A exhausted"),
    "exhausted-lifted-by-credit": (
        *A100, "hold A h1 100", "A exhausted", "credit A 10", "A !exhausted", "hold A h2 10", "A exhausted",
    ),
    "exhausted-lifted-by-release": (*A100, "hold A h1 100", "release A h1", "A !exhausted", "hold A h2 100"),
    "exhausted-lifted-by-capture": (*A100, "hold A h1 100", "capture A h1 60", "A !exhausted", "A = 40/0/40", "hold A h2 40"),
    "exhausted-lifted-by-expiry": (*A100, "hold A h1 100 ttl=5", "wait 5", "sweep -> 1", "A !exhausted"),
    "exhausted-lifted-by-incoming-transfer": (*A100, "credit B 5", "hold A h1 100", "transfer B A 5", "A !exhausted", "hold A h2 5"),
    "exhausted-with-credit-limit": ("open A limit=20", "credit A 10", "hold A h1 30", "A = 10/30/0", "A exhausted"),
    "exhausted-refusal-is-recorded": (
        *A100, "hold A h1 100", "hold A h2 1 -> insufficient_funds", "release A h1", "hold A h2 1 -> replay insufficient_funds",
    ),
    # ---- frozen and closed accounts ----------------------------------------------------
    "frozen-refuses-money": (
        *A100, "freeze A", "credit A 1 -> account_inactive", "debit A 1 -> account_inactive", "hold A h1 1 -> account_inactive",
        "transfer A B 1 -> account_inactive", "transfer B A 1 -> account_inactive", "A = 100/0/100",
    ),
    "frozen-then-activated": (*A100, "freeze A", "activate A", "debit A 10", "A = 90/0/90"),
    "frozen-account-may-settle-its-holds": (*A100, "hold A h1 50", "hold A h2 20", "freeze A", "capture A h1", "release A h2", "A = 50/0/50"),
    "close-needs-zero-balance": (*A100, "close A -> account_not_empty", "debit A 100", "close A", "credit A 1 -> account_inactive"),
    "close-needs-no-holds": ("open A limit=10", "hold A h1 5", "close A -> account_not_empty", "release A h1", "close A"),
    "close-waits-for-holds-naming-it": (
        *A100, "hold A h1 50 to=B", "hold A h2 10 to=B ttl=10", "close B -> account_not_empty", "release A h1",
        "close B -> account_not_empty", "wait 10", "sweep -> 1", "close B", "transfer A B 1 -> account_inactive",
        "hold A h3 1 to=B -> account_inactive",
    ),
    "frozen-destination-blocks-close-until-settled": (
        *A100, "hold A h1 50 to=B", "freeze B", "close B -> account_not_empty", "capture A h1 20", "B = 20/0/20",
        "transfer B A 1 -> account_inactive", "activate B", "transfer B A 20", "close B",
    ),
    # ---- limits: non-system accounts within +-2^62, system accounts unbounded -------------
    "balance-up-to-2^62": (
        "open A", "credit A 4611686018427387903", "credit A 1", "A = 4611686018427387904/0/4611686018427387904",
        "credit A 1 #x -> limit_exceeded", "debit A 1", "credit A 1 #x -> replay limit_exceeded",
        "credit A 1 #y", "A = 4611686018427387904/0/4611686018427387904",
    ),
    "transfer-past-2^62-refused": (
        "open A", "open B", "credit B 4611686018427387904", "credit A 5", "transfer A B 1 -> limit_exceeded",
        "A = 5/0/5", "transfer B A 1", "transfer A B 2 -> limit_exceeded", "transfer A B 1",
    ),
    "reserve-up-to-2^62": (
        "open A limit=4611686018427387904", "credit A 4611686018427387904", "hold A h1 4611686018427387904",
        "hold A h2 1 -> limit_exceeded", "release A h1", "hold A h3 4611686018427387904",
    ),
    "credit-limit-up-to-2^62": (
        "open A", "limit A 4611686018427387905 -> limit_exceeded", "limit A 4611686018427387904",
        "A = 0/0/4611686018427387904",
    ),
    "system-accounts-go-past-2^63": (
        "open A", "open B", "open C", "credit A 4611686018427387904", "credit B 4611686018427387904",
        "credit C 4611686018427387904", "SYS USD = -13835058055282163712/0", "open D", "credit D 7", "debit D 7",
        "A = 4611686018427387904/0/4611686018427387904", "debit A 4611686018427387904", "debit B 4611686018427387904",
        "debit C 4611686018427387904", "SYS USD = -13835058055282163719/13835058055282163719",
    ),
    "closed-cannot-change": ("open A", "close A", "activate A -> account_inactive", "freeze A -> account_inactive"),
    "closed-refuses-transfer-in": (*A100, "close B", "transfer A B 1 -> account_inactive", "hold A h1 1 to=B -> account_inactive"),
    # ---- idempotency -------------------------------------------------------------------
    "credit-replay": ("open A", "credit A 10 #x", "credit A 10 #x -> replay", "A = 10/0/10"),
    "credit-conflict": ("open A", "credit A 10 #x", "credit A 11 #x -> idempotency_conflict", "A = 10/0/10"),
    "debit-replay": (*A100, "debit A 10 #x", "debit A 10 #x -> replay", "A = 90/0/90"),
    "debit-conflict": (*A100, "debit A 10 #x", "debit A 11 #x -> idempotency_conflict", "A = 90/0/90"),
    "transfer-replay": (*A100, "transfer A B 10 #x", "transfer A B 10 #x -> replay", "A = 90/0/90", "B = 10/0/10"),
    "transfer-conflict": (*A100, "transfer A B 10 #x", "transfer A B 11 #x -> idempotency_conflict", "B = 10/0/10"),
    # One client id per account across credits, debits, transfers (on their source) and holds.
    "one-id-per-account-across-kinds": (
        *A100, "credit A 10 #x", "debit A 10 #x -> idempotency_conflict", "transfer A B 10 #x -> idempotency_conflict",
        "hold A x 10 -> idempotency_conflict", "credit A 10 #x -> replay", "A = 110/0/110",
    ),
    "hold-id-is-an-operation-id": (*A100, "hold A x 10", "debit A 10 #x -> idempotency_conflict", "A = 100/10/90"),
    "capture-and-release-keep-their-own-keys": (*A100, "hold A x 50", "capture A x 10", "A = 90/0/90"),
    "a-transfer-claims-its-id-on-the-source-only": (*A100, "transfer A B 10 #y", "credit B 5 #y", "B = 15/0/15"),
    "ids-are-per-account": (*A100, "credit A 10 #x", "credit B 10 #x", "B = 10/0/10"),
    "capture-replay": (*A100, "hold A h1 50", "capture A h1 30", "capture A h1 30 -> replay", "A = 70/0/70"),
    "capture-replay-whole": (*A100, "hold A h1 50", "capture A h1", "capture A h1 -> replay", "A = 50/0/50"),
    "capture-other-body-not-pending": (*A100, "hold A h1 50", "capture A h1", "capture A h1 50 -> hold_not_pending"),
    "release-replay": (*A100, "hold A h1 50", "release A h1", "release A h1 -> replay", "A = 100/0/100"),
    "capture-refusal-not-recorded": (*A100, "hold A h1 50", "capture A h1 60 -> amount_exceeds_hold", "capture A h1 60 -> amount_exceeds_hold", "capture A h1 50"),
    # ---- recorded refusals -------------------------------------------------------------
    "debit-refusal-replays-after-credit": (
        "open A", "debit A 50 #x -> insufficient_funds", "credit A 100", "debit A 50 #x -> replay insufficient_funds",
        "debit A 51 #x -> idempotency_conflict", "A = 100/0/100",
    ),
    "hold-refusal-replays-after-credit": (
        "open A", "hold A h1 50 -> insufficient_funds", "credit A 100", "hold A h1 50 -> replay insufficient_funds",
        "A = 100/0/100", "capture A h1 -> hold_not_found",
    ),
    "transfer-refusal-replays-after-credit": (
        "open A", "open B", "transfer A B 5 #x -> insufficient_funds", "credit A 10", "transfer A B 5 #x -> replay insufficient_funds",
    ),
    "transfer-unknown-target-replays-after-open": (
        *A100, "transfer A C 5 #x -> account_not_found", "open C", "transfer A C 5 #x -> replay account_not_found",
    ),
    "credit-inactive-replays-after-activate": (
        "open A", "freeze A", "credit A 5 #x -> account_inactive", "activate A", "credit A 5 #x -> replay account_inactive", "A = 0/0/0",
    ),
    "currency-refusal-replays": (*A100, "open E EUR", "transfer A E 5 #x -> currency_mismatch", "transfer A E 5 #x -> replay currency_mismatch"),
    "unknown-account-is-not-recorded": ("credit X 5 #x -> account_not_found", "open X", "credit X 5 #x", "X = 5/0/5"),
    "validation-error-is-not-recorded": (*A100, "hold A h1 5 ttl=0 -> validation_error", "hold A h1 5", "A = 100/5/95"),
}
# fmt: on


@pytest.mark.parametrize("steps", list(SCENARIOS.values()), ids=list(SCENARIOS))
def test_scenario(steps: tuple[str, ...]) -> None:
    run_scenario(steps)


# ---- several commands in one batch -----------------------------------------------------


def test_commands_of_one_batch_see_each_other() -> None:
    world = run_scenario(A100)
    outcomes = world.batch(
        [
            c.PlaceHold("A", "h1", 60, 60),
            c.Debit("A", "d1", 41),  # 40 left available
            c.Debit("A", "d2", 40),
            c.PlaceHold("A", "h1", 60, 60),  # replay of the first command of the batch
            c.CaptureHold("A", "h1", 10),
        ]
    )
    assert [o.status for o in outcomes] == [201, REFUSED, 201, 201, 200]
    assert outcomes[3].replay is not None
    world.ledger.check_invariants()
    assert (world.ledger.accounts["A"].balance, world.ledger.accounts["A"].reserved) == (50, 0)


# ---- rollback --------------------------------------------------------------------------


def _snapshot(ledger: Ledger) -> tuple:  # type: ignore[type-arg]
    return (
        {k: a.state() for k, a in ledger.accounts.items()},
        {k: h.state() for k, h in ledger.holds.items()},
        {k: (r.fingerprint, r.status, r.body) for k, r in ledger.records.items()},
        ledger.next_seq,
    )


def _busy_batch() -> list[c.Command]:
    return [
        c.CreateAccount("N", None, "user", "EU", "GBP", "N", 0, b"{}"),  # new account and system accounts
        c.Credit("N", "n1", 500),
        c.Credit("A", "more", 25),
        c.Debit("A", "d9", 5),
        c.Debit("B", "d9", 5000),  # recorded refusal
        c.Transfer("t9", "A", "B", 30, "USD"),
        c.PlaceHold("A", "h9", 10, 60, "B"),
        c.CaptureHold("A", "h9", 4),
        c.CaptureHold("A", "h1"),  # pending hold from before the batch: captured
        c.ReleaseHold("A", "h2"),  # pending hold from before the batch: released
        c.ExpireHold("A", "h3"),  # due hold from before the batch: expired
        c.PlaceHold("A", "h10", 1, 60),
        c.Credit("A", "c0", 7),  # replay of an operation from before the batch
        c.UpdateAccount("B", status=STATUS_FROZEN),
        c.Credit("B", "late", 1),  # refused: B is frozen now
        c.PlaceHold("N", "hn", 500, 5),  # N exhausted
    ]


BEFORE_BATCH = (*A100, "credit A 50 #c0", "hold A h1 20", "hold A h2 20", "hold A h3 20 ttl=5", "wait 6")


@pytest.mark.parametrize("size", [1, 5, len(_busy_batch())], ids=lambda n: f"first-{n}-commands")
def test_rollback_restores_everything(size: int) -> None:
    world = run_scenario(BEFORE_BATCH)
    ledger = world.ledger
    before = copy.deepcopy(_snapshot(ledger))
    ledger.begin()
    outcomes = [world._apply(command) for command in _busy_batch()[:size]]
    assert any(o.status < 300 for o in outcomes)
    ledger.collect()
    ledger.rollback()
    assert _snapshot(ledger) == before
    ledger.check_invariants()

    # The ledger is usable again and the same batch gives the same answers.
    ledger.begin()
    again = [world._apply(command) for command in _busy_batch()[:size]]
    ledger.collect()
    ledger.accept()
    assert [(o.status, o.rejection) for o in again] == [(o.status, o.rejection) for o in outcomes]
    ledger.check_invariants()


def test_rollback_rearms_expiry_of_holds_it_puts_back() -> None:
    world = run_scenario(BEFORE_BATCH)
    ledger = world.ledger
    assert ledger.due_holds(world.now, 10) == [("A", "h3")]  # popped from the expiry heap
    ledger.begin()
    world._apply(c.ExpireHold("A", "h3"))
    ledger.collect()
    ledger.rollback()
    assert ledger.holds[("A", "h3")].status == "pending"
    assert ledger.due_holds(world.now, 10) == [("A", "h3")]


def test_rollback_of_placed_hold_forgets_it() -> None:
    world = run_scenario(A100)
    ledger = world.ledger
    ledger.begin()
    world._apply(c.PlaceHold("A", "hx", 10, 1))
    ledger.rollback()
    assert ("A", "hx") not in ledger.holds
    world.now += 5_000_000
    assert ledger.due_holds(world.now, 10) == []
    run_step(world, "hold A hx 10")  # the id is free again


# ---- invariants ------------------------------------------------------------------------


def _corrupt_reserved(ledger: Ledger) -> None:
    ledger.accounts["A"].reserved += 1


def _corrupt_balance(ledger: Ledger) -> None:
    ledger.accounts["A"].balance += 1  # money out of nothing: the sum is no longer 0


def _corrupt_hold_amount(ledger: Ledger) -> None:
    ledger.holds[("A", "h1")].amount -= 1


def _corrupt_hold_status(ledger: Ledger) -> None:
    ledger.holds[("A", "h1")].status = "released"  # but still counted in reserved


def _corrupt_available(ledger: Ledger) -> None:
    ledger.accounts["A"].balance -= 200
    ledger.accounts["B"].balance += 200  # sums stay 0, A's available is negative


def _corrupt_orphan_hold(ledger: Ledger) -> None:
    hold = Hold(*ledger.holds[("A", "h1")].state())
    hold.account_id = "ghost"
    ledger.holds[("ghost", "h1")] = hold


def _corrupt_closed_with_hold(ledger: Ledger) -> None:
    ledger.accounts["A"].status = STATUS_CLOSED


def _corrupt_closed_with_money(ledger: Ledger) -> None:
    ledger.accounts["B"].status = STATUS_CLOSED
    ledger.accounts["B"].balance += 1
    ledger.accounts["A"].balance -= 1


def _corrupt_past_2_62(ledger: Ledger) -> None:
    ledger.accounts["B"].balance += 2**62 + 1
    ledger.accounts["B"].credit_limit = 0
    ledger.accounts[system_account_id(SHARD, "USD", KIND_FUNDING)].balance -= 2**62 + 1


def _corrupt_negative_reserved(ledger: Ledger) -> None:
    del ledger.holds[("A", "h1")]
    ledger.accounts["A"].reserved = -1


CORRUPTIONS = {
    "reserved-wrong": _corrupt_reserved,
    "balance-out-of-nothing": _corrupt_balance,
    "hold-amount-changed": _corrupt_hold_amount,
    "hold-status-changed": _corrupt_hold_status,
    "negative-available": _corrupt_available,
    "hold-on-unknown-account": _corrupt_orphan_hold,
    "closed-account-with-hold": _corrupt_closed_with_hold,
    "negative-reserved": _corrupt_negative_reserved,
    "closed-account-with-money": _corrupt_closed_with_money,
    "balance-past-2^62": _corrupt_past_2_62,
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
def test_check_invariants_detects_corruption(corrupt) -> None:  # type: ignore[no-untyped-def]
    world = run_scenario((*A100, "hold A h1 30"))
    world.ledger.check_invariants()
    corrupt(world.ledger)
    with pytest.raises(e.InvariantViolation):
        world.ledger.check_invariants()


def test_collect_refuses_a_batch_that_creates_money() -> None:
    world = run_scenario(A100)
    ledger = world.ledger
    ledger.begin()
    world._apply(c.Credit("A", "c1", 10))
    ledger.accounts["A"].balance += 1  # a bug in a rule would look like this
    with pytest.raises(e.InvariantViolation):
        ledger.collect()
    ledger.rollback()
    assert ledger.accounts["A"].balance == 100
    ledger.check_invariants()


def test_rebuild_reserved_detects_a_stored_reserved_that_disagrees() -> None:
    world = run_scenario((*A100, "hold A h1 30"))
    world.ledger.accounts["A"].reserved = 0
    with pytest.raises(e.InvariantViolation):
        world.ledger.rebuild_reserved()


def test_batch_lifecycle_misuse_is_an_invariant_violation() -> None:
    ledger = Ledger(SHARD)
    with pytest.raises(e.InvariantViolation):
        ledger.apply(c.Credit("A", "x", 1), T0)
    with pytest.raises(e.InvariantViolation):
        ledger.accept()
    ledger.begin()
    with pytest.raises(e.InvariantViolation):
        ledger.begin()


# ---- the in-memory windows: what ``lookups_needed`` calls present stays until it is used ----
#
# The engine asks ``lookups_needed`` for every command of a batch, reads what it names from
# storage, and only then applies the batch. Whatever the ledger said it did not need to read
# must still be in memory when the command is applied, even if the commands before it in the
# batch (or the batch committing meanwhile) push new entries into the bounded windows.


def _prefetch_then_apply(world: World, commands: list[c.Command]) -> list[Outcome]:
    """The engine's order, with an empty storage (nothing to read is allowed here)."""
    for command in commands:
        assert world.ledger.lookups_needed(command) == ([], []), command
    return world.batch(commands)


@pytest.mark.parametrize("kind", ["release", "capture", "hold"])
def test_replay_whose_outcome_is_the_oldest_in_memory_is_not_evicted_by_its_own_batch(kind: str) -> None:
    world = World()
    world.ledger = Ledger(SHARD, records_max=4)
    settle = {"release": "release A h1", "capture": "capture A h1", "hold": "debit A 1"}[kind]
    for step in ("open A", "credit A 100 #c0", "hold A h1 10", settle):
        run_step(world, step)
    again = {
        "release": c.ReleaseHold("A", "h1"),
        "capture": c.CaptureHold("A", "h1"),
        "hold": c.PlaceHold("A", "h1", 10, DEFAULT_TTL_S),
    }[kind]
    run_step(world, "credit A 1 #c1")
    run_step(world, "debit A 1 #d1")  # the window is full: the needed outcome is among its two oldest
    assert ("A", op_key_of(kind, "h1")) in list(world.ledger.records)[:2]
    outcomes = _prefetch_then_apply(world, [c.Credit("A", "c2", 1), c.Credit("A", "c3", 1), again])
    assert outcomes[-1].replay is not None, outcomes[-1].rejection
    world.ledger.check_invariants()


def test_finished_hold_called_present_is_not_evicted_by_the_batch_committing_meanwhile() -> None:
    world = World()
    world.ledger = Ledger(SHARD, finished_holds_max=2)
    for step in (*A100, "hold A h1 10", "hold A h0 10", "hold A h2 10", "release A h1", "release A h0"):
        run_step(world, step)
    ledger = world.ledger
    ledger.begin()  # batch N, being committed while batch N+1 is prepared
    world._apply(c.ReleaseHold("A", "h2"))
    ledger.collect()
    capture = c.CaptureHold("A", "h1")  # batch N+1: h1 is finished and in memory, no hold to read
    assert ledger.lookups_needed(capture) == ([("A", "capture:h1")], [])
    ledger.accept()  # N is durable: h2 joins the finished window
    [outcome] = world.batch([capture])
    assert outcome.rejection is not None and outcome.rejection.code == e.HOLD_NOT_PENDING, outcome.rejection


def test_the_outcome_window_keeps_the_newest_and_evicts_the_oldest_first() -> None:
    world = World()
    world.ledger = Ledger(SHARD, records_max=3)
    for step in ("open A", "credit A 1 #c1", "credit A 1 #c2", "credit A 1 #c3", "credit A 1 #c4"):
        run_step(world, step)
    assert list(world.ledger.records) == [("A", "op:c2"), ("A", "op:c3"), ("A", "op:c4")]
    world.ledger.lookups_needed(c.PlaceHold("A", "h9", 1, DEFAULT_TTL_S))  # nothing kept: no such outcome
    run_step(world, "credit A 1 #c5")
    assert list(world.ledger.records) == [("A", "op:c3"), ("A", "op:c4"), ("A", "op:c5")]


def _one_batch(world: World, commands: list[c.Command], checkpoint: bool = False) -> Changes:
    """One begin/apply/collect/accept cycle: what the batch writes."""
    ledger = world.ledger
    ledger.begin()
    for command in commands:
        world._apply(command)
    changes = ledger.collect(checkpoint=checkpoint)
    ledger.accept()
    return changes


def _checkpoint(world: World, commands: list[c.Command]) -> tuple[set[str], set[str]]:
    """One batch that also writes the holds checkpoint: (hold ids upserted, hold ids deleted)."""
    changes = _one_batch(world, commands, checkpoint=True)
    assert changes.checkpoint_seq == world.ledger.next_seq - 1
    return {hold.id for hold in changes.holds}, {hold_id for _, _, hold_id in changes.holds_deleted}


def test_a_checkpoint_upserts_pending_holds_and_deletes_only_finished_ones_it_may_hold() -> None:
    world = World()
    for step in (*A100, "hold A h1 10", "hold A h2 10", "hold A h3 10"):
        run_step(world, step)
    assert world.ledger.unsaved_holds == 3
    assert _checkpoint(world, []) == ({"h1", "h2", "h3"}, set())
    assert world.ledger.unsaved_holds == 0
    for step in ("capture A h1", "hold A h4 10", "hold A h5 10", "release A h5"):
        run_step(world, step)
    # h1 was written as pending: deleted. h5 was placed and finished in between: never written.
    assert _checkpoint(world, [c.ReleaseHold("A", "h2")]) == ({"h4"}, {"h1", "h2"})
    assert _checkpoint(world, []) == (set(), set())


def test_a_checkpoint_undone_makes_its_holds_unsaved_again_and_forgets_holds_undone_with_it() -> None:
    world = World()
    for step in (*A100, "hold A h1 10", "hold A h2 10"):
        run_step(world, step)
    ledger = world.ledger
    ledger.begin()  # batch N: a checkpoint (h1, h2 pending), being committed ...
    world._apply(c.PlaceHold("A", "h3", 10, DEFAULT_TTL_S))
    assert {hold.id for hold in ledger.collect(checkpoint=True).holds} == {"h1", "h2", "h3"}
    ledger.begin()  # ... while batch N+1 captures h1, which N writes as pending
    world._apply(c.CaptureHold("A", "h1"))
    world._apply(c.PlaceHold("A", "h4", 10, DEFAULT_TTL_S))
    ledger.collect()
    ledger.rollback()  # N failed: both undone
    assert ("A", "h3") not in ledger.holds and ("A", "h4") not in ledger.holds
    assert ledger.unsaved_holds == 2  # h1, h2 again; h3 and h4 no longer exist
    run_step(world, "capture A h1")
    # After an undo the ledger cannot tell whether h1's row was written (N+1 counted on N):
    # it errs on the safe side, a delete that may find nothing. Never a stale pending row.
    assert _checkpoint(world, []) == ({"h2"}, {"h1"})


def _written(world: World, commands: list[c.Command], checkpoint: bool = False) -> set[str]:
    """One batch: the ids of the accounts whose row it writes."""
    return {account.id for account in _one_batch(world, commands, checkpoint).accounts}


def test_money_operations_leave_account_rows_to_the_checkpoint_and_write_the_rest_at_once() -> None:
    world = World()
    funding = system_account_id(SHARD, "USD", KIND_FUNDING)
    settlement = system_account_id(SHARD, "USD", KIND_SETTLEMENT)
    created = _written(world, [c.CreateAccount("A", None, "user", "EU", "USD", "A", 0, b"{}")])
    assert created == {"A", funding, settlement}  # created: written with the batch
    # A money operation writes the system account it moves money with (no journal rows of its
    # own), never the user account: its journal row carries the account's state.
    assert _written(world, [c.Credit("A", "c1", 100)]) == {funding}
    assert _written(world, [c.PlaceHold("A", "h1", 100, DEFAULT_TTL_S)]) == set()
    assert world.ledger.accounts["A"].exhausted and world.ledger.unsaved_accounts == 1
    # A change no journal row describes is written at once, whatever else the batch did.
    assert _written(world, [c.UpdateAccount("A", name="renamed"), c.ReleaseHold("A", "h1")]) == {"A"}
    assert _written(world, [c.Debit("A", "d1", 10)]) == {settlement}
    assert _written(world, [], checkpoint=True) == {"A"}  # the checkpoint catches the row up
    assert world.ledger.unsaved_accounts == 0
    assert _written(world, [], checkpoint=True) == set()


def test_an_undone_checkpoint_leaves_its_accounts_unsaved_for_the_next_one() -> None:
    world = World()
    for step in (*A100, "transfer A B 10"):
        run_step(world, step)
    ledger = world.ledger
    assert ledger.unsaved_accounts == 2
    ledger.begin()  # a checkpoint, being committed ...
    world._apply(c.Credit("B", "c9", 1))
    assert {a.id for a in ledger.collect(checkpoint=True).accounts} >= {"A", "B"}
    assert ledger.unsaved_accounts == 0
    ledger.begin()  # ... while the next batch opens C, undone with it
    world._apply(c.CreateAccount("C", None, "user", "EU", "USD", "C", 0, b"{}"))
    ledger.collect()
    ledger.rollback()
    assert "C" not in ledger.accounts
    assert ledger.unsaved_accounts == 2
    assert _written(world, [], checkpoint=True) == {"A", "B"}


def test_recovery_replays_account_state_from_journal_rows_newer_than_the_stored_row() -> None:
    """What the engine's recovery does with the journal after the checkpoint, on the ledger's
    side: the stored (stale) row plus each newer accepted row gives the live state back."""
    from balance.domain.ledger import RECOVERY_JOURNAL_FIELDS
    from balance.domain.model import Account
    from balance.storage.schema import JOURNAL_COLUMNS

    world = World()
    for step in (*A100, "hold A h1 60", "capture A h1 50"):
        run_step(world, step)
    ledger = world.ledger
    stale = {account_id: account.state() for account_id, account in ledger.accounts.items()}
    rows: list[tuple] = []  # type: ignore[type-arg]
    for command in (c.Credit("B", "c2", 5), c.Transfer("t1", "A", "B", 10, "USD"), c.PlaceHold("A", "h2", 40, 60)):
        for entry in _one_batch(world, [command]).entries:
            row = dict(zip(JOURNAL_COLUMNS, entry.row(), strict=True))
            rows.append(tuple(row[name] for name in RECOVERY_JOURNAL_FIELDS))
    live = {account_id: account.state() for account_id, account in ledger.accounts.items()}
    assert live["A"][10] is True  # h2 left nothing available: exhausted

    again = Ledger(SHARD)
    for account_id, state in stale.items():
        again.load_account(Account.from_row(state if account_id.startswith(("A", "B")) else live[account_id]))
    for hold in ledger.holds.values():
        if hold.status == "pending" and hold.id != "h2":
            again.load_hold(Hold.from_row(hold.state(), hold.account_id))
    for row in rows:
        again.replay_journal_row(row)
    assert {account_id: account.state() for account_id, account in again.accounts.items()} == live
    again.check_invariants()
    assert again.unsaved_accounts == 2
