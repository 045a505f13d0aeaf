"""History, transaction ids and holds of a partner moved to the other shard and back, read
through the API in process (SQLite files and MariaDB): every row of each account's history
listed exactly once over small pages, every transaction id unique over both shards and
found by ``GET …/transactions/{id}`` (the id names the shard that wrote the row), none of
them readable through another partner's account, an id of the earlier form (the home shard
with another shard's seq) still found, and a hold that ended on the other shard read as it
ended there after its account came back (not ``moved``)."""

from __future__ import annotations

import json
from typing import Any

from two_shards import Build, account

from balance.api.app import BalanceApp
from balance.domain import commands as c
from balance.metrics import Metrics
from balance.service import BalanceService

KIDS = 4
ADMIN = {b"authorization": b"Bearer admin"}


async def get(app: BalanceApp, path: str, headers: dict[bytes, bytes] = ADMIN, query: bytes = b"") -> tuple[int, Any]:
    status, _, body = await app.serve("GET", path, query, headers, b"")
    return status, json.loads(body)


async def traffic(service: BalanceService, root: str, kids: list[str], tag: str) -> None:
    """Credits, debits, transfers inside the subtree and a captured hold, on each account."""
    for i, kid in enumerate([root, *kids]):
        assert (await service.execute(c.Credit(kid, f"{tag}-cr-{i}", 100))).status == 201
        assert (await service.execute(c.Debit(kid, f"{tag}-db-{i}", 7))).status == 201
        other = kids[(i + 1) % len(kids)]
        transfer = await service.execute(c.Transfer(f"{tag}-tr-{i}", kid, other, 3, "EUR"))
        assert transfer.status == 201, transfer.body
        assert (await service.execute(c.PlaceHold(kid, f"{tag}-h-{i}", 5, 3_600))).status == 201
        assert (await service.execute(c.CaptureHold(kid, f"{tag}-h-{i}", None))).status == 200


