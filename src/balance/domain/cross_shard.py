"""Money moving between accounts of two shards: a transfer, or the capture of a hold whose
destination lives on another shard.

The source leg (``transfer_out``, or ``hold_rules.capture_hold``) moves the money from the
source into the source shard's transit account and leaves a pending-transfer row; the target
leg (``transfer_in``) takes it from the target shard's transit account to the target, or
refuses it (the target is closed, say); then, back on the source, ``complete_transfer``
makes the source's outcome final, or ``return_transfer`` gives the money back to the source
and records the target's refusal as the operation's answer. Each step is one durable commit
on one shard, so each shard's books balance at every step, and each is idempotent, so a
crash anywhere is finished exactly once by a retry or by recovery (``resume_leg``).

The source leg checks nothing of the target: a replay answers first, whatever became of the
target since; what the target refuses is found on the target's own shard, by its leg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain import limits
from balance.domain.ids import op_key_of
from balance.domain.model import (
    CAPTURE,
    HOLD_CAPTURED,
    HOLD_RELEASED,
    KIND_TRANSIT,
    RELEASE,
    STATUS_ACTIVE,
    STATUS_CLOSED,
    TRANSFER,
    Entry,
)
from balance.domain.outcomes import Outcome, reject

if TYPE_CHECKING:
    from balance.domain.ledger import Ledger

TRANSFER_IN_PROGRESS = 202  # a cross-shard movement whose target leg is not yet settled
TRANSFER_RETURN = "transfer_return"  # journal kind: money a target refused, back on its source
# The pending-transfer id of a hold's capture leg: '^' is never in a client's id, so it cannot
# meet a transfer's id in the pending-transfers table.
CAPTURE_LEG = "^capture:"
SYSTEM_ID_PREFIX = "SYS-"  # every shard's system accounts (``ids.system_account_id``)
# The prefix of an ``inbound`` mark that stands for a pending hold of another shard (a
# transfer's marks begin with its source account's id, never with this).
INBOUND_HOLD = "hold:"


def inbound_hold_mark(account_id: str, hold_id: str) -> str:
    """The ``inbound`` mark, on its destination's shard, of a pending hold of another shard."""
    return f"{INBOUND_HOLD}{account_id}:{hold_id}"


def capture_leg_id(hold_id: str) -> str:
    return CAPTURE_LEG + hold_id


def is_capture_leg(op_id: str) -> bool:
    return op_id.startswith(CAPTURE_LEG)


def leg_op_key(op_id: str) -> str:
    """The source's operation key of a pending leg: the transfer's, or the hold capture's."""
    if op_id.startswith(CAPTURE_LEG):
        return op_key_of(CAPTURE, op_id[len(CAPTURE_LEG) :])
    return op_key_of(TRANSFER, op_id)


def leg_status(op_id: str) -> int:
    """The success status of the operation a leg belongs to (a capture answers 200)."""
    return 200 if op_id.startswith(CAPTURE_LEG) else 201


def transfer_out(ledger: Ledger, cmd: c.TransferOut, now: int) -> Outcome:
    """The source leg of a cross-shard transfer (the target is checked by its own leg)."""
    t = cmd.transfer
    source = ledger.accounts.get(t.from_account_id)
    if source is None:
        return reject(e.ACCOUNT_NOT_FOUND, f"account {t.from_account_id} not found")
    key, fingerprint = (source.id, op_key_of(TRANSFER, t.op_id)), t.fingerprint()
    if (early := ledger.replay(key, fingerprint)) is not None:
        return early
    e.require(not ledger.lives_here(t.to_account_id), "TransferOut to an account of this shard")
    if source.is_system or t.to_account_id.startswith(SYSTEM_ID_PREFIX):
        return reject(e.VALIDATION_ERROR, "system accounts cannot take part in transfers")
    if t.currency != source.currency:
        return ledger.refuse_recorded(
            key,
            fingerprint,
            t,
            source,
            e.CURRENCY_MISMATCH,
            f"{t.currency} transfer from a {source.currency} account",
            now,
        )
    if source.status != STATUS_ACTIVE:
        return ledger.refuse_recorded(
            key, fingerprint, t, source, e.ACCOUNT_INACTIVE, f"account {source.id} is {source.status}", now
        )
    if source.available < t.amount:
        return ledger.insufficient(key, fingerprint, t, source, now)
    transit = ledger.system_account(source.currency, KIND_TRANSIT, now)
    ledger.move(source, transit, t.amount, now)
    entry = ledger.entries(
        key, fingerprint, TRANSFER, t.op_id, t.amount, source, transit, None, t.description, t.metadata, now
    )
    entry.counterparty_account_id = t.to_account_id  # the real counterparty, on its own shard
    start_leg(ledger, source.id, t.op_id, t.to_account_id, t.amount, t.currency, t.description, t.metadata, now)
    return ledger.accepted(TRANSFER_IN_PROGRESS, key, fingerprint, entry, (source,))


