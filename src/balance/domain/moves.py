"""Moving a partner with its whole subtree to another shard, in steps that each balance.

1. ``freeze`` (source, in memory): the subtree takes no new operation; they answer
   ``account_moving`` (the service waits and retries them). Legs of cross-shard movements
   already under way still land, so that nothing stays in flight.
2. ``export`` (source, a read): accounts, pending holds and (with the service's read of the
   journal) the first answers of the subtree's operation ids.
3. ``move_out`` (source, one commit): each balance goes to the shard's transit account of its
   currency, each pending hold ends ``moved``, each account becomes ``moved`` (its row and its
   history stay; its requests go to the new shard). Refused while money is in flight to or
   from the subtree (``move_blocked``) or if the subtree changed since the export (``move_stale``).
4. ``move_in`` (target, a commit per part: the root, then parts of accounts): the accounts
   come back to life there with the same ids, versions, balances (taken from the target's
   transit accounts), holds (same expiry, same ``placed_by``) and first answers. The same
   command on the source rolls a move back.

Each step is idempotent by the move id, so a crash anywhere is finished (or rolled back) by
running the step again. The journal rows of a move (``MOVE_OUT``, ``MOVE_IN``,
``MOVE_RECORD``) are neither history nor events: the versions go on from where they were.

Holds naming a destination move too (``docs/moves.md``). What records that a hold names an
account (``Ledger.inbound_holds`` for holds of the same shard, the ``inbound`` marks of holds of
other shards) follows the hold and the account: ``move_out`` turns the mark of a leaving hold
naming an account that stays into a mark of a hold of another shard (the same commit: no
moment without one), ``move_in`` marks the arriving holds and the holds of its shard naming an
arriving account as holds of the same shard, and the service marks the holds of other shards
naming the moved accounts on their new shard at the switch (``holds_naming``, ``forget_marks``).
While the subtree is frozen a capture paying into it waits (``account_moving``); a leg already
under way lands (the move then exports again); after the move a hold naming a moved account
pays it on its new shard, through the transit accounts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain import move_records
from balance.domain.cross_shard import INBOUND_HOLD, inbound_hold_mark
from balance.domain.model import (
    ACCOUNT_FIELDS,
    ACCOUNT_ID,
    HOLD_MOVED,
    HOLD_PENDING,
    KIND_TRANSIT,
    MOVE_IN,
    MOVE_OUT,
    MOVE_RECORD,
    STATUS_MOVED,
    Account,
    Entry,
    Hold,
)
from balance.domain.outcomes import Outcome, Record, reject

if TYPE_CHECKING:
    from balance.domain.ledger import Ledger

# Between the service and a shard only (no route answers them yet): something keeps the
# subtree here (the detail says what), or the subtree changed since it was exported.
MOVE_BLOCKED = "move_blocked"
MOVE_STALE = "move_stale"
MOVED_AWAY = ""
BARRIER = "after:"  # the description of a subtree's arriving root row: "after:<from shard>:<its MoveOut seq>"  # ``Ledger.moving`` value of an account that now lives on another shard
ACCOUNT_PARENT = ACCOUNT_FIELDS.index("parent_id")
MOVE_ID_MAX = 40  # fits the journal's op_id column with room, and op keys below 160


def move_key(direction: str, move_id: str) -> str:
    """The op key of a move step's record on the subtree's root (``mvout``, ``mvin``, ``mvback``)."""
    return f"{direction}:{move_id}"


def fingerprint_of(move_id: str, root_id: str) -> int:
    return c._fingerprint(("move", move_id, root_id))  # noqa: SLF001 (the one fingerprint function)


def _own(command: Any) -> tuple[str | None, ...]:
    return (command.account_id,)


def _none(command: Any) -> tuple[str | None, ...]:
    return ()


# The accounts a command acts on that a move concerns, by the command's type (one dict get on
# the path of every operation of a shard that has moved accounts out). Legs that finish a
# movement already under way are let through: they are what a move waits for.
_SUBJECTS: dict[type, Callable[[Any], tuple[str | None, ...]]] = {
    c.Credit: _own, c.Debit: _own, c.CaptureHold: _own, c.ReleaseHold: _own, c.ExpireHold: _own,
    c.UpdateAccount: _own, c.CreateKey: _own, c.RevokeKey: _own, c.RecordResultConflict: _own,
    # A destination on another shard (``remote_destination``) may be a row that moved away from here.
    c.PlaceHold: lambda cmd: (cmd.account_id, cmd.destination_account_id if cmd.remote_destination is None else None),
    c.Transfer: lambda cmd: (cmd.from_account_id, cmd.to_account_id),
    c.TransferOut: lambda cmd: (cmd.transfer.from_account_id,),
    c.TransferIn: _none,  # a leg under way lands on a frozen account, not on a moved one (``refusal``)
    c.CreateAccount: lambda cmd: (cmd.parent_id, cmd.account_id),
    c.CompleteTransfer: _none, c.ReturnTransfer: _none, c.ResumeLeg: _none,
    c.FreezeMove: _none, c.ThawMove: _none, c.MoveOut: _none, c.MoveIn: _none,
}  # fmt: skip


def subjects(command: object) -> tuple[str | None, ...]:
    return _SUBJECTS.get(type(command), _none)(command)


def refusal(ledger: Ledger, command: object) -> Outcome | None:
    """``account_moving`` or ``account_moved`` if the command touches such an account (only
    called while ``ledger.moving`` is not empty: one truth test otherwise)."""
    moving = ledger.moving
    for account_id in subjects(command):
        if account_id is None:
            continue
        move = moving.get(account_id)
        if move is None:
            continue
        if move == MOVED_AWAY:
            return reject(e.ACCOUNT_MOVED, f"account {account_id} was moved to another shard; retry")
        return reject(e.ACCOUNT_MOVING, f"account {account_id} is moving to another shard; retry shortly")
    kind = type(command)
    if kind is c.CaptureHold:  # paying a frozen destination waits (a moved one is paid where it lives)
        assert isinstance(command, c.CaptureHold)
        hold = ledger.holds.find(command.account_id, command.hold_id)
        destination = None if hold is None else hold.destination_account_id
        if destination is not None and moving.get(destination, MOVED_AWAY) != MOVED_AWAY:
            return reject(e.ACCOUNT_MOVING, f"account {destination} is moving to another shard; retry shortly")
    elif kind is c.TransferIn:  # a leg under way lands on a frozen account; a moved one is elsewhere
        assert isinstance(command, c.TransferIn)
        if moving.get(command.transfer.to_account_id) == MOVED_AWAY:
            to_account_id = command.transfer.to_account_id
            return reject(e.ACCOUNT_MOVED, f"account {to_account_id} was moved to another shard; retry")
    return None


def subtree(ledger: Ledger, root_id: str) -> list[str]:
    """``root_id`` and its descendants on this shard, parents before children (O(accounts):
    a move is rare)."""
    children: dict[str, list[str]] = {}
    for account in ledger.accounts.values():
        if account.parent_id is not None:
            children.setdefault(account.parent_id, []).append(account.id)
    found, i = [root_id], 0
    while i < len(found):
        found.extend(sorted(children.get(found[i], ())))
        i += 1
    return found


def freeze(ledger: Ledger, cmd: c.FreezeMove, now: int) -> Outcome:
    root = ledger.accounts.get(cmd.root_id)
    if root is None:
        return reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.root_id} not found")
    if root.is_system:
        return reject(e.VALIDATION_ERROR, "system accounts do not move")
    if root.status == STATUS_MOVED:
        return reject(e.ACCOUNT_MOVED, f"account {cmd.root_id} was moved to another shard")
    ids = subtree(ledger, cmd.root_id)
    for account_id in ids:
        move = ledger.moving.get(account_id)
        if move is not None and move != cmd.move_id:
            return reject(MOVE_BLOCKED, f"account {account_id} is part of another move")
    for account_id in ids:
        ledger.set_moving(account_id, cmd.move_id)
    return Outcome(200)


def thaw(ledger: Ledger, cmd: c.ThawMove, now: int) -> Outcome:
    for account_id in subtree(ledger, cmd.root_id):
        if ledger.moving.get(account_id) == cmd.move_id:
            ledger.set_moving(account_id, None)
    return Outcome(200)


def export(ledger: Ledger, move_id: str, root_id: str) -> tuple[list[tuple], list[tuple]] | None:  # type: ignore[type-arg]
    """(account states parents first, pending hold states) of the frozen subtree, as committed
    (the freeze's reply came after every earlier batch was durable and nothing changes it
    since); None if it is not frozen by ``move_id`` (a restart thawed it)."""
    ids = subtree(ledger, root_id)
    if any(ledger.moving.get(account_id) != move_id for account_id in ids):
        return None
    members = set(ids)
    accounts = [ledger.accounts[account_id].state() for account_id in ids]
    holds = [
        hold.state() for hold in ledger.holds.values() if hold.status == HOLD_PENDING and hold.account_id in members
    ]
    return accounts, holds


def _blocked(ledger: Ledger, ids: list[str]) -> str | None:
    """Why the subtree cannot leave now, or None (holds naming a destination move with it)."""
    for account_id in ids:
        if ledger.money_in_flight(account_id):
            return f"money is in flight to or from account {account_id}; retry"
    return None


def _hold_leaves(ledger: Ledger, hold: Hold, members: set[str]) -> None:
    """A pending hold of the subtree leaves with it. Naming an account that stays here, its
    mark there becomes a hold of another shard's (in the same commit: no moment without a
    mark); naming one that leaves too, the target marks it; naming one of another shard, the
    mark there stays (the target announces the hold again)."""
    destination = hold.destination_account_id
    if destination is None or not ledger.lives_here(destination):
        return
    ledger.mark(ledger.inbound_holds, destination, f"{hold.account_id}:{hold.id}", False)
    if destination not in members:
        ledger.mark(ledger.inbound, destination, inbound_hold_mark(hold.account_id, hold.id), True)


def _mark_arrivals(ledger: Ledger, arrived: set[str], holds: list[Hold]) -> None:
    """After a subtree arrived: the holds naming a destination that lives here, among those that
    arrived and those of this shard naming an arrived account, are marked as holds of this
    shard (a mark of them as another shard's goes); the arrived holds naming an account of
    another shard are announced again (``changes.remote_holds``: its mark there stays, and it
    now counts among this shard's). O(holds of the shard): a move is rare."""
    for account_id in arrived:  # marks of an earlier stay here, settled while away
        for op in list(ledger.inbound_holds.get(account_id, ())):
            ledger.mark(ledger.inbound_holds, account_id, op, False)
    naming = [h for h in ledger.holds.values() if h.status == HOLD_PENDING and h.destination_account_id in arrived]
    for hold in (*holds, *naming):
        destination = hold.destination_account_id
        if destination is None:
            continue
        ledger.count_inbound_hold(hold, True)
        if ledger.lives_here(destination):
            ledger.mark(ledger.inbound, destination, inbound_hold_mark(hold.account_id, hold.id), False)
    arriving = {(hold.account_id, hold.id) for hold in holds}
    for hold in naming:  # no longer holds of this shard naming another's account (a fleet node's index)
        if (hold.account_id, hold.id) not in arriving and hold.destination_account_id is not None:
            ledger.changes.remote_holds.append((hold.account_id, hold.id, hold.destination_account_id, False))


def _destination_leaves(ledger: Ledger, account_id: str) -> None:
    """An account leaves: the holds of this shard naming it now name another shard's account
    (``changes.remote_holds``: a fleet node counts them among its holds naming other shards)."""
    for op in ledger.inbound_holds.get(account_id, ()):
        holder, _, hold_id = op.partition(":")
        ledger.changes.remote_holds.append((holder, hold_id, account_id, True))


def holds_naming(ledger: Ledger, account_ids: set[str]) -> list[tuple[str, str, str]]:
    """(account, hold id, destination) of this shard's holds naming one of ``account_ids`` that
    are pending in memory or as committed (a batch settling one may still be undone)."""
    found = []
    for hold in ledger.holds.values():
        destination = hold.destination_account_id
        if destination in account_ids and destination is not None:
            if ledger.hold_may_be_pending(hold.account_id, hold.id, destination):
                found.append((hold.account_id, hold.id, destination))
    return found


def forget_marks(ledger: Ledger, account_ids: set[str]) -> None:
    """The moved accounts' marks of holds naming them, on a shard they no longer live on (their
    new shard keeps them from now on); outside a batch."""
    for account_id in account_ids:
        if ledger.lives_here(account_id):
            continue
        for op in list(ledger.inbound_holds.get(account_id, ())):
            ledger.mark(ledger.inbound_holds, account_id, op, False)
        for op in [op for op in ledger.inbound.get(account_id, ()) if op.startswith(INBOUND_HOLD)]:
            ledger.mark(ledger.inbound, account_id, op, False)


def move_out(ledger: Ledger, cmd: c.MoveOut, now: int) -> Outcome:
    root = ledger.accounts.get(cmd.root_id)
    if root is None:
        return reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.root_id} not found")
    key, fingerprint = (root.id, move_key("mvout", cmd.move_id)), fingerprint_of(cmd.move_id, cmd.root_id)
    if (early := ledger.replay(key, fingerprint)) is not None:
        return early
    ids = subtree(ledger, cmd.root_id)
    if any(ledger.moving.get(account_id) != cmd.move_id for account_id in ids):
        return reject(MOVE_STALE, "the subtree is not frozen for this move (a restart?); freeze and export again")
    versions = dict(cmd.versions)
    if versions.keys() != set(ids) or any(ledger.accounts[a].version != versions[a] for a in ids):
        return reject(MOVE_STALE, "the subtree changed since it was exported; export again")
    if (why := _blocked(ledger, ids)) is not None:
        return reject(MOVE_BLOCKED, why)
    members = set(ids)
    pending = [hold for hold in ledger.holds.values() if hold.status == HOLD_PENDING and hold.account_id in members]
    for hold in pending:
        _hold_leaves(ledger, hold, members)
        ledger.touch_hold(hold)
        hold.status, hold.updated_at = HOLD_MOVED, now
        ledger.changes.entries.append(
            _hold_entry(ledger, MOVE_OUT, cmd.move_id, hold, ledger.accounts[hold.account_id])
        )
    for account_id in ids:
        _destination_leaves(ledger, account_id)
        account = ledger.accounts[account_id]
        ledger.touch(account)
        amount = account.balance
        transit = ledger.system_account(account.currency, KIND_TRANSIT, now)
        ledger.touch(transit)
        transit.balance += amount
        transit.version += 1
        transit.updated_at = now
        account.balance, account.reserved, account.status, account.exhausted = 0, 0, STATUS_MOVED, False
        ledger.frames[-1].rewritten.add(account_id)  # its status is not in a journal row
        ledger.set_moving(account_id, MOVED_AWAY)
        entry = _account_entry(ledger, MOVE_OUT, cmd.move_id, account, amount, transit.id, now)
        if account_id == root.id:
            entry.op_key, entry.fingerprint = key[1], fingerprint
            root_entry = entry
    body = b'{"seq":%d}' % (ledger.next_seq - 1)  # the last row of the move out: the events' barrier
    root_entry.result = body  # what a replay answers, also after a restart
    if cmd.record:  # the move's durable record, in this commit (``move_records``)
        ledger.changes.moves.extend(move_records.stamped(cmd.record, ledger.next_seq - 1, now))
    return _recorded(ledger, key, fingerprint, body)


def move_in_key(cmd: c.MoveIn) -> tuple[str, str] | None:
    """The op key of an arrival's part 0 (its root, as before parts existed); later parts
    have none: they are idempotent by what already arrived (``move_in``)."""
    if cmd.part != 0:
        return None
    return cmd.root_id, move_key("mvin" if cmd.tag == "in" else "mvback", cmd.move_id)


def move_in(ledger: Ledger, cmd: c.MoveIn, now: int) -> Outcome:
    """The subtree arrives (on the target), or comes back (on the source, ``tag`` "back"), in
    parts (``MoveIn.part``), each balanced through the transit accounts. Part 0 is the root
    alone, idempotent by its op key, and refused if any account of the move lives here; a
    later part takes only its accounts that do not live here yet (none did when part 0 came,
    and until the switch nothing but this move makes one live here), with their holds and
    first answers: sent again after a crash, or cut differently, it adds nothing twice."""
    key, fingerprint = move_in_key(cmd), fingerprint_of(cmd.move_id, cmd.root_id)
    if key is not None and (early := ledger.replay(key, fingerprint)) is not None:
        return early
    if key is not None and (not cmd.accounts or cmd.accounts[0][ACCOUNT_ID] != cmd.root_id):
        return reject(e.VALIDATION_ERROR, "a move's accounts begin with its root")
    if key is None:  # a later part: what arrived already is left out
        already: set[str] = set()
        for state in cmd.accounts:
            here = ledger.accounts.get(state[ACCOUNT_ID])
            if here is not None and here.status != STATUS_MOVED:
                already.add(here.id)
        if already:
            cmd = c.MoveIn(
                cmd.move_id, cmd.root_id, tuple(s for s in cmd.accounts if s[ACCOUNT_ID] not in already),
                tuple(h for h in cmd.holds if h[0] not in already), tuple(r for r in cmd.records if r[0] not in already),
                cmd.tag, cmd.from_shard, cmd.source_seq, cmd.part,
            )  # fmt: skip
        if not cmd.accounts:
            return Outcome(200)
    arriving_ids = {state[ACCOUNT_ID] for state in cmd.accounts}
    for state in cmd.accounts:
        here = ledger.accounts.get(state[ACCOUNT_ID])
        if here is not None and here.status != STATUS_MOVED:
            return reject(MOVE_BLOCKED, f"account {here.id} already lives on this shard")
        if state[ACCOUNT_ID] != cmd.root_id and state[ACCOUNT_PARENT] not in arriving_ids:
            parent = ledger.accounts.get(state[ACCOUNT_PARENT])  # arrived with an earlier part
            if key is not None or parent is None or parent.status == STATUS_MOVED:
                return reject(e.VALIDATION_ERROR, f"account {state[ACCOUNT_ID]}: its parent is not in the move")
    for account_id in cmd.later:  # the later parts' accounts: refused now or never
        here = ledger.accounts.get(account_id)
        if here is not None and here.status != STATUS_MOVED:
            return reject(MOVE_BLOCKED, f"account {here.id} already lives on this shard")
    accounts: dict[str, Account] = {}
    for state in cmd.accounts:
        account_id = state[ACCOUNT_ID]
        here = ledger.accounts.get(account_id)
        arriving = Account(*state)
        if here is None:
            ledger.undo_accounts.setdefault(account_id, None)
            ledger.accounts[account_id] = here = arriving
        else:
            ledger.touch(here)
            here.restore(arriving.state())
            ledger.frames[-1].rewritten.add(account_id)
        here.reserved = 0  # counted again with its holds below
        transit = ledger.system_account(here.currency, KIND_TRANSIT, now)
        ledger.touch(transit)
        transit.balance -= here.balance
        transit.version += 1
        transit.updated_at = now
        ledger.set_moving(account_id, None)
        accounts[account_id] = here
    arrived_holds = []
    for state in cmd.holds:
        account = accounts.get(state[0])
        e.require(account is not None and state[5] == HOLD_PENDING, f"hold {state[1]}: not a pending hold of the move")
        assert account is not None
        hold = _arrive_hold(ledger, state)
        account.reserved += hold.amount
        arrived_holds.append(hold)
    _mark_arrivals(ledger, set(accounts), arrived_holds)
    for account in accounts.values():
        entry = _account_entry(ledger, MOVE_IN, cmd.move_id, account, account.balance, None, now)
        if key is not None and account.id == cmd.root_id:
            entry.op_key, entry.fingerprint = key[1], fingerprint
            if cmd.from_shard >= 0:  # the events' barrier (``barrier_of``)
                entry.description = f"{BARRIER}{cmd.from_shard}:{cmd.source_seq}"
    for account_id, op_key, record_fp, status, body in cmd.records:
        if account_id not in accounts or (account_id, op_key) in ledger.records or op_key.startswith("mv"):
            continue  # known here already (a move back: its journal has it), or a move's own
        ledger.remember((account_id, op_key), Record(record_fp, status, body))
        account = accounts[account_id]
        ledger.changes.entries.append(Entry(
            ledger._seq(), account_id, op_key, MOVE_RECORD, cmd.move_id, status, "", record_fp, 0,  # noqa: SLF001
            account.currency, None, None, account.balance, account.reserved, account.version, now, "", b"{}", body,
        ))  # fmt: skip
    for hold_state in cmd.holds:  # the journal rows that place them again at recovery
        arrived = ledger.holds.find(hold_state[0], hold_state[1])
        assert arrived is not None
        ledger.changes.entries.append(_hold_entry(ledger, MOVE_IN, cmd.move_id, arrived, accounts[arrived.account_id]))
    return Outcome(200) if key is None else _recorded(ledger, key, fingerprint)


def _arrive_hold(ledger: Ledger, state: tuple) -> Hold:  # type: ignore[type-arg]
    found = ledger.holds.find(state[0], state[1])
    if found is not None:  # it left this shard before (``moved``): the same hold comes back
        e.require(found.status == HOLD_MOVED, f"hold {state[1]} of {state[0]} already here, {found.status}")
        ledger.touch_hold(found)  # (moved: "may have a row", see ``Ledger.touch_hold``)
        found.amount, found.captured_amount, found.status = state[2], 0, HOLD_PENDING
        ledger.set_hold_expiry(found, state[7])
        found.updated_at = state[9]
        ledger.expiry.add(found)
        return found
    hold = Hold(*state)
    ledger.undo_holds[(hold.account_id, hold.id)] = None
    ledger.holds.put(hold)
    ledger.unsaved[hold] = False
    ledger.expiry.add(hold)
    return hold


def _recorded(ledger: Ledger, key: tuple[str, str], fingerprint: int, body: bytes = b"") -> Outcome:
    record = Record(fingerprint, 200, body)
    ledger.remember(key, record)
    return Outcome(200, record=record)


def _account_entry(
    ledger: Ledger, kind: str, move_id: str, account: Account, amount: int, counterparty: str | None, now: int
) -> Entry:
    """An account's row of a move: its state after the step (recovery takes the account's row,
    written in the same commit: the version does not change)."""
    entry = Entry(
        ledger._seq(), account.id, None, kind, move_id, 200, "", 0, amount, account.currency, counterparty,  # noqa: SLF001
        None, account.balance, account.reserved, account.version, now, "", b"{}",
    )  # fmt: skip
    ledger.changes.entries.append(entry)
    return entry


def _hold_entry(ledger: Ledger, kind: str, move_id: str, hold: Hold, account: Account) -> Entry:
    """A hold's row of a move: its fields, so that recovery places it again (``MOVE_IN``, its
    ``created_at`` the hold's own) or ends it ``moved`` (``MOVE_OUT``)."""
    return Entry(
        ledger._seq(), hold.account_id, None, kind, move_id, 200, "", 0, hold.amount, hold.currency,  # noqa: SLF001
        None, hold.id, account.balance, account.reserved, account.version, hold.created_at, hold.description,
        hold.metadata, b"", hold.expires_at, hold.destination_account_id, hold.placed_by,
    )  # fmt: skip


def lookups_needed(ledger: Ledger, cmd: c.MoveOut | c.MoveIn) -> list[tuple[str, str]]:
    """The step's own record (a replay after a restart), and for a ``MoveIn`` the first answers
    it carries that this shard may already store (a subtree coming back)."""
    if isinstance(cmd, c.MoveOut):
        out = (cmd.root_id, move_key("mvout", cmd.move_id))
        return [] if out in ledger.records else [out]
    key = move_in_key(cmd)
    if key is not None and key in ledger.records:
        return []
    here = {state[ACCOUNT_ID] for state in cmd.accounts if state[ACCOUNT_ID] in ledger.accounts}
    # An account that lived here before: its journal may know them.
    known = [(r[0], r[1]) for r in cmd.records if r[0] in here and (r[0], r[1]) not in ledger.records]
    return known if key is None else [key, *known]


def barrier_of(kind: str, description: str) -> tuple[int, int] | None:
    """(shard, seq) a journal row of a subtree's arrival waits for: the shard it left and the
    seq of its leaving there. Events of the subtree on this shard are published only once that
    shard's are published up to there (the old shard's events first, then the new one's)."""
    if kind != MOVE_IN or not description.startswith(BARRIER):
        return None
    shard, _, seq = description[len(BARRIER) :].partition(":")
    return int(shard), int(seq)
