"""GET /v1/events: the event feed of the embedded default (no broker), read from the shard
databases, newest-last, long-polled, scoped like every read."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from balance.events import catalogue as cat


async def all_events(api: Any, *, key: str | None = None, limit: int = 7) -> tuple[list[dict[str, Any]], str]:
    events: list[dict[str, Any]] = []
    cursor = ""
    while True:
        after = f"after={cursor}&" if cursor else ""  # none: from the start (an empty one is refused)
        response = await api.get(f"/v1/events?{after}limit={limit}", key=key or api.admin)
        assert response.status_code == 200, response.text
        page = response.json()
        events += page["data"]
        if not page["data"] and page["next_cursor"] == cursor:
            return events, cursor
        cursor = page["next_cursor"]


async def test_the_feed_has_every_change_in_order_with_gap_free_versions(api2: Any) -> None:
    top = await api2.create_account()
    child = await api2.create_account(top["id"])
    other = await api2.create_account()  # the other shard, most likely
    await api2.credit(top["id"], 1_000)
    await api2.transfer(top["id"], child["id"], 300)
    await api2.hold(child["id"], 100, id="order-1")
    await api2.capture(child["id"], "order-1", 60)
    await api2.credit(other["id"], 5)
    await api2.patch_account(other["id"], name="renamed")
    events, _ = await all_events(api2)
    assert len({e["id"] for e in events}) == len(events)
    for account in (top, child, other):
        mine = [e for e in events if e["account_id"] == account["id"]]
        now = await api2.account(account["id"])
        assert sorted({e["version"] for e in mine}) == list(range(1, now["version"] + 1))
        assert [e["seq"] for e in mine] == sorted(e["seq"] for e in mine)  # newest last
        assert mine[-1]["data"]["account"] == now
    types = {e["type"] for e in events}
    assert {cat.ACCOUNT_CREATED, cat.TRANSACTION_CREATED, cat.HOLD_UPDATED, cat.ACCOUNT_UPDATED} <= types


async def test_a_partner_key_sees_its_subtree_only(api: Any) -> None:
    partner = await api.create_account()
    child = await api.create_account(partner["id"])
    stranger = await api.create_account()
    for account in (partner, child, stranger):
        await api.credit(account["id"], 10)
    key = await api.create_key(partner["id"], scopes=["read"])
    events, _ = await all_events(api, key=key, limit=2)
    assert {e["account_id"] for e in events} == {partner["id"], child["id"]}
    admin_events, _ = await all_events(api)
    assert stranger["id"] in {e["account_id"] for e in admin_events}


async def test_a_long_poll_answers_as_soon_as_an_event_is_committed(api: Any) -> None:
    account = await api.create_account()
    _, cursor = await all_events(api)
    began = time.monotonic()
    waiting = asyncio.create_task(api.get(f"/v1/events?after={cursor}&wait_s=10"))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await api.credit(account["id"], 7)
    response = await waiting
    assert response.status_code == 200
    assert [e["type"] for e in response.json()["data"]] == [cat.TRANSACTION_CREATED]
    assert time.monotonic() - began < 5
    empty = await api.get(f"/v1/events?after={response.json()['next_cursor']}&wait_s=1")
    assert empty.json()["data"] == [] and empty.json()["next_cursor"] == response.json()["next_cursor"]


async def test_bad_feed_parameters_are_refused_and_change_nothing(api: Any) -> None:
    for query in (
        "limit=0",
        "limit=1001",
        "wait_s=31",
        "wait_s=-1",
        "wait_s=",
        "limit=",
        "after=abc",
        "after=1.2",
        "after=99999999999999999999",
    ):
        api.assert_problem(await api.get(f"/v1/events?{query}"), 422, "validation_error")
    response = await api.get("/v1/events", key=None)
    assert response.status_code == 401


async def test_an_empty_wait_s_is_refused_like_every_empty_query_value(api: Any) -> None:
    """``wait_s=`` was read as 0 (no wait) while ``limit=`` or ``after=`` are 422."""
    response = await api.get("/v1/events?wait_s=")
    api.assert_problem(response, 422, "validation_error")
    assert "wait_s" in response.json()["detail"]
    assert (await api.get("/v1/events?wait_s=0")).status_code == 200


async def test_a_cursor_older_than_the_pruned_outbox_is_answered_410_cursor_expired(api: Any) -> None:
    first = await api.create_account()
    await api.credit(first["id"], 10)
    _, old_cursor = await all_events(api)
    late = await api.create_account()
    await api.patch_account(first["id"], name="renamed")  # an outbox row after the late account
    feed = api.app.events_feed()
    feed.clock = lambda: time.time() + 2 * 86_400  # two days on: every outbox row is past retention
    assert await feed.prune(int((feed.clock() - 86_400) * 1e6), 500) > 0  # (the newest one stays)

    expired = await api.get("/v1/events?after=0", key=api.admin)
    problem = api.assert_problem(expired, 410, "cursor_expired")
    assert expired.headers["content-type"].startswith("application/problem+json")
    oldest = problem["oldest_cursor"]
    assert int(oldest) > int(old_cursor)
    # The cursor it names reads on; so does no cursor (from the oldest kept event).
    resumed = await api.get(f"/v1/events?after={oldest}", key=api.admin)
    fresh = await api.get("/v1/events", key=api.admin)
    assert resumed.status_code == fresh.status_code == 200
    assert resumed.json() == fresh.json()
    kept = resumed.json()["data"]
    assert [e["type"] for e in kept] == [cat.ACCOUNT_UPDATED] and kept[0]["account_id"] == first["id"]
    assert late["id"]
