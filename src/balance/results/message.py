"""A payment result and what it becomes. Pure: parsing, and the decision taken on the engine's
answer (and, when the hold was already settled, on how it was settled).

Idempotency is the engine's: a capture or release is keyed by the hold id, so a redelivered
result replays the first answer (nothing moves twice). A hold already settled the way the
result says (captured with that amount; released or expired for a ``failed``) is acknowledged
quietly; settled otherwise, it can never apply and goes to the dead letters, the reason in a
header. ``succeeded`` for a hold already expired or released is a money discrepancy (the payment
went through, the money did not move): dead-lettered as ``result_conflict``, counted apart, and
recorded as a ``hold.result_conflict`` event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from balance.api import schemas as s
from balance.api.answers import HttpError
from balance.api.parsing import decode
from balance.domain import errors as e
from balance.domain.model import HOLD_CAPTURED, HOLD_EXPIRED, HOLD_PENDING, HOLD_RELEASED

SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"

# What happened to a message (the consumer acts on ``action``; the metrics count ``outcome``).
ACK: Final = "ack"  # committed (or already so): acknowledge
DEAD_LETTER: Final = "dead_letter"  # can never apply: to the dead letters with the reason, then acknowledge
RETRY: Final = "retry"  # the engine is unavailable (a shard recovering, storage away): put back, try later
CHECK_HOLD: Final = "check_hold"  # the hold is not pending: how it was settled decides

# Dead-letter reasons (the ``x-balance-reason`` header).
MALFORMED: Final = "malformed"
RESULT_CONFLICT: Final = "result_conflict"
REASON_HEADER: Final = "x-balance-reason"
DETAIL_HEADER: Final = "x-balance-detail"
MESSAGE_ID_HEADER: Final = "x-balance-message-id"

# Hold state positions (``Hold.state()``, ``HOLD_FIELDS``).
_HOLD_ID, _AMOUNT, _CAPTURED, _STATUS = 1, 2, 3, 5


class PaymentResult(msgspec.Struct, forbid_unknown_fields=True):
    """``{"id", "account_id", "hold_id", "result": "succeeded"|"failed", "amount"?}``; the ids
    and the amount checked as the HTTP API checks them."""

    id: s.OpId
    account_id: s.AccountId
    hold_id: s.OpId
    result: Literal["succeeded", "failed"]
    amount: s.Amount | None = None  # succeeded only: capture this much (absent: the whole hold)


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str  # ACK, DEAD_LETTER, RETRY or CHECK_HOLD
    outcome: str  # ACK: applied, replayed or already; DEAD_LETTER: the reason; RETRY: unavailable
    detail: str = ""

    @property
    def conflict(self) -> bool:
        return self.action == DEAD_LETTER and self.outcome == RESULT_CONFLICT


def parse(body: bytes) -> PaymentResult | Verdict:
    """The message, or its dead-letter verdict (``malformed``, with why)."""
    try:
        result: PaymentResult = decode(body, PaymentResult)
    except HttpError as exc:
        return Verdict(DEAD_LETTER, MALFORMED, exc.detail)
    if result.result == FAILED and result.amount is not None:
        return Verdict(DEAD_LETTER, MALFORMED, "amount is only for a succeeded result")
    return result


def after_reply(status: int, code: str, replayed: bool) -> Verdict:
    """What the capture's or release's answer means (``code``: the problem's, if refused)."""
    if status < 300:
        return Verdict(ACK, "replayed" if replayed else "applied")
    if status == 503:
        return Verdict(RETRY, "unavailable", code)
    if code == e.HOLD_NOT_PENDING:
        return Verdict(CHECK_HOLD, code)
    return Verdict(DEAD_LETTER, code or f"status_{status}")  # account_not_found, hold_not_found, amount_exceeds_hold...


def after_settled(result: PaymentResult, hold: tuple | None) -> Verdict:  # type: ignore[type-arg]
    """The hold was not pending: acknowledged if it was settled as the result says, else why not."""
    if hold is None:
        return Verdict(DEAD_LETTER, e.HOLD_NOT_FOUND, f"hold {result.hold_id} not found")
    status = hold[_STATUS]
    if status == HOLD_PENDING:  # settled meanwhile and undone (a commit failed): try again
        return Verdict(RETRY, "unavailable", "the hold is pending again")
    if result.result == SUCCEEDED:
        if status == HOLD_CAPTURED:
            wanted = hold[_AMOUNT] if result.amount is None else result.amount
            if hold[_CAPTURED] == wanted:
                return Verdict(ACK, "already")
            detail = f"hold captured {hold[_CAPTURED]}, the result says {wanted}"
            return Verdict(DEAD_LETTER, e.HOLD_NOT_PENDING, detail)
        if status in (HOLD_EXPIRED, HOLD_RELEASED):
            return Verdict(DEAD_LETTER, RESULT_CONFLICT, f"payment succeeded for a hold already {status}")
    elif status in (HOLD_RELEASED, HOLD_EXPIRED):
        return Verdict(ACK, "already")
    return Verdict(DEAD_LETTER, e.HOLD_NOT_PENDING, f"hold is {status}, the result says {result.result}")


def result_pairs(result: PaymentResult) -> tuple[tuple[str, object], ...]:
    """The message as the conflict event's ``data.result`` (the fields in the schema's order)."""
    return (
        ("id", result.id), ("account_id", result.account_id), ("hold_id", result.hold_id),
        ("result", result.result), ("amount", result.amount),
    )  # fmt: skip
