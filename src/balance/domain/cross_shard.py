"""A transfer between accounts of two shards: the source leg (``transfer_out``, into the
source shard's transit account), the target leg (``transfer_in``, out of the target shard's
transit account), and ``complete_transfer`` (the source's outcome becomes the final one).

The target is checked first, on its own shard's committed state (``transfer_target_refusal``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain.ids import op_key_of
from balance.domain.model import KIND_TRANSIT, STATUS_ACTIVE, TRANSFER, Account
from balance.domain.outcomes import Outcome, reject

if TYPE_CHECKING:
    from balance.domain.ledger import Ledger

TRANSFER_IN_PROGRESS = 202  # a cross-shard transfer whose second leg is not yet confirmed


def transfer_target_refusal(target: Account | None, transfer: c.Transfer) -> e.Rejection | None:
    """Why the target of a cross-shard transfer cannot take it (checked on its own shard,
    on committed state, before the source leg); None if it can."""
    if target is None:
        return e.Rejection(e.ACCOUNT_NOT_FOUND, f"account {transfer.to_account_id} not found")
    if target.is_system:
        return e.Rejection(e.VALIDATION_ERROR, "system accounts cannot take part in transfers")
    if target.currency != transfer.currency:
        return e.Rejection(e.CURRENCY_MISMATCH, f"{transfer.currency} transfer to a {target.currency} account")
    if target.status != STATUS_ACTIVE:
        return e.Rejection(e.ACCOUNT_INACTIVE, f"account {target.id} is {target.status}")
    return None


def transfer_out(ledger: Ledger, cmd: c.TransferOut, now: int) -> Outcome:
    """The source leg of a cross-shard transfer. The service checked the target beforehand."""
    t = cmd.transfer
    source = ledger.accounts.get(t.from_account_id)
    if source is None:
        return reject(e.ACCOUNT_NOT_FOUND, f"account {t.from_account_id} not found")
    key, fingerprint = (source.id, op_key_of(TRANSFER, t.op_id)), t.fingerprint()
    if (early := ledger.replay(key, fingerprint)) is not None:
        return early
    e.require(t.to_account_id not in ledger.accounts, "TransferOut to an account of this shard")
    if source.is_system:
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
    ledger.changes.transfers_started.append(
        (source.id, t.op_id, t.to_account_id, t.amount, t.currency, t.description, t.metadata, now)
    )
    return ledger.accepted(TRANSFER_IN_PROGRESS, key, fingerprint, entry, (source,))


def transfer_in(ledger: Ledger, cmd: c.TransferIn, now: int) -> Outcome:
    """The target leg: money leaves this shard's transit account for the target."""
    t = cmd.transfer
    target = ledger.accounts.get(t.to_account_id)
    e.require(target is not None, f"transfer {t.op_id}: target {t.to_account_id} vanished")
    assert target is not None
    key = (target.id, op_key_of("transfer_in", f"{t.from_account_id}:{t.op_id}"))
    if (early := ledger.replay(key, t.fingerprint())) is not None:
        return early
    e.require(target.currency == t.currency, f"transfer {t.op_id}: target currency changed")
    transit = ledger.system_account(t.currency, KIND_TRANSIT, now)
    ledger.move(transit, target, t.amount, now)
    entry = ledger.entries(
        key, t.fingerprint(), TRANSFER, t.op_id, t.amount, target, transit, None, t.description, t.metadata, now
    )
    entry.counterparty_account_id = t.from_account_id
    return ledger.accepted(201, key, t.fingerprint(), entry, (target,))


def complete_transfer(ledger: Ledger, cmd: c.CompleteTransfer, now: int) -> Outcome:
    key = (cmd.from_account_id, op_key_of(TRANSFER, cmd.op_id))
    record = ledger.records.get(key)
    if record is not None:
        if record.status != TRANSFER_IN_PROGRESS:
            return Outcome(200)  # completed already
        ledger.frames[-1].restores.append((record, record.status, record.body))
        record.status, record.body = 201, cmd.body
    ledger.changes.transfers_completed.append((cmd.body, cmd.from_account_id, cmd.op_id))
    return Outcome(200)
