"""The expiry job's pure parts: what the journal's tail says of holds, the notice (untrusted
when it comes back), its id, and the configuration's bad values."""

from __future__ import annotations

import msgspec
import pytest

from balance.expiry.config import ExpiryConfig
from balance.expiry.notices import Due, Notice, Tail, decode, encode, notice_id

A, B = "EU-0-00000000000000a1", "EU-0-00000000000000b2"


def test_the_tail_says_which_holds_were_placed_and_which_settled_since_the_checkpoint() -> None:
    tail = Tail()
    tail.add([
        (10, A, "op:h1", "hold", "h1", 5_000_000),
        (11, A, "op:h2", "hold", "h2", 3_000_000),
        (12, B, "hold:h3", "hold", "h3", 4_000_000),  # an earlier version's placement key
        (13, A, "capture:h2", "capture", "h2", None),
        (14, B, None, "capture", "h9", None),  # ignored by the query (no op key); never a settlement
        (15, A, "release:h7", "release", "h7", None),  # a hold of the checkpoint, released since
        (16, B, "op:h4", "hold", "h4", 9_000_000),
        (17, B, "op:h5", "hold", "h5", None),  # no expiry column (an earlier version): the table has it
    ])  # fmt: skip
    assert tail.due(5_000_000) == [Due(4_000_000, B, "h3"), Due(5_000_000, A, "h1")]
    assert tail.due(4_999_999) == [Due(4_000_000, B, "h3")]
    assert tail.knows(A, "h7") and tail.knows(A, "h2") and tail.knows(B, "h4")
    assert not tail.knows(B, "h9") and not tail.knows(A, "h8")


def test_a_settlement_row_of_another_holds_key_settles_nothing() -> None:
    tail = Tail()
    tail.add([(1, A, "op:h1", "hold", "h1", 1), (2, A, "expire:other", "expire", "h1", None)])
    assert tail.due(10) == [Due(1, A, "h1")]


def test_a_notice_round_trips_and_its_id_is_stable_within_a_round() -> None:
    due = Due(1_790_000_000_000_000, A, "order-42")
    first, again, later = (notice_id("EU", 0, due, r) for r in (7, 7, 8))
    assert first == again == f"EU-0-x.{A}.order-42.r7" and later != first
    body = encode(first, 0, due)
    assert msgspec.json.decode(body) == {
        "id": first, "type": "hold.expiry-due", "shard": 0, "account_id": A, "hold_id": "order-42",
        "expires_at": "2026-09-21T14:13:20.000000Z",
    }  # fmt: skip
    assert decode(body) == Notice(0, A, "order-42")


@pytest.mark.parametrize(
    "body",
    [
        b"", b"not json", b"[]", b"{}", b'{"type":"hold.updated","shard":0,"account_id":"a","hold_id":"h"}',
        b'{"type":"hold.expiry-due","shard":"0","account_id":"a","hold_id":"h"}',
        b'{"type":"hold.expiry-due","shard":true,"account_id":"a","hold_id":"h"}',
        b'{"type":"hold.expiry-due","shard":0,"account_id":1,"hold_id":"h"}',
        b'{"type":"hold.expiry-due","shard":0,"account_id":"a","hold_id":""}',
        b'{"type":"hold.expiry-due","shard":0,"account_id":"a","hold_id":"' + b"h" * 65 + b'"}',
        b'{"type":"hold.expiry-due","shard":0,"account_id":"a"}',
    ],
)  # fmt: skip
def test_anything_else_on_the_queue_is_not_a_notice(body: bytes) -> None:
    assert decode(body) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BALANCE_EXPIRY_JOB", "yes"), ("BALANCE_EXPIRY_FALLBACK_S", "-1"), ("BALANCE_EXPIRY_FALLBACK_S", "soon"),
        ("BALANCE_EXPIRY_RESEND_S", "0"), ("BALANCE_EXPIRY_SCAN_S", "0"), ("BALANCE_EXPIRY_PAGE_ROWS", "0"),
        ("BALANCE_EXPIRY_PAGE_ROWS", "10001"), ("BALANCE_EXPIRY_METRICS_PORT", "70000"),
    ],
)  # fmt: skip
def test_a_bad_setting_stops_the_start_with_its_name(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        ExpiryConfig.from_env({name: value})


def test_job_mode_needs_a_broker_and_is_not_off() -> None:
    assert not ExpiryConfig.from_env({}).notices
    assert ExpiryConfig.from_env({"BALANCE_NATS_URL": "nats://x"}).notices
    assert not ExpiryConfig.from_env({"BALANCE_AMQP_URL": "amqp://x", "BALANCE_EXPIRY_JOB": "off"}).notices
    config = ExpiryConfig.from_env({"BALANCE_AMQP_URL": "amqp://x", "BALANCE_EXPIRY_QUEUE_PREFIX": "q"})
    assert (config.queue(3), config.subject("EU", 3), config.fallback_s) == ("q.3", "balance.expiry-due.EU.3", 30.0)