def start_leg(
    ledger: Ledger, source_id: str, op_id: str, to_account_id: str, amount: int, currency: str,
    description: str, metadata: bytes, now: int,
) -> None:  # fmt: skip
    """The pending-transfer row of a source leg, and the mark that keeps its source open."""
    ledger.changes.transfers_started.append(
        (source_id, op_id, to_account_id, amount, currency, description, metadata, now)
    )
    ledger.mark(ledger.outbound, source_id, op_id, True)


def transfer_in(ledger: Ledger, cmd: c.TransferIn, now: int) -> Outcome:
    """The target leg: money leaves this shard's transit account for the target, or is refused.

    Refusals that can change later (closed, frozen, over the limit) are recorded, so a second
    try of the same leg answers the same (the source may already have taken the money back).
    The others cannot change: an account id never comes to exist later, a currency never
    changes. A frozen target still takes a hold's capture (a hold naming it settles normally);
    a closed one takes nothing.
    """
    t = cmd.transfer
    key, fingerprint = (t.to_account_id, op_key_of("transfer_in", f"{t.from_account_id}:{t.op_id}")), t.fingerprint()
    if (early := ledger.replay(key, fingerprint)) is not None:
        return early
    target = ledger.accounts.get(t.to_account_id)
    if target is None:
        return reject(e.ACCOUNT_NOT_FOUND, f"account {t.to_account_id} not found")
    if target.is_system:
        return reject(e.VALIDATION_ERROR, "system accounts cannot take part in transfers")
    if target.currency != t.currency:
        return reject(e.CURRENCY_MISMATCH, f"{t.currency} transfer to a {target.currency} account")
    capture = is_capture_leg(t.op_id)
    if target.status == STATUS_CLOSED or (target.status != STATUS_ACTIVE and not capture):
        return _refuse_leg(
            ledger, key, fingerprint, t, e.ACCOUNT_INACTIVE, f"account {target.id} is {target.status}", now
        )
    if target.balance + t.amount > limits.BALANCE_MAX:
        return _refuse_leg(
            ledger, key, fingerprint, t, e.LIMIT_EXCEEDED, "amount would take the balance past 2^62", now
        )
    transit = ledger.system_account(t.currency, KIND_TRANSIT, now)
    ledger.move(transit, target, t.amount, now)
    op_id = t.op_id[len(CAPTURE_LEG) :] if capture else t.op_id
    entry = ledger.entries(
        key, fingerprint, TRANSFER, op_id, t.amount, target, transit, None, t.description, t.metadata, now
    )
    entry.counterparty_account_id = t.from_account_id
    return ledger.accepted(201, key, fingerprint, entry, (target,))


def _refuse_leg(
    ledger: Ledger, key: tuple[str, str], fingerprint: int, t: c.Transfer, code: str, detail: str, now: int
) -> Outcome:
    """A target leg's recorded refusal (a journal row on the target, outside its history)."""
    outcome = ledger.refuse_recorded(key, fingerprint, t, ledger.accounts[t.to_account_id], code, detail, now)
    assert outcome.entry is not None
    outcome.entry.op_id = t.op_id[len(CAPTURE_LEG) :] if is_capture_leg(t.op_id) else t.op_id  # fits its column
    outcome.entry.kind = TRANSFER
    return outcome


