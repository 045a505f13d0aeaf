"""The write path renders answers from byte templates; they must equal the dict views encoded
by msgspec (the read path's encoding), byte for byte, whatever the field values."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from balance import views
from balance.domain.ids import txn_shard_seq
from balance.domain.model import Account, Entry, Hold

texts = st.text(max_size=12)  # includes quotes, backslashes, control characters, non-ASCII
ids = st.text(alphabet='abcXYZ019-_:é"\\', min_size=1, max_size=10)
money = st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1)
stamps = st.integers(min_value=0, max_value=4_102_444_800_000_000)  # up to 2100
metadata = st.sampled_from([b"{}", b'{"order":"A-1","n":3}', msgspec.json.encode({"ключ": "знач\n"})])

accounts = st.builds(
    Account, ids, st.none() | ids, st.sampled_from(["partner", "user", "funding"]), st.sampled_from(["US", "EU"]),
    st.sampled_from(["USD", "EUR"]), texts, st.sampled_from(["active", "frozen", "closed"]), money,
    st.integers(0, 2**62), st.integers(0, 2**62), st.booleans(), st.integers(1, 2**62), stamps, stamps, metadata,
)  # fmt: skip
holds = st.builds(
    Hold, ids, ids, st.integers(1, 2**62), st.integers(0, 2**62), st.sampled_from(["USD", "EUR"]),
    st.sampled_from(["pending", "captured", "released", "expired"]), st.none() | ids, stamps, stamps, stamps,
    texts, metadata,
)  # fmt: skip
entries = st.builds(
    Entry, st.integers(1, 2**62), ids, st.none() | ids, st.sampled_from(["credit", "transfer", "capture"]), ids,
    st.just(200), st.just(""), st.integers(0, 2**62), st.integers(1, 2**62), st.sampled_from(["USD", "EUR"]),
    st.none() | ids, st.none() | ids, money, st.integers(0, 2**62), st.integers(1, 2**62), stamps, texts, metadata,
)  # fmt: skip


def _encoded(value: object) -> bytes:
    return msgspec.json.encode(value)


@given(accounts)
def test_account_template_equals_the_encoded_view(account: Account) -> None:
    assert views.encode_account(account) == _encoded(views.account_view(account.state()))


shards = st.integers(0, 2**31)


@given(entries, accounts, holds, shards)
def test_hold_answer_equals_the_encoded_views(entry: Entry, account: Account, hold: Hold, shard: int) -> None:
    expected = {"hold": views.hold_view(hold.state()), "account": views.account_view(account.state())}
    assert views.encode_money_reply(entry, (account,), hold, shard) == _encoded(expected)


@given(entries, accounts, accounts, shards)
def test_transaction_answers_equal_the_encoded_views(entry: Entry, first: Account, second: Account, shard: int) -> None:
    txn = views.txn_view(entry.row(), shard)
    one = {"transaction": txn, "account": views.account_view(first.state())}
    two = {"transaction": txn, "accounts": [views.account_view(first.state()), views.account_view(second.state())]}
    assert views.encode_money_reply(entry, (first,), None, shard) == _encoded(one)
    assert views.encode_money_reply(entry, (first, second), None, shard) == _encoded(two)


def test_a_transaction_id_names_the_shard_that_wrote_the_row() -> None:
    """The id is the account's region, the writing shard (not the home shard its id names:
    after a partner move they differ) and its seq; the same account's rows of two shards
    never share an id, and the id reads back as (shard, seq)."""
    entry = Entry(7, "US-0-aaaa", "op:x", "credit", "x", 201, "", 0, 5, "USD", None, None, 5, 0, 1, 0, "", b"{}")
    account = Account("US-0-aaaa", None, "user", "US", "USD", "a", "active", 5, 0, 0, False, 1, 0, 0, b"{}")
    ids_seen = set()
    for shard in (0, 1, 12):
        txn = views.txn_view(entry.row(), shard)
        assert txn["id"] == f"US-{shard}-t7"
        assert b'"id":"US-%d-t7"' % shard in views.encode_money_reply(entry, (account,), None, shard)
        assert txn_shard_seq("US-0-aaaa", txn["id"]) == (shard, 7)
        ids_seen.add(txn["id"])
    assert len(ids_seen) == 3
    for wrong in ("EU-1-t7", "US-1-t", "US--t7", "US-1-7", "US-x-t7", "US-1-t7x", "US-1-t" + "9" * 19, "US-1²-t7"):
        assert txn_shard_seq("US-0-aaaa", wrong) is None, wrong


def test_a_renamed_account_is_not_rendered_from_a_stale_cache() -> None:
    account = Account("US-0-1", None, "user", "US", "USD", "old", "active", 5, 0, 0, False, 1, 0, 0, b"{}")
    assert b'"name":"old"' in views.encode_account(account)
    account.name = "new"
    assert b'"name":"new"' in views.encode_account(account)
    same_id = Account("US-0-1", "US-0-9", "partner", "US", "EUR", "new", "active", 5, 0, 0, False, 1, 0, 0, b"{}")
    assert views.encode_account(same_id) == _encoded(views.account_view(same_id.state()))


_FIRST_US = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z, datetime's first instant
_LAST_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z, its last


@given(st.integers(min_value=_FIRST_US, max_value=_LAST_US))
def test_a_timestamp_is_what_datetime_writes_for_that_microsecond(us: int) -> None:
    """``timestamp`` formats the second once and the microseconds per call (a cheaper path);
    the text must stay ``datetime.isoformat``'s, byte for byte, over datetime's whole range."""
    from datetime import UTC, datetime, timedelta

    expected = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).isoformat(timespec="microseconds")
    assert views.timestamp(us) == expected.replace("+00:00", "Z")
    assert views.timestamp(us) == views.timestamp(us)  # (the second call is the cache's)


def test_timestamps_at_the_edges_of_a_second_and_of_the_epoch() -> None:
    assert views.timestamp(0) == "1970-01-01T00:00:00.000000Z"
    assert views.timestamp(-1) == "1969-12-31T23:59:59.999999Z"
    assert views.timestamp(1_999_999) == "1970-01-01T00:00:01.999999Z"
    assert views.timestamp(_FIRST_US) == "0001-01-01T00:00:00.000000Z"
    assert views.timestamp(_LAST_US) == "9999-12-31T23:59:59.999999Z"
