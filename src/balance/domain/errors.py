"""Business outcomes (stable codes, values not exceptions) and the invariant breach (an exception).

Codes only: which HTTP status answers a code is the API's business (``balance.api.statuses``)."""

from __future__ import annotations

from dataclasses import dataclass

VALIDATION_ERROR = "validation_error"
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
ACCOUNT_NOT_FOUND = "account_not_found"
HOLD_NOT_FOUND = "hold_not_found"
KEY_NOT_FOUND = "key_not_found"
TRANSACTION_NOT_FOUND = "transaction_not_found"
CURRENCY_MISMATCH = "currency_mismatch"
INSUFFICIENT_FUNDS = "insufficient_funds"
ACCOUNT_INACTIVE = "account_inactive"
HOLD_NOT_PENDING = "hold_not_pending"
AMOUNT_EXCEEDS_HOLD = "amount_exceeds_hold"
IDEMPOTENCY_CONFLICT = "idempotency_conflict"
RATE_LIMITED = "rate_limited"
ACCOUNT_NOT_EMPTY = "account_not_empty"  # closing an account that holds or awaits money
LIMIT_EXCEEDED = "limit_exceeded"  # a non-system balance, reserve or credit limit past +-2^62
UNAVAILABLE = "unavailable"
CURSOR_EXPIRED = "cursor_expired"  # an event feed cursor older than the outbox rows kept (retention)
# Partner moves (``domain.moves``).
ACCOUNT_MOVING = "account_moving"  # its subtree is being moved: retry shortly (the service waits)
ACCOUNT_MOVED = "account_moved"  # it lives on another shard now (the service routes there)
MOVE_REFUSED = "move_refused"  # a partner move that cannot be done as asked (not top level, its shard already...)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A business outcome other than success: a stable code and a human sentence."""

    code: str
    detail: str


class InvariantViolation(RuntimeError):
    """A broken money invariant: a bug. The process must stop rather than go on."""


def require(condition: bool, message: str) -> None:
    """Raise InvariantViolation unless ``condition`` holds (unlike ``assert``, survives ``-O``)."""
    if not condition:
        raise InvariantViolation(message)