async def pages(app: BalanceApp, account_id: str, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = f"limit={limit}" + ("" if cursor is None else f"&cursor={cursor}")
        status, page = await get(app, f"/v1/accounts/{account_id}/transactions", query=query.encode())
        assert status == 200, page
        rows += page["data"]
        assert len(rows) < 10_000, "the pages do not end"
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


async def stored(service: BalanceService, account_id: str) -> dict[tuple[int, int], tuple[str, str]]:
    """(shard, seq) -> (kind, operation id) of every history row of the account, read from each
    shard's storage directly."""
    found = {}
    for engine in service.engines:
        for row in await engine.storage.history(account_id, 10_000, None, None, None):
            found[(engine.shard, row[0])] = (row[3], row[4])
    return found


def books(service: BalanceService) -> None:
    sums: dict[str, int] = {}
    for engine in service.engines:
        engine.ledger.check_invariants()  # reserved == the pending holds
        for acc in engine.ledger.accounts.values():
            sums[acc.currency] = sums.get(acc.currency, 0) + acc.balance
    assert set(sums.values()) == {0}, sums


async def test_history_ids_and_holds_of_a_partner_moved_there_and_back(build: Build) -> None:
    service = build()
    await service.start()
    app = BalanceApp(service, Metrics(), start_service=False)
    root = await account(service, 0)
    kids = []
    for i in range(KIDS):
        reply = await service.create_account(c.CreateAccount("", root, "user", "EU", "EUR", f"k{i}", 0, b"{}"))
        kids.append(json.loads(reply.body)["id"])
    neighbour = await account(service, 0)  # another partner, whose key must see none of it
    neighbour_kid = json.loads(
        (await service.create_account(c.CreateAccount("", neighbour, "user", "EU", "EUR", "n", 0, b"{}"))).body
    )["id"]
    _, neighbour_key = await service.create_key(neighbour)
    assert neighbour_key is not None
    await traffic(service, root, kids, "before")
    # A hold captured before the move (stays on shard 0), one that leaves pending and ends on
    # shard 1, one that leaves pending and comes back pending.
    assert (await service.execute(c.PlaceHold(kids[0], "early", 11, 3_600))).status == 201
    assert (await service.execute(c.CaptureHold(kids[0], "early", None))).status == 200
    assert (await service.execute(c.PlaceHold(kids[0], "round", 13, 3_600))).status == 201
    assert (await service.execute(c.PlaceHold(kids[1], "stays", 17, 3_600))).status == 201

    assert (await service.move_partner(root, 1))["status"] == "done"
    await traffic(service, root, kids, "there")
    on_one = await service.execute(c.Credit(kids[0], "on-one", 1))
    assert on_one.status == 201
    written_on_one = json.loads(on_one.body)["transaction"]["id"]
    assert written_on_one.startswith("EU-1-t"), written_on_one  # the shard that wrote it
    status, early = await get(app, f"/v1/accounts/{kids[0]}/holds/early")  # settled before the move
    assert (status, early.get("status")) == (200, "captured"), early
    assert (await service.execute(c.CaptureHold(kids[0], "round", 5))).status == 200  # on shard 1

    assert (await service.move_partner(root, 0))["status"] == "done"
    await traffic(service, root, kids, "back")
    books(service)

    status, round_ = await get(app, f"/v1/accounts/{kids[0]}/holds/round")
    assert (status, round_["status"], round_["captured_amount"]) == (200, "captured", 5), round_
    status, stays = await get(app, f"/v1/accounts/{kids[1]}/holds/stays")
    assert (status, stays["status"]) == (200, "pending"), stays
    status, early = await get(app, f"/v1/accounts/{kids[0]}/holds/early")
    assert (status, early["status"]) == (200, "captured")

    every_id: set[str] = set()
    neighbour_auth = {b"authorization": b"Bearer " + neighbour_key.encode()}
    for account_id in [root, *kids]:
        expected = await stored(service, account_id)
        assert {shard for shard, _ in expected} == {0, 1}  # rows on both shards
        for limit in (1, 4, 1000):
            listed = await pages(app, account_id, limit)
            ids = [row["id"] for row in listed]
            assert len(ids) == len(set(ids)) == len(expected), (account_id, limit)
            named = {(int(i.split("-")[1]), int(i.split("-t")[1])) for i in ids}
            assert named == set(expected), account_id  # each id names its row's shard and seq
        assert not every_id & set(ids), "a transaction id repeats another account's"
        every_id |= set(ids)
        for row in listed:
            status, found = await get(app, f"/v1/accounts/{account_id}/transactions/{row['id']}")
            assert (status, found) == (200, row), row["id"]
            # Another partner's key: not through its own account, not through this one.
            status, _ = await get(app, f"/v1/accounts/{neighbour}/transactions/{row['id']}", neighbour_auth)
            assert status == 404
            status, _ = await get(app, f"/v1/accounts/{neighbour_kid}/transactions/{row['id']}", neighbour_auth)
            assert status == 404
            status, _ = await get(app, f"/v1/accounts/{account_id}/transactions/{row['id']}", neighbour_auth)
            assert status == 403
        # The admin asking another account for these ids: not its rows, 404.
        status, _ = await get(app, f"/v1/accounts/{neighbour}/transactions/{listed[0]['id']}")
        assert status == 404
        # Ids naming a shard that does not exist, or one the account never lived on.
        for wrong in ("EU-2-t1", "EU-99999-t1", "EU-1-t999999999", "US-0-t1", "EU-0-x1"):
            status, _ = await get(app, f"/v1/accounts/{account_id}/transactions/{wrong}")
            assert status == 404, wrong
    status, found = await get(app, f"/v1/accounts/{kids[0]}/transactions/{written_on_one}")
    assert (status, found["operation_id"]) == (200, "on-one")

    # An id of the earlier form: the home shard's number with shard 1's seq (what ids of rows
    # written after a move were): found while shard 0 has no row of the account at that seq.
    rows = await stored(service, kids[2])
    legacy = [seq for shard, seq in rows if shard == 1 and (0, seq) not in rows]
    assert legacy
    for seq in legacy:
        status, found = await get(app, f"/v1/accounts/{kids[2]}/transactions/EU-0-t{seq}")
        assert (status, found["id"]) == (200, f"EU-1-t{seq}"), seq
    await service.stop()


async def test_moved_history_pages_have_no_gap_when_a_shard_s_clock_went_back(build: Build) -> None:
    """A shard stamps a row earlier than the row before it (its wall clock stepped back between
    two batches): paging a moved account's history one row at a time still lists every row
    once (each shard's rows are taken in the order of its journal)."""
    service = build()
    await service.start()
    app = BalanceApp(service, Metrics(), start_service=False)
    root = await account(service, 0)
    start = build.clock.now
    build.clock.now = start + 1_000_000
    assert (await service.execute(c.Credit(root, "first", 10))).status == 201
    assert (await service.move_partner(root, 1))["status"] == "done"
    build.clock.now = start + 2_000_000
    assert (await service.execute(c.Credit(root, "there", 10))).status == 201
    assert (await service.move_partner(root, 0))["status"] == "done"
    build.clock.now = start + 3_000_000
    assert (await service.execute(c.Credit(root, "late", 10))).status == 201
    build.clock.now = start + 1_500_000  # back: the next row of shard 0 is stamped before the one above
    assert (await service.execute(c.Credit(root, "stepped-back", 10))).status == 201
    expected = await stored(service, root)
    for limit in (1, 2, 3, 1000):
        listed = await pages(app, root, limit)
        assert sorted(row["operation_id"] for row in listed) == ["first", "late", "stepped-back", "there"], limit
        assert len(listed) == len(expected)
    status, page = await get(app, f"/v1/accounts/{root}/transactions", query=b"limit=2")
    assert status == 200 and page["next_cursor"].startswith("p"), page
    for earlier in (b"cursor=m1-0-1", b"cursor=m" + str(start + 2_000_001).encode() + b"-1-999"):
        status, page = await get(app, f"/v1/accounts/{root}/transactions", query=earlier)  # an earlier form
        assert status == 200, page
    for bad in (b"cursor=p0.x", b"cursor=p0.1-", b"cursor=m1-2", b"cursor=q1", b"cursor=p"):
        status, _ = await get(app, f"/v1/accounts/{root}/transactions", query=bad)
        assert status == 422, bad
    await service.stop()
