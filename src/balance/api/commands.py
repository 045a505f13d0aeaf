"""A request body made into the domain command it asks for (the single routes and the batch
share these), with the checks of fields the schema cannot make (currency code, metadata size)."""

from __future__ import annotations

from typing import Any

from balance.api import schemas as s
from balance.api.answers import validation
from balance.domain import authority as a
from balance.domain import commands as c
from balance.domain import limits
from balance.domain.currencies import ISO_4217


def metadata_bytes(metadata: dict[str, Any]) -> bytes:
    raw = s.canonical_metadata(metadata)
    if len(raw) > limits.METADATA_BYTES_MAX:
        raise validation(f"metadata is larger than {limits.METADATA_BYTES_MAX} bytes")
    return raw


def check_currency(currency: str) -> None:
    if currency not in ISO_4217:
        raise validation(f"{currency} is not an ISO 4217 currency code")


def credit_command(account_id: str, body: s.CreditBody) -> c.Credit:
    return c.Credit(account_id, body.id, body.amount, body.description, metadata_bytes(body.metadata))


def debit_command(account_id: str, body: s.CreditBody) -> c.Debit:
    return c.Debit(account_id, body.id, body.amount, body.description, metadata_bytes(body.metadata))


def transfer_command(body: s.TransferBody) -> c.Transfer:
    check_currency(body.currency)
    return c.Transfer(
        body.id, body.from_account_id, body.to_account_id, body.amount, body.currency,
        body.description, metadata_bytes(body.metadata),
    )  # fmt: skip


def hold_command(account_id: str, body: s.HoldBody, actor: a.Actor) -> c.PlaceHold:
    return c.PlaceHold(
        account_id, body.id, body.amount, body.expires_in_s, body.destination_account_id,
        body.description, metadata_bytes(body.metadata), actor,
    )  # fmt: skip


def batch_command(op: s.BatchOp, actor: a.Actor) -> c.Command:
    if isinstance(op, s.CreditOp):
        return credit_command(op.account_id, op)
    if isinstance(op, s.DebitOp):
        return debit_command(op.account_id, op)
    if isinstance(op, s.TransferOp):
        return transfer_command(op)
    if isinstance(op, s.HoldOp):
        return hold_command(op.account_id, op, actor)
    if isinstance(op, s.CaptureOp):
        return c.CaptureHold(op.account_id, op.hold_id, op.amount, actor)
    return c.ReleaseHold(op.account_id, op.hold_id, actor)
