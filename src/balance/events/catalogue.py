"""Event types, ids, routing keys and subjects: the names consumers bind to."""

from __future__ import annotations

from balance.domain import model

TRANSACTION_CREATED = "transaction.created"  # every accepted journal row (the history row)
HOLD_UPDATED = "hold.updated"  # a hold placed, captured, released or expired
ACCOUNT_CREATED = "account.created"
ACCOUNT_UPDATED = "account.updated"  # status, name, credit limit or metadata changed
ACCOUNT_EXHAUSTED = "account.exhausted"  # a hold left nothing available: further holds are refused
ACCOUNT_REPLENISHED = "account.replenished"  # the exhausted flag lifted
# A payment result said ``succeeded`` for a hold already expired or released: the payment went
# through, the money did not move (``balance.results``). An operator alerts on it.
HOLD_RESULT_CONFLICT = "hold.result_conflict"
TYPES = (
    TRANSACTION_CREATED, HOLD_UPDATED, ACCOUNT_CREATED, ACCOUNT_UPDATED, ACCOUNT_EXHAUSTED, ACCOUNT_REPLENISHED,
    HOLD_RESULT_CONFLICT,
)  # fmt: skip

# An outbox row's kind (``domain.model``) -> its event type.
OUTBOX_TYPES = {
    model.EVENT_ACCOUNT_CREATED: ACCOUNT_CREATED,
    model.EVENT_ACCOUNT_UPDATED: ACCOUNT_UPDATED,
    model.EVENT_ACCOUNT_EXHAUSTED: ACCOUNT_EXHAUSTED,
    model.EVENT_ACCOUNT_REPLENISHED: ACCOUNT_REPLENISHED,
    model.EVENT_HOLD_RESULT_CONFLICT: HOLD_RESULT_CONFLICT,
}

AMQP_EXCHANGE = "balance.events"
NATS_STREAM = "BALANCE_EVENTS"
NATS_SUBJECT_PREFIX = "balance.events"

# Payment results in (``balance.results``): the queue and subject a gateway publishes to, the
# durable consumer and stream, and where what can never apply goes.
RESULTS_QUEUE = "balance.payment-results"
RESULTS_SUBJECT = "balance.payment-results"
RESULTS_NATS_STREAM = "BALANCE_RESULTS"
RESULTS_NATS_DURABLE = "balance-results"
DEAD_LETTERS = "balance.dead-letters"  # RabbitMQ: the exchange (and its queue); NATS: the subject
DEAD_LETTERS_NATS_STREAM = "BALANCE_DEAD_LETTERS"


def event_id(region: str, shard: int, seq: int, event_type: str) -> str:
    """Unique and stable: the shard's seq of the row it comes from, and its type (one row gives
    at most one event of a type). ``EU-0-e1234.transaction.created``."""
    return f"{region}-{shard}-e{seq}.{event_type}"


def routing_key(region: str, shard: int, event_type: str) -> str:
    """RabbitMQ: ``EU.0.transaction.created`` (bind ``EU.#`` or ``*.*.hold.updated``)."""
    return f"{region}.{shard}.{event_type}"


def subject(region: str, shard: int, event_type: str, prefix: str = NATS_SUBJECT_PREFIX) -> str:
    """NATS: ``balance.events.EU.0.transaction.created``."""
    return f"{prefix}.{region}.{shard}.{event_type}"
