"""The HTTP status that answers each outcome code: the domain names outcomes, the API numbers them."""

from __future__ import annotations

from balance.domain import errors as e

STATUS_BY_CODE = {
    e.VALIDATION_ERROR: 422,
    e.CURSOR_EXPIRED: 410,
    e.UNAUTHORIZED: 401,
    e.FORBIDDEN: 403,
    e.ACCOUNT_NOT_FOUND: 404,
    e.HOLD_NOT_FOUND: 404,
    e.TRANSACTION_NOT_FOUND: 404,
    e.KEY_NOT_FOUND: 404,
    e.ACCOUNT_NOT_EMPTY: 409,
    e.LIMIT_EXCEEDED: 422,
    e.CURRENCY_MISMATCH: 422,
    e.INSUFFICIENT_FUNDS: 422,
    e.ACCOUNT_INACTIVE: 409,
    e.HOLD_NOT_PENDING: 409,
    e.AMOUNT_EXCEEDS_HOLD: 422,
    e.IDEMPOTENCY_CONFLICT: 409,
    e.RATE_LIMITED: 429,
    e.UNAVAILABLE: 503,
    e.ACCOUNT_MOVING: 503,
    e.ACCOUNT_MOVED: 503,
    e.MOVE_REFUSED: 409,
}
UNMAPPED_STATUS = 422  # a code added to the domain without a status here is still a refusal


def status_of(code: str) -> int:
    return STATUS_BY_CODE.get(code, UNMAPPED_STATUS)
