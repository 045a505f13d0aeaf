"""Partner moves over HTTP in process (ASGI and the built-in server, two SQLite shards): the
route and its refusals, and the event feed across two moves: each account's versions go on
without a gap, each change has its event once, in order."""

from __future__ import annotations

from typing import Any

from test_http_events import all_events


async def test_a_partner_moves_and_back_with_its_events_gap_free(api2: Any) -> None:
    top = await api2.create_account()
    child = await api2.create_account(top["id"])
    await api2.credit(top["id"], 1_000)
    await api2.transfer(top["id"], child["id"], 300)
    await api2.hold(child["id"], 100, id="order-1")
    home = (await api2.get(f"/v1/partners/{top['id']}/placement")).json()["shard"]
    moved = await api2.post(f"/v1/partners/{top['id']}/move", json={"to_shard": 1 - home})
    assert moved.status_code == 200 and moved.json()["status"] == "done", moved.text
    assert (await api2.get(f"/v1/partners/{child['id']}/placement")).json() == {
        "account_id": child["id"], "shard": 1 - home, "moved": True,
    }  # fmt: skip
    await api2.capture(child["id"], "order-1", 60)
    await api2.hold(child["id"], 50, id="order-2")
    back = await api2.post(f"/v1/partners/{top['id']}/move", json={"to_shard": home})
    assert back.status_code == 200 and back.json()["status"] == "done", back.text
    await api2.release(child["id"], "order-2")
    await api2.credit(child["id"], 7)
    events, _ = await all_events(api2)
    assert len({e["id"] for e in events}) == len(events)
    for account in (top, child):
        mine = [e for e in events if e["account_id"] == account["id"]]
        now = await api2.account(account["id"])
        assert sorted({e["version"] for e in mine}) == list(range(1, now["version"] + 1))
        versions = [e["version"] for e in mine]
        assert versions == sorted(versions), versions  # the old shard's events before the new one's
        assert mine[-1]["data"]["account"] == now
    history = await api2.history(child["id"])
    kinds = sorted(t["kind"] for t in history)
    assert kinds == sorted(["transfer", "hold", "capture", "hold", "release", "credit"]), kinds


async def test_a_move_is_refused_without_the_admin_key_or_for_a_child_and_changes_nothing(api2: Any) -> None:
    top = await api2.create_account()
    child = await api2.create_account(top["id"])
    key = await api2.create_key(top["id"])
    home = (await api2.get(f"/v1/partners/{top['id']}/placement")).json()["shard"]
    api2.assert_problem(await api2.post(f"/v1/partners/{top['id']}/move", json={"to_shard": 1 - home}, key=key),
                        403, "forbidden")  # fmt: skip
    api2.assert_problem(await api2.post(f"/v1/partners/{child['id']}/move", json={"to_shard": 1 - home}),
                        409, "move_refused")  # fmt: skip
    api2.assert_problem(await api2.post(f"/v1/partners/{top['id']}/move", json={"to_shard": home}),
                        409, "move_refused")  # fmt: skip
    api2.assert_problem(await api2.post(f"/v1/partners/{top['id']}/move", json={"to_shard": 9}),
                        409, "move_refused")  # fmt: skip
    api2.assert_problem(await api2.post(f"/v1/partners/{top['id']}/move", json={"to_shard": -1}),
                        422, "validation_error")  # fmt: skip
    api2.assert_problem(await api2.post("/v1/partners/EU-0-0000000000000000/move", json={"to_shard": 1}),
                        404, "account_not_found")  # fmt: skip
    assert (await api2.get(f"/v1/partners/{top['id']}/placement")).json()["shard"] == home
