"""Business outcomes (stable codes, values not exceptions) and the invariant breach (an exception)."""

from __future__ import annotations

from dataclasses import dataclass

VALIDATION_ERROR = "validation_error"
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
ACCOUNT_NOT_FOUND = "account_not_found"
HOLD_NOT_FOUND = "hold_not_found"
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

STATUS_BY_CODE = {
    VALIDATION_ERROR: 422,
    UNAUTHORIZED: 401,
    FORBIDDEN: 403,
    ACCOUNT_NOT_FOUND: 404,
    HOLD_NOT_FOUND: 404,
    CURRENCY_MISMATCH: 422,
    INSUFFICIENT_FUNDS: 422,
    ACCOUNT_INACTIVE: 409,
    HOLD_NOT_PENDING: 409,
    AMOUNT_EXCEEDS_HOLD: 422,
    IDEMPOTENCY_CONFLICT: 409,
    RATE_LIMITED: 429,
    UNAVAILABLE: 503,
    ACCOUNT_NOT_EMPTY: 409,
    LIMIT_EXCEEDED: 422,
}


@dataclass(frozen=True, slots=True)
class Rejection:
    """A business outcome other than success: a stable code and a human sentence."""

    code: str
    detail: str

    @property
    def status(self) -> int:
        return STATUS_BY_CODE[self.code]


class InvariantViolation(RuntimeError):
    """A broken money invariant: a bug. The process must stop rather than go on."""


def require(condition: bool, message: str) -> None:
    """Raise InvariantViolation unless ``condition`` holds (unlike ``assert``, survives ``-O``)."""
    if not condition:
        raise InvariantViolation(message)
