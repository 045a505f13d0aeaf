"""The ShardStorage contract, run against every backend (see conftest: SQLite and MariaDB).

Rows are built with the column orders of ``schema``; results are compared with their exact
Python types (``True`` and ``1`` are equal, but a backend that gives ``1`` for ``exhausted``
breaks the contract).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncmy
import pytest
from faults import LosesTheConnectionAtXaCommit

from balance.domain.model import HOLD_EXPIRES_AT
from balance.storage import schema
from balance.storage.base import (
    HOLD_KEY_FIRST,
    BatchWrite,
    DuplicateOperation,
    ShardStorage,
    StorageError,
    StoredOperation,
)
from balance.storage.mariadb import MariaDbShardStorage, from_url

T0 = 1_700_000_000_000_000  # microseconds
ALL_BYTES = bytes(range(256)) + b"'\"\\%s\x00"  # every byte, quotes, backslash, a placeholder, NUL
BIG = 2**63 - 1  # fingerprints are 63-bit

# ---- row factory ---------------------------------------------------------------------------

_DEFAULTS: dict[tuple[str, ...], dict[str, Any]] = {
    schema.ACCOUNT_COLUMNS: dict(
        id="acc-1", parent_id=None, kind="user", region="EU", currency="EUR", name="Alice",
        status="active", balance=0, reserved=0, credit_limit=0, exhausted=False, version=1,
        created_at=T0, updated_at=T0, metadata=b"{}", frozen_by=None,
    ),
    schema.HOLD_COLUMNS: dict(
        account_id="acc-1", id="hold-1", amount=500, captured_amount=0, currency="EUR",
        status="pending", destination_account_id=None, expires_at=T0 + 60_000_000, created_at=T0,
        updated_at=T0, description="", metadata=b"{}", placed_by="acc-1",
    ),
    schema.JOURNAL_COLUMNS: dict(
        seq=1, account_id="acc-1", op_key=None, kind="credit", op_id="op-1", status=200, code="ok",
        fingerprint=1, amount=100, currency="EUR", counterparty_account_id=None, hold_id=None,
        balance_after=100, reserved_after=0, version=2, created_at=T0, description="",
        metadata=b"{}", result=b"", expires_at=None, destination_account_id=None, placed_by=None,
    ),
    schema.OUTBOX_COLUMNS: dict(seq=1, kind="account.updated", account_id="acc-1", version=1, created_at=T0, data=None),
    schema.KEY_COLUMNS: dict(
        key_hash="0" * 64, account_id="acc-1", created_at=T0, key_id="key_1", prefix="bk_abcd", scopes=3,
        revoked_at=None, client_id=None,
    ),
}  # fmt: skip


def _row(columns: tuple[str, ...], **values: Any) -> tuple[Any, ...]:
    defaults = _DEFAULTS[columns]
    assert set(defaults) == set(columns), "test defaults out of date with schema"
    unknown = set(values) - set(columns)
    assert not unknown, f"no such columns: {unknown}"
    merged = {**defaults, **values}
    return tuple(merged[column] for column in columns)


def account(**values: Any) -> tuple[Any, ...]:
    return _row(schema.ACCOUNT_COLUMNS, **values)


def hold(**values: Any) -> tuple[Any, ...]:
    return _row(schema.HOLD_COLUMNS, **values)


def entry(**values: Any) -> tuple[Any, ...]:
    return _row(schema.JOURNAL_COLUMNS, **values)


def earlier_placement(seq: int, hold_id: str, account_id: str = "acc-1") -> tuple[Any, ...]:
    """An earlier version's journal row placing a hold: keyed ``hold:<id>``, no expiry column
    (the hold can only be read from the holds table)."""
    return entry(seq=seq, account_id=account_id, op_key=f"hold:{hold_id}", kind="hold", op_id=hold_id, hold_id=hold_id)


def event(**values: Any) -> tuple[Any, ...]:
    return _row(schema.OUTBOX_COLUMNS, **values)


def key(**values: Any) -> tuple[Any, ...]:
    return _row(schema.KEY_COLUMNS, **values)


def typed(rows: list[Any]) -> list[tuple[tuple[Any, type], ...]]:
    """Rows as (value, type) pairs, sorted: equal only if values AND types match."""
    return sorted(tuple((value, type(value)) for value in row) for row in rows)


def column(rows: list[Any], columns: tuple[str, ...], name: str) -> list[Any]:
    index = columns.index(name)
    return [row[index] for row in rows]


# ---- open ----------------------------------------------------------------------------------


async def test_open_is_idempotent_and_keeps_existing_data(backend: Any, storage: ShardStorage) -> None:
    await storage.commit(BatchWrite(accounts=[account()], journal=[entry(op_key="credit:op-1")]))
    second = backend.make()
    await second.open()  # the database and its tables exist already, the first storage is open
    await storage.close()
    third = backend.make()
    await third.open()
    loaded = await third.load()
    assert typed(loaded.accounts) == typed([account()])
    assert loaded.next_seq == 2
    await third.commit(BatchWrite(journal=[entry(seq=2, op_key="credit:op-2")]))
    assert [row[0] for row in await second.history("acc-1", 10, None, None, None)] == [2, 1]


# ---- commit and load -----------------------------------------------------------------------


async def test_commit_then_load_round_trips_accounts_pending_holds_and_next_seq_with_exact_types(
    storage: ShardStorage,
) -> None:
    accounts = [
        account(id="acc-1", name="Zoë 日本 🚀", balance=-(2**62), reserved=2**62, exhausted=True, metadata=ALL_BYTES),
        account(id="acc-2", parent_id="acc-1", kind="partner", currency="USD", credit_limit=10**15, version=7),
        account(id="acc-3", metadata=b""),
    ]
    holds = [
        hold(id="hold-1", description="naïve ' \" \\ %s", metadata=ALL_BYTES),
        hold(id="hold-2", account_id="acc-2", destination_account_id="acc-3", captured_amount=3, currency="USD"),
    ]
    journal = [
        entry(seq=1, op_key="credit:op-1", fingerprint=BIG, result=ALL_BYTES, metadata=ALL_BYTES),
        entry(seq=2, account_id="acc-2", counterparty_account_id="acc-1", hold_id="hold-2", amount=-5),
        entry(seq=3, op_key="debit:op-2", status=409, code="insufficient_funds"),
    ]
    await storage.commit(BatchWrite(accounts=accounts, holds=holds, journal=journal, outbox=[event(seq=5)]))
    loaded = await storage.load()
    assert typed(loaded.accounts) == typed(accounts)
    assert typed(loaded.pending_holds) == typed(holds)
    assert all(type(row) is tuple for row in loaded.accounts + loaded.pending_holds)
    assert loaded.next_seq == 6  # the outbox (seq 5) is ahead of the journal (seq 3)


async def test_next_seq_is_one_on_an_empty_shard_and_follows_the_journal(storage: ShardStorage) -> None:
    assert (await storage.load()).next_seq == 1
    await storage.commit(BatchWrite(journal=[entry(seq=41)], outbox=[event(seq=40)]))
    assert (await storage.load()).next_seq == 42


async def test_finished_holds_are_not_loaded_as_pending(storage: ShardStorage) -> None:
    holds = [
        hold(id="h-pending"),
        hold(id="h-captured", status="captured", captured_amount=500),
        hold(id="h-released", status="released"),
        hold(id="h-expired", status="expired"),
    ]
    await storage.commit(BatchWrite(accounts=[account()], holds=holds))
    assert typed((await storage.load()).pending_holds) == typed([hold(id="h-pending")])
    # A hold the journal does not know is not looked for in the table (keyed by expiry first,
    # that would read it whole): an id nothing knows costs a look-up in the journal only.
    assert await storage.get_hold("acc-1", "h-captured") is None
    await storage.commit(BatchWrite(journal=[earlier_placement(1, "h-captured")]))  # an earlier version's
    assert await storage.get_hold("acc-1", "h-captured") == hold(
        id="h-captured", status="captured", captured_amount=500
    )
    # Nor one whose rows here cannot rebuild it but were written by this version (a hold that
    # arrived with a partner move and was settled here: its release row, no placement row).
    released = entry(seq=2, op_key="release:h-released", kind="release", op_id="h-released", hold_id="h-released")
    await storage.commit(BatchWrite(journal=[released]))
    assert await storage.get_hold("acc-1", "h-released") is None


async def test_upsert_of_accounts_and_holds_overwrites_every_column(storage: ShardStorage) -> None:
    placed = earlier_placement(1, "hold-1")  # (the hold is read from the table: see earlier_placement)
    await storage.commit(BatchWrite(accounts=[account(), account(id="acc-2")], holds=[hold()], journal=[placed]))
    changed = account(
        parent_id="acc-2",
        kind="partner",
        region="US",
        currency="USD",
        name="Bob",
        status="frozen",
        balance=-7,
        reserved=3,
        credit_limit=9,
        exhausted=True,
        version=2,
        created_at=T0 + 1,
        updated_at=T0 + 2,
        metadata=b"\x01",
    )
    captured = hold(
        amount=400,
        captured_amount=400,
        currency="USD",
        status="captured",
        destination_account_id="acc-2",
        created_at=T0 + 2,
        updated_at=T0 + 3,
        description="done",
        metadata=b"\x02",
    )
    await storage.commit(BatchWrite(accounts=[changed], holds=[captured]))
    loaded = await storage.load()
    assert typed(loaded.accounts) == typed([changed, account(id="acc-2")])
    assert loaded.pending_holds == []
    assert typed([await storage.get_hold("acc-1", "hold-1")]) == typed([captured])
    # and back to pending: the upsert is a full overwrite, not an insert-if-missing
    await storage.commit(BatchWrite(holds=[hold(amount=1)]))
    assert typed((await storage.load()).pending_holds) == typed([hold(amount=1)])
    # The key is (expires_at, account_id, id): another expiry is another row, deleted by its key.
    await storage.commit(BatchWrite(holds=[hold(amount=2, expires_at=T0 + 1)]))
    assert typed((await storage.load()).pending_holds) == typed([hold(amount=1), hold(amount=2, expires_at=T0 + 1)])
    await storage.commit(BatchWrite(holds_deleted=[(T0 + 60_000_000, "acc-1", "hold-1")]))
    assert typed((await storage.load()).pending_holds) == typed([hold(amount=2, expires_at=T0 + 1)])


async def test_the_last_row_wins_when_one_batch_upserts_the_same_account_twice(storage: ShardStorage) -> None:
    await storage.commit(BatchWrite(accounts=[account(version=1), account(version=2, balance=5)]))
    assert typed((await storage.load()).accounts) == typed([account(version=2, balance=5)])


async def test_ids_and_op_keys_are_case_and_space_sensitive(storage: ShardStorage) -> None:
    accounts = [account(id="acc"), account(id="ACC"), account(id="acc ")]
    journal = [
        entry(seq=1, account_id="acc", op_key="credit:op"),
        entry(seq=2, account_id="acc", op_key="credit:OP"),
        entry(seq=3, account_id="acc", op_key="credit:op "),
    ]
    await storage.commit(BatchWrite(accounts=accounts, journal=journal))
    assert sorted(row[0] for row in (await storage.load()).accounts) == ["ACC", "acc", "acc "]
    found, _ = await storage.lookup([("acc", "credit:op"), ("acc", "credit:OP"), ("ACC", "credit:op")], [])
    assert sorted(op.op_key for op in found) == ["credit:OP", "credit:op"]


# ---- duplicates --------------------------------------------------------------------------


async def test_a_duplicate_op_key_raises_duplicate_operation_and_writes_nothing_of_the_batch(
    storage: ShardStorage,
) -> None:
    await storage.commit(
        BatchWrite(accounts=[account(balance=100)], journal=[entry(seq=1, op_key="credit:op-1")], outbox=[event()])
    )
    before = await storage.load()
    # 1,500 journal rows: the duplicate (row 1,200) comes after statements that already succeeded
    journal = [entry(seq=seq, op_key=f"credit:new-{seq}") for seq in range(2, 1502)]
    journal[1200] = entry(seq=1202, op_key="credit:op-1")
    batch = BatchWrite(
        accounts=[account(balance=200, version=2), account(id="acc-2")],
        holds=[hold()],
        journal=journal,
        outbox=[event(seq=1502)],
        keys=[key()],
    )
    with pytest.raises(DuplicateOperation):
        await storage.commit(batch)

    after = await storage.load()
    assert typed(after.accounts) == typed(before.accounts)
    assert after.pending_holds == []
    assert after.next_seq == before.next_seq == 2
    assert await storage.load_keys() == []
    found, holds = await storage.lookup([("acc-1", f"credit:new-{seq}") for seq in (2, 500, 1001, 1501)], [])
    assert found == [] and holds == []
    assert [row[0] for row in await storage.history("acc-1", 5000, None, None, None)] == [1]
    # the storage is still usable, and the same batch without the duplicate commits
    journal[1200] = entry(seq=1202, op_key="credit:new-1202")
    await storage.commit(batch)
    assert (await storage.load()).next_seq == 1503


async def test_a_duplicate_op_key_within_one_batch_raises_duplicate_operation(storage: ShardStorage) -> None:
    batch = BatchWrite(journal=[entry(seq=1, op_key="credit:x"), entry(seq=2, op_key="credit:x")])
    with pytest.raises(DuplicateOperation):
        await storage.commit(batch)
    assert await storage.history("acc-1", 10, None, None, None) == []


async def test_a_reused_seq_raises_storage_error_not_duplicate_operation(storage: ShardStorage) -> None:
    await storage.commit(BatchWrite(journal=[entry(seq=1, op_key="credit:a")]))
    with pytest.raises(StorageError) as raised:
        await storage.commit(BatchWrite(journal=[entry(seq=1, op_key="credit:b")]))
    assert not isinstance(raised.value, DuplicateOperation)


async def test_rows_with_op_key_null_never_collide(storage: ShardStorage) -> None:
    await storage.commit(BatchWrite(journal=[entry(seq=seq, op_key=None) for seq in range(1, 4)]))
    await storage.commit(BatchWrite(journal=[entry(seq=seq, op_key=None) for seq in range(4, 6)]))
    assert [row[0] for row in await storage.history("acc-1", 10, None, None, None)] == [5, 4, 3, 2, 1]


# ---- look-ups ------------------------------------------------------------------------------


async def test_lookup_returns_stored_operations_and_holds_and_nothing_for_unknown_keys(storage: ShardStorage) -> None:
    journal = [
        entry(seq=1, op_key="credit:op-1", fingerprint=BIG, status=201, result=ALL_BYTES),
        entry(seq=2, op_key="debit:op-2", fingerprint=0, status=409, code="insufficient_funds", result=b'{"e":1}'),
        entry(seq=3, op_key=None, op_id="op-2"),
        entry(seq=4, account_id="acc-2", op_key="credit:op-1", fingerprint=5, result=b""),
        # (holds of an earlier version's journal: read from the table)
        earlier_placement(5, "hold-1"),
        earlier_placement(6, "hold-2"),
        earlier_placement(7, "hold-1", "acc-2"),
    ]
    holds = [hold(), hold(id="hold-2", status="released"), hold(account_id="acc-2", destination_account_id="acc-1")]
    await storage.commit(BatchWrite(journal=journal, holds=holds))

    found, found_holds = await storage.lookup(
        [("acc-1", "credit:op-1"), ("acc-1", "debit:op-2"), ("acc-2", "credit:op-1"), ("acc-3", "credit:op-1"),
         ("acc-2", "debit:op-2"), ("acc-1", "credit:nope")],
        [("acc-1", "hold-1"), ("acc-1", "hold-2"), ("acc-2", "hold-1"), ("acc-1", "hold-9"), ("acc-9", "hold-1")],
    )  # fmt: skip
    expected = [
        StoredOperation("acc-1", "credit:op-1", BIG, 201, ALL_BYTES),
        StoredOperation("acc-1", "debit:op-2", 0, 409, b'{"e":1}'),
        StoredOperation("acc-2", "credit:op-1", 5, 200, b""),
    ]
    key_of = lambda op: (op.account_id, op.op_key)  # noqa: E731
    assert sorted(found, key=key_of) == expected
    for op in found:
        assert (type(op.fingerprint), type(op.status), type(op.result)) == (int, int, bytes)
    assert typed(found_holds) == typed(holds)

    assert await storage.lookup([("acc-3", "credit:op-1")], [("acc-9", "hold-9")]) == ([], [])
    assert await storage.lookup([], []) == ([], [])
    assert await storage.get_hold("acc-1", "hold-9") is None


async def test_lookup_of_many_keys_finds_them_all(storage: ShardStorage) -> None:
    journal = [entry(seq=seq, account_id=f"acc-{seq % 7}", op_key=f"credit:{seq}") for seq in range(1, 1301)]
    await storage.commit(BatchWrite(journal=journal))
    asked = [(f"acc-{seq % 7}", f"credit:{seq}") for seq in range(1, 1301)] + [("acc-0", "credit:1")]
    found, _ = await storage.lookup(asked, [])
    assert {(op.account_id, op.op_key) for op in found} == set(asked[:-1])


# ---- history, children, keys ---------------------------------------------------------------


async def test_history_returns_accepted_rows_newest_first_and_honours_its_filters(storage: ShardStorage) -> None:
    journal = [
        entry(seq=1, status=201, created_at=100, op_key="credit:1", result=b"r1"),
        entry(seq=2, status=200, created_at=200),
        entry(seq=3, status=409, created_at=300, op_key="debit:3"),
        entry(seq=4, status=299, created_at=400),
        entry(seq=5, status=200, created_at=450, account_id="acc-2"),
        entry(seq=6, status=200, created_at=500, counterparty_account_id="acc-2", hold_id="h", metadata=ALL_BYTES),
        entry(seq=7, status=300, created_at=600),
    ]
    await storage.commit(BatchWrite(journal=journal))

    async def seqs(limit: int = 100, before: int | None = None, since: int | None = None, until: int | None = None):
        return [row[0] for row in await storage.history("acc-1", limit, before, since, until)]

    assert await seqs() == [6, 4, 2, 1]
    assert await seqs(before=6) == [4, 2, 1]
    assert await seqs(since=200) == [6, 4, 2]  # since is inclusive
    assert await seqs(until=400) == [2, 1]  # until is exclusive
    assert await seqs(since=200, until=500) == [4, 2]
    assert await seqs(limit=2) == [6, 4]
    assert await seqs(limit=1, before=4) == [2]
    assert await seqs(since=10_000) == []
    rows = await storage.history("acc-1", 1, None, None, None)
    assert typed(rows) == typed([journal[5]])
    assert typed(await storage.history("acc-1", 1, 2, None, None)) == typed([journal[0]])


async def test_children_are_paginated_by_id(storage: ShardStorage) -> None:
    ids = ["c-03", "c-01", "B-x", "a-x", "c-02"]
    accounts = [account(id="p"), account(id="q"), account(id="c-00", parent_id="q")]
    accounts += [account(id=child, parent_id="p") for child in ids] + [account(id="g", parent_id="c-01")]
    await storage.commit(BatchWrite(accounts=accounts))
    assert await storage.children("p", 2, None) == ["B-x", "a-x"]  # byte order: upper case first
    assert await storage.children("p", 2, "a-x") == ["c-01", "c-02"]
    assert await storage.children("p", 2, "c-02") == ["c-03"]
    assert await storage.children("p", 2, "c-03") == []
    assert await storage.children("p", 100, "c-015") == ["c-02", "c-03"]
    assert await storage.children("c-01", 10, None) == ["g"]
    assert await storage.children("nobody", 10, None) == []


async def test_load_keys_returns_every_stored_key(storage: ShardStorage) -> None:
    keys = [key(key_hash=f"{n:064x}", account_id=f"acc-{n}") for n in range(3)]
    await storage.commit(BatchWrite(keys=keys[:2]))
    await storage.commit(BatchWrite(keys=keys[2:]))
    assert sorted(await storage.load_keys()) == keys
    revoked = (*keys[1][:6], T0 + 5, keys[1][7])  # a revocation rewrites the key's row
    await storage.commit(BatchWrite(keys=[revoked]))
    assert sorted(await storage.load_keys()) == [keys[0], revoked, keys[2]]


# ---- big batches ---------------------------------------------------------------------------


async def test_a_batch_of_5000_journal_rows_commits_in_a_handful_of_insert_statements(
    storage: ShardStorage,
) -> None:
    journal = [
        entry(seq=seq, account_id=f"acc-{seq % 10}", op_key=f"credit:{seq}", metadata=ALL_BYTES, result=b"x" * 200)
        for seq in range(1, 5001)
    ]
    before = await storage.session_status() if isinstance(storage, MariaDbShardStorage) else None
    await storage.commit(BatchWrite(journal=journal, outbox=[event(seq=5001)]))
    if isinstance(storage, MariaDbShardStorage):
        after = await storage.session_status()
        statements = after["Com_insert"] - before["Com_insert"]
        assert 2 <= statements <= 10, f"{statements} INSERT statements for 5,001 rows"
    assert len(await storage.history("acc-3", 10_000, None, None, None)) == 500
    assert (await storage.load()).next_seq == 5002
    found, _ = await storage.lookup([(f"acc-{seq % 10}", f"credit:{seq}") for seq in (1, 1000, 1001, 5000)], [])
    assert len(found) == 4


# ---- overlapping commits (the engine starts batch N+1 while N commits) ---------------------

BIG_BATCH = 300  # journal rows: MariaDB writes a batch this large as an XA branch


def big_batch(first_seq: int, version: int, *, rows: int = BIG_BATCH, op_key_of: int | None = None) -> BatchWrite:
    journal = [
        entry(
            seq=seq, account_id="acc-1", op_key=f"credit:{seq if op_key_of is None else op_key_of}", op_id=f"op-{seq}"
        )
        for seq in range(first_seq, first_seq + rows)
    ]
    return BatchWrite(journal=journal, accounts=[account(version=version, balance=version)])


async def stored_seqs(storage: ShardStorage) -> list[int]:
    return sorted(row[0] for row in await storage.history("acc-1", 100_000, None, None, None))


async def our_prepared_branches(storage: ShardStorage) -> list[str]:
    if not isinstance(storage, MariaDbShardStorage):
        return []

    async def recover(conn: asyncmy.Connection) -> list[str]:
        async with conn.cursor() as cur:
            await cur.execute("XA RECOVER")
            return [bytes(row[3]).decode() for row in await cur.fetchall()]

    return [xid for xid in await storage._read(recover) if xid.startswith(storage._xid_prefix)]


@pytest.mark.parametrize("rows", [BIG_BATCH, 3])
async def test_a_commit_started_while_the_one_before_runs_takes_effect_after_it(
    storage: ShardStorage, rows: int
) -> None:
    first = asyncio.ensure_future(storage.commit(big_batch(1, 1, rows=rows)))
    second = asyncio.ensure_future(storage.commit(big_batch(1 + rows, 2, rows=rows), after=first))
    third = asyncio.ensure_future(storage.commit(BatchWrite(), after=second))  # nothing to write
    await asyncio.gather(first, second, third)
    assert await stored_seqs(storage) == list(range(1, 1 + 2 * rows))
    assert [row[11] for row in (await storage.load()).accounts] == [2]  # the later version won
    assert await our_prepared_branches(storage) == []


@pytest.mark.parametrize("rows", [BIG_BATCH, 3])
async def test_when_a_commit_fails_the_one_started_after_it_writes_nothing(storage: ShardStorage, rows: int) -> None:
    await storage.commit(BatchWrite(journal=[entry(seq=1, op_key="credit:taken")]))
    failing = asyncio.ensure_future(storage.commit(big_batch(2, 1, rows=rows, op_key_of=10**6)))  # a key twice
    following = asyncio.ensure_future(storage.commit(big_batch(2 + rows, 2, rows=rows), after=failing))
    with pytest.raises(DuplicateOperation):
        await failing
    with pytest.raises(StorageError) as raised:
        await following
    assert raised.type is StorageError
    assert await stored_seqs(storage) == [1]
    assert (await storage.load()).accounts == []
    assert await our_prepared_branches(storage) == []
    await storage.commit(big_batch(2, 3, rows=rows))  # the connections are usable again
    assert await stored_seqs(storage) == list(range(1, 2 + rows))


async def test_a_batch_of_journal_rows_only_is_all_or_nothing(storage: ShardStorage) -> None:
    """The commonest small batch is its journal rows alone: one statement, which SQLite runs
    without BEGIN/COMMIT around it. A row of it refused must leave none of it."""
    await storage.commit(BatchWrite(journal=[entry(seq=1, op_key="credit:taken")]))
    rows = [entry(seq=seq, op_key=f"credit:{seq}") for seq in range(2, 12)] + [entry(seq=12, op_key="credit:taken")]
    with pytest.raises(DuplicateOperation):
        await storage.commit(BatchWrite(journal=rows))
    assert await stored_seqs(storage) == [1]
    await storage.commit(BatchWrite(journal=rows[:-1]))
    assert await stored_seqs(storage) == list(range(1, 12))


async def test_a_chain_of_small_commits_stops_at_the_first_that_fails(storage: ShardStorage) -> None:
    """Twenty small commits handed over back to back, each after the one before (MariaDB sends
    each as soon as the one before answered, without waiting for the engine to see it)."""
    await storage.commit(BatchWrite(journal=[entry(seq=1, op_key="credit:taken")]))
    tasks: list[asyncio.Future[None]] = []
    for k in range(20):
        seq = 2 + 3 * k
        batch = big_batch(seq, k + 1, rows=3, op_key_of=10**6 if k == 12 else None)  # the 13th: a key twice
        tasks.append(asyncio.ensure_future(storage.commit(batch, after=tasks[-1] if tasks else None)))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert outcomes[:12] == [None] * 12
    assert isinstance(outcomes[12], DuplicateOperation)
    assert all(type(outcome) is StorageError for outcome in outcomes[13:]), outcomes[13:]
    assert await stored_seqs(storage) == list(range(1, 2 + 3 * 12))
    assert [row[11] for row in (await storage.load()).accounts] == [12]
    await storage.commit(big_batch(2 + 3 * 12, 99, rows=3))  # usable again
    assert await stored_seqs(storage) == list(range(1, 2 + 3 * 13))


async def test_a_commit_whose_waiter_gave_up_before_its_turn_writes_nothing_nor_does_the_next(
    storage: ShardStorage,
) -> None:
    first = asyncio.ensure_future(storage.commit(big_batch(1, 1, rows=3)))
    second = asyncio.ensure_future(storage.commit(big_batch(4, 2, rows=3), after=first))
    third = asyncio.ensure_future(storage.commit(big_batch(7, 3, rows=3), after=second))
    await asyncio.sleep(0)  # all three handed over; the first is being written
    second.cancel()
    fourth = asyncio.ensure_future(storage.commit(big_batch(10, 4, rows=3), after=third))
    await first
    with pytest.raises(asyncio.CancelledError):
        await second
    for later in (third, fourth):
        with pytest.raises(StorageError) as raised:
            await later
        assert raised.type is StorageError
    assert await stored_seqs(storage) == [1, 2, 3]
    await storage.commit(big_batch(4, 5, rows=3))  # usable again
    assert await stored_seqs(storage) == list(range(1, 7))


async def test_a_commit_after_one_that_already_failed_writes_nothing(storage: ShardStorage) -> None:
    failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    failed.set_exception(StorageError("earlier"))
    failed.exception()  # (retrieved: no "never retrieved" warning)
    with pytest.raises(StorageError):
        await storage.commit(big_batch(1, 1), after=failed)
    assert await stored_seqs(storage) == []


async def _prepared_then_abandoned(storage: MariaDbShardStorage) -> None:
    """Fault injection: a branch is prepared, waiting for a batch before it that never ends, and
    its task is cancelled: the connection is dropped with the branch prepared (as in a crash)."""
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(storage.commit(big_batch(1, 1), after=never))
    for _ in range(500):
        if await our_prepared_branches(storage):
            break
        await asyncio.sleep(0.01)
    assert len(await our_prepared_branches(storage)) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_branch_a_crash_left_prepared_is_rolled_back_when_the_shard_opens(
    mariadb_storage: MariaDbShardStorage, mariadb_backend: Any
) -> None:
    storage = mariadb_storage
    await _prepared_then_abandoned(storage)
    storage._unsettled.clear()  # as after a crash: the new process knows nothing of it
    storage._orphans.clear()
    await asyncio.sleep(0.1)
    assert len(await our_prepared_branches(storage)) == 1  # a prepared branch outlives its connection

    restarted = mariadb_backend.make()
    await restarted.open()
    assert await our_prepared_branches(restarted) == []
    assert await stored_seqs(restarted) == []
    # Its row locks went with it: the same account row is written at once.
    await asyncio.wait_for(restarted.commit(big_batch(1, 5)), timeout=10)
    assert [row[11] for row in (await restarted.load()).accounts] == [5]


async def test_a_branch_of_a_failed_commit_is_rolled_back_before_max_seq_answers(
    mariadb_storage: MariaDbShardStorage,
) -> None:
    storage = mariadb_storage
    await _prepared_then_abandoned(storage)
    assert await storage.max_seq() == 0
    assert await our_prepared_branches(storage) == []
    await asyncio.wait_for(storage.commit(big_batch(1, 5)), timeout=10)
    assert await storage.max_seq() == BIG_BATCH


async def test_a_connection_lost_at_xa_commit_leaves_nothing_undecided(mariadb_backend: Any) -> None:
    storage = LosesTheConnectionAtXaCommit.like(mariadb_backend.new())
    mariadb_backend.created.append(storage)
    await storage.open()
    storage.armed = True
    with pytest.raises(StorageError):
        await storage.commit(big_batch(1, 1))
    assert await storage.max_seq() == 0  # not committed, and decided: rolled back
    assert await our_prepared_branches(storage) == []
    await asyncio.wait_for(storage.commit(big_batch(1, 2)), timeout=10)
    assert await stored_seqs(storage) == list(range(1, 1 + BIG_BATCH))


# ---- failures ------------------------------------------------------------------------------


async def test_after_close_a_commit_raises_storage_error(storage: ShardStorage) -> None:
    await storage.close()
    with pytest.raises(StorageError) as raised:
        await storage.commit(BatchWrite(accounts=[account()]))
    assert raised.type is StorageError


async def test_after_close_reads_raise_storage_error(storage: ShardStorage) -> None:
    await storage.close()
    for read in (
        lambda: storage.load(),
        lambda: storage.load_keys(),
        lambda: storage.max_seq(),
        lambda: storage.lookup([("acc-1", "credit:1")], []),
        lambda: storage.history("acc-1", 10, None, None, None),
        lambda: storage.children("acc-1", 10, None),
    ):
        with pytest.raises(StorageError) as raised:
            await read()
        assert raised.type is StorageError


async def test_a_commit_after_the_server_dropped_the_connections_reconnects(
    mariadb_storage: MariaDbShardStorage,
) -> None:
    storage = mariadb_storage
    await storage.commit(BatchWrite(accounts=[account()]))
    admin = await asyncmy.connect(host=storage.host, port=storage.port, user=storage.user, password=storage._password)
    try:
        async with admin.cursor() as cur:
            await cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s", (storage.database,))
            for (thread_id,) in await cur.fetchall():
                await cur.execute(f"KILL CONNECTION {int(thread_id)}")
    finally:
        await admin.ensure_closed()
    await asyncio.sleep(0.2)

    try:  # the first use of a dead connection may fail, but only with StorageError
        await storage.commit(BatchWrite(accounts=[account(version=2)]))
    except StorageError as exc:
        assert type(exc) is StorageError
    await storage.commit(BatchWrite(accounts=[account(version=3)]))
    for _ in range(2):  # likewise for a pooled read connection
        try:
            loaded = await storage.load()
            break
        except StorageError:
            continue
    assert typed(loaded.accounts) == typed([account(version=3)])


# ---- configuration -------------------------------------------------------------------------


def test_from_url_parses_credentials_host_port_and_names_the_shard_database() -> None:
    storage = from_url("mysql://svc:p%40ss@db.internal:3307/balance", 12)
    assert (storage.user, storage._password, storage.host, storage.port, storage.database) == (
        "svc", "p@ss", "db.internal", 3307, "balance_s12",
    )  # fmt: skip
    storage = from_url("mysql://root:@localhost/bal", 0)
    assert (storage.user, storage._password, storage.port, storage.database) == ("root", "", 3306, "bal_s0")
    with pytest.raises(ValueError):
        from_url("mysql://root@localhost/", 0)
    with pytest.raises(ValueError):
        from_url("mysql://root@localhost/bad`name", 0)


# ---- transfers across shards -----------------------------------------------------------------


async def test_a_started_transfer_is_pending_until_completed_and_completion_rewrites_its_result(
    storage: ShardStorage,
) -> None:
    started = ("acc-1", "tr-9", "acc-2", 300, "EUR", "rent", b'{"a":1}', T0)
    await storage.commit(
        BatchWrite(
            journal=[entry(seq=1, op_key="op:tr-9", kind="transfer", op_id="tr-9", status=202, result=b"partial")],
            transfers_started=[started],
        )
    )
    assert typed(await storage.pending_transfers()) == typed([started])

    await storage.commit(BatchWrite(transfers_completed=[(b'{"final":true}', "acc-1", "tr-9", 201, "op:tr-9")]))

    assert await storage.pending_transfers() == []
    (stored,), _ = await storage.lookup([("acc-1", "op:tr-9")], [])
    assert (stored.status, stored.result) == (201, b'{"final":true}')
    assert await storage.max_seq() == 1


# ---- recovery, page by page ------------------------------------------------------------------


async def test_accounts_and_pending_holds_come_back_page_by_page_in_key_order(storage: ShardStorage) -> None:
    ids = [f"acc-{i:03d}" for i in range(7)]
    await storage.commit(BatchWrite(accounts=[account(id=i) for i in reversed(ids)]))
    holds = [hold(account_id=a, id=f"h-{j}") for a in ids[:3] for j in range(3)]
    holds.append(hold(account_id="acc-001", id="h-done", status="captured"))
    await storage.commit(BatchWrite(holds=holds))

    seen, after = [], ""
    while page := await storage.scan_accounts(after, 3):
        assert len(page) <= 3
        seen += [row[0] for row in page]
        after = page[-1][0]
    assert seen == ids
    # Recovery reads millions of these: ``exhausted`` may come back as 0/1 and ``balance`` as a
    # Decimal (MariaDB's DECIMAL(39,0)): Account.from_row makes the bool and the int.
    scanned = [
        (*row[:7], int(row[7]), *row[8:10], bool(row[10]), *row[11:]) for row in await storage.scan_accounts("", 100)
    ]
    assert typed(scanned) == typed([account(id=i) for i in ids])

    pending, after_hold = [], HOLD_KEY_FIRST
    while page := await storage.scan_pending_holds(after_hold, 2):
        pending += [(row[0], row[1]) for row in page]
        after_hold = (page[-1][HOLD_EXPIRES_AT], page[-1][0], page[-1][1])
    assert pending == [(a, f"h-{j}") for a in ids[:3] for j in range(3)]


async def test_text_and_bytes_of_any_content_round_trip_exactly(storage: ShardStorage) -> None:
    name = 'O\'Brien \\ "quoted" ; DROP TABLE accounts; -- ünïcødé \u2603'
    metadata = b'{"note":"it\'s \\\\ \\"x\\" \x00 end"}'
    await storage.commit(BatchWrite(accounts=[account(id="acc-odd", name=name, metadata=metadata)]))
    await storage.commit(
        BatchWrite(journal=[entry(seq=7, account_id="acc-odd", op_key="credit:x", description=name, result=metadata)])
    )
    (row,) = await storage.scan_accounts("", 10)
    assert (row[5], row[14]) == (name, metadata)
    (stored,), _ = await storage.lookup([("acc-odd", "credit:x")], [])
    assert stored.result == metadata
    (journal_row,) = await storage.history("acc-odd", 10, None, None, None)
    assert journal_row[16] == name


async def test_a_large_batch_with_a_stale_operation_id_writes_nothing_and_says_so(storage: ShardStorage) -> None:
    await storage.commit(BatchWrite(journal=[entry(seq=1, op_key="credit:old")]))
    rows = [entry(seq=i, op_key=f"credit:{i}", counterparty_account_id=None if i % 2 else "acc-2",
                  result=b'{"q":"\\"quoted\\" it\'s"}') for i in range(2, 700)]  # fmt: skip
    rows.append(entry(seq=700, op_key="credit:old"))
    holds = [hold(id=f"h-{i}") for i in range(400)]
    with pytest.raises(DuplicateOperation):
        await storage.commit(BatchWrite(journal=rows, holds=holds, accounts=[account(balance=5)]))
    assert await storage.max_seq() == 1
    assert await storage.scan_pending_holds(HOLD_KEY_FIRST, 10) == []
    assert await storage.scan_accounts("", 10) == []
    await storage.commit(BatchWrite(journal=rows[:-1], holds=holds, accounts=[account(balance=5)]))
    assert await storage.max_seq() == 699
    (stored,), _ = await storage.lookup([("acc-1", "credit:3")], [])
    assert stored.result == b'{"q":"\\"quoted\\" it\'s"}'
    assert len(await storage.scan_pending_holds(HOLD_KEY_FIRST, 1000)) == 400


async def test_large_batches_go_in_the_bulk_command_whatever_columns_are_null(mariadb_storage: Any) -> None:
    """A column NULL in every row (a batch of captures has no expiry, most have no destination)
    is left out of the bulk statement; it must not make the batch fall back to SQL text
    (that fallback is silent and several times slower: it happened once, for ``expires_at``)."""
    storage = mariadb_storage
    captures = [
        entry(seq=seq, op_key=f"capture:h{seq}", kind="capture", hold_id=f"h{seq}", result=b"r")
        for seq in range(1, BIG_BATCH + 1)
    ]
    holds_placed = [
        entry(seq=seq, op_key=f"hold:h{seq}", kind="hold", hold_id=f"h{seq}", expires_at=T0 + seq)
        for seq in range(BIG_BATCH + 1, 2 * BIG_BATCH + 1)
    ]
    for journal in (captures, holds_placed):
        before = await storage.session_status("Com_stmt_execute")
        await storage.commit(BatchWrite(journal=journal))
        after = await storage.session_status("Com_stmt_execute")
        assert after["Com_stmt_execute"] - before["Com_stmt_execute"] >= 1, "the rows went as SQL text"
    assert len(await storage.history("acc-1", 10_000, None, None, None)) == 2 * BIG_BATCH
