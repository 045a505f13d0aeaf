"""The payment result's schema and the decisions on the engine's answers (``balance.results.message``)."""

from __future__ import annotations

import json

import pytest

from balance.results import message as m


def body(**fields: object) -> bytes:
    base: dict[str, object] = {"id": "pay-1", "account_id": "EU-0-00000000000000aa", "hold_id": "h-1"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def hold(status: str, amount: int = 500, captured: int = 0) -> tuple[object, ...]:
    return ("EU-0-00000000000000aa", "h-1", amount, captured, "EUR", status, None, 0, 0, 0, "", b"{}", None)


def test_a_well_formed_result_parses() -> None:
    parsed = m.parse(body(result="succeeded", amount=250))
    assert isinstance(parsed, m.PaymentResult)
    assert (parsed.result, parsed.amount, parsed.hold_id) == ("succeeded", 250, "h-1")
    assert m.parse(body(result="failed")) == m.PaymentResult("pay-1", "EU-0-00000000000000aa", "h-1", "failed")


@pytest.mark.parametrize(
    "raw",
    [
        b"", b"{", b"[]", b'"x"', b"\xff\xfe",
        body(result="refunded"), body(result=None), body(result="succeeded", amount=0),
        body(result="succeeded", amount=-5), body(result="succeeded", amount="5"), body(result="succeeded", amount=2**63),
        body(result="failed", amount=5), body(result="succeeded", extra=1), body(result="succeeded", hold_id=".."),
        body(result="succeeded", hold_id="a/b"), body(result="succeeded", account_id="x" * 65),
        b'{"id":"p","id":"q","account_id":"EU-0-00000000000000aa","hold_id":"h","result":"failed"}',
    ],
)  # fmt: skip
def test_what_does_not_fit_is_malformed_with_a_reason(raw: bytes) -> None:
    verdict = m.parse(raw)
    assert isinstance(verdict, m.Verdict)
    assert (verdict.action, verdict.outcome) == (m.DEAD_LETTER, m.MALFORMED)
    assert verdict.detail


def test_answers() -> None:
    assert m.after_reply(200, "", False) == m.Verdict(m.ACK, "applied")
    assert m.after_reply(200, "", True) == m.Verdict(m.ACK, "replayed")
    assert m.after_reply(503, "unavailable", False).action == m.RETRY
    assert m.after_reply(409, "hold_not_pending", False).action == m.CHECK_HOLD
    assert m.after_reply(404, "hold_not_found", False) == m.Verdict(m.DEAD_LETTER, "hold_not_found")
    assert m.after_reply(422, "amount_exceeds_hold", False).outcome == "amount_exceeds_hold"


def result(outcome: str, amount: int | None = None) -> m.PaymentResult:
    return m.PaymentResult("pay-1", "EU-0-00000000000000aa", "h-1", outcome, amount)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("outcome", "amount", "state", "action", "reason"),
    [
        ("succeeded", None, hold("captured", 500, 500), m.ACK, "already"),
        ("succeeded", 200, hold("captured", 500, 200), m.ACK, "already"),
        ("succeeded", None, hold("captured", 500, 200), m.DEAD_LETTER, "hold_not_pending"),
        ("succeeded", 300, hold("captured", 500, 200), m.DEAD_LETTER, "hold_not_pending"),
        ("succeeded", None, hold("released"), m.DEAD_LETTER, m.RESULT_CONFLICT),
        ("succeeded", 100, hold("expired"), m.DEAD_LETTER, m.RESULT_CONFLICT),
        ("failed", None, hold("released"), m.ACK, "already"),
        ("failed", None, hold("expired"), m.ACK, "already"),
        ("failed", None, hold("captured", 500, 500), m.DEAD_LETTER, "hold_not_pending"),
        ("failed", None, hold("pending"), m.RETRY, "unavailable"),
        ("failed", None, None, m.DEAD_LETTER, "hold_not_found"),
    ],
)  # fmt: skip
def test_a_settled_hold(
    outcome: str, amount: int | None, state: tuple[object, ...] | None, action: str, reason: str
) -> None:
    verdict = m.after_settled(result(outcome, amount), state)
    assert (verdict.action, verdict.outcome) == (action, reason)
    assert verdict.conflict == (reason == m.RESULT_CONFLICT)


def test_the_consumers_configuration() -> None:
    from balance.results.config import ResultsConfig

    assert not ResultsConfig.from_env({}).enabled  # no broker: nothing to consume
    on = ResultsConfig.from_env({"BALANCE_AMQP_URL": "amqp://x", "BALANCE_NATS_URL": "nats://y"})
    assert on.enabled and (on.queue, on.subject, on.dead_letters) == (
        "balance.payment-results", "balance.payment-results", "balance.dead-letters",
    )  # fmt: skip
    assert (on.nats_stream, on.nats_durable, on.prefetch) == ("BALANCE_RESULTS", "balance-results", 256)
    assert not ResultsConfig.from_env({"BALANCE_AMQP_URL": "amqp://x", "BALANCE_RESULTS": "off"}).enabled
    named = ResultsConfig.from_env({"BALANCE_RESULTS_QUEUE": "q.1", "BALANCE_RESULTS_NATS_STREAM": "S_1"})
    assert (named.queue, named.nats_stream) == ("q.1", "S_1")
    for bad in (
        {"BALANCE_RESULTS": "yes"}, {"BALANCE_RESULTS_PREFETCH": "0"}, {"BALANCE_RESULTS_PREFETCH": "x"},
        {"BALANCE_RESULTS_NATS_STREAM": "a.b"}, {"BALANCE_RESULTS_QUEUE": "a b"}, {"BALANCE_DEAD_LETTERS": "*"},
    ):  # fmt: skip
        with pytest.raises(ValueError):
            ResultsConfig.from_env(bad)