def complete_transfer(ledger: Ledger, cmd: c.CompleteTransfer, now: int) -> Outcome:
    """The target leg landed: the source's outcome becomes the final answer."""
    op_key = leg_op_key(cmd.op_id)
    record = ledger.records.get((cmd.from_account_id, op_key))
    if record is not None:
        if record.status != TRANSFER_IN_PROGRESS:
            return Outcome(200)  # completed already
        ledger.frames[-1].restores.append((record, record.status, record.body))
        record.status, record.body = cmd.status, cmd.body
    ledger.changes.transfers_completed.append((cmd.body, cmd.from_account_id, cmd.op_id, cmd.status, op_key))
    ledger.mark(ledger.outbound, cmd.from_account_id, cmd.op_id, False)
    return Outcome(200)


def return_transfer(ledger: Ledger, cmd: c.ReturnTransfer, now: int) -> Outcome:
    """The target refused its leg: transit -> source, and the refusal becomes the operation's
    recorded answer, as a refusal on one shard would be.

    A transfer's rows (the source leg's and the return's) then leave the source's history, as
    any refusal's (their status is the refusal's); the account's row is written with the batch,
    since recovery replays accepted rows only. A hold's capture becomes a release of the hold
    (its row carries the money back), so the hold ends released and the payer whole.
    """
    t = cmd.transfer
    op_key = leg_op_key(t.op_id)
    record = ledger.records.get((t.from_account_id, op_key))
    if record is None:  # read back by ``Ledger.lookups_needed``: not in storage either
        return reject(e.UNAVAILABLE, f"operation {t.op_id} was not found; retry with the same id")
    if record.status != TRANSFER_IN_PROGRESS:
        return Outcome(200)  # settled already
    source = ledger.accounts[t.from_account_id]
    transit = ledger.system_account(t.currency, KIND_TRANSIT, now)
    ledger.move(transit, source, t.amount, now)
    ledger.frames[-1].restores.append((record, record.status, record.body))
    record.status, record.body = cmd.status, cmd.body
    ledger.changes.transfers_completed.append((cmd.body, source.id, t.op_id, cmd.status, op_key))
    ledger.mark(ledger.outbound, source.id, t.op_id, False)
    if not is_capture_leg(t.op_id):
        entry = Entry(
            ledger.next_seq, source.id, None, TRANSFER_RETURN, t.op_id, cmd.status, cmd.code, record.fingerprint,
            t.amount, source.currency, t.to_account_id, None, source.balance, source.reserved, source.version, now,
            t.description, t.metadata,
        )  # fmt: skip
        ledger.next_seq += 1
        ledger.changes.entries.append(entry)
        ledger.frames[-1].rewritten.add(source.id)
        return Outcome(200)
    hold_id = t.op_id[len(CAPTURE_LEG) :]
    hold = ledger.holds.find(source.id, hold_id)
    e.require(hold is not None and hold.status == HOLD_CAPTURED, f"capture of {hold_id}: hold not captured")
    assert hold is not None
    ledger.touch_hold(hold)
    hold.status, hold.captured_amount, hold.updated_at = HOLD_RELEASED, 0, now
    key = (source.id, op_key_of(RELEASE, hold_id))
    fingerprint = c.ReleaseHold(source.id, hold_id).fingerprint()
    entry = ledger.entries(
        key, fingerprint, RELEASE, hold_id, hold.amount, source, None, hold_id, hold.description, hold.metadata, now
    )
    entry.counterparty_account_id = t.to_account_id
    outcome = ledger.accepted(200, key, fingerprint, entry, (source,))
    outcome.hold = hold
    return outcome


def resume_leg(ledger: Ledger, cmd: c.ResumeLeg, now: int) -> Outcome:
    """The recorded outcome of a pending leg's source operation (loaded by ``lookups_needed``)."""
    record = ledger.records.get((cmd.from_account_id, leg_op_key(cmd.op_id)))
    if record is None:
        return reject(e.UNAVAILABLE, f"the outcome of {cmd.op_id} was not found; retry")
    return Outcome(record.status, replay=record)
