"""Named regression tests for the attacks on authority (issue 14, items 4-6): scopes of keys,
who may finish a hold, keys that follow their account. Each attack is refused and changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from balance import bootstrap
from balance.config import Settings
from balance.keys import ADMIN_KEY_FILE

if TYPE_CHECKING:  # tests/e2e is no package: the harness is reached through fixtures
    from tests.e2e.conftest import Api, MakeApi

HUGE = 10**15


async def gateway(api: Api) -> dict[str, Any]:
    """A gateway G (top-level partner, default key) with a payer U below it (its own key)."""
    g = (await api.create_account(name="gateway"))["id"]
    u = (await api.create_account(g, kind="user", name="payer"))["id"]
    await api.credit(u, 5_000)  # the admin funds the payer
    g_key = await api.create_key(g)
    u_key = await api.create_key(u, key=g_key)
    return {"G": g, "U": u, "g_key": g_key, "u_key": u_key}


async def test_partner_key_credits_own_account_is_forbidden(api: Api) -> None:
    gw = await gateway(api)
    before = await api.snapshot(gw["G"], gw["U"])
    for account in (gw["G"], gw["U"]):
        response = await api.post(f"/v1/accounts/{account}/credits", {"id": api.op_id(), "amount": HUGE},
                                  key=gw["g_key"])  # fmt: skip
        api.assert_problem(response, 403, "forbidden")
    batch = [{"op": "credit", "account_id": gw["G"], "id": api.op_id(), "amount": HUGE}]
    response = await api.post("/v1/batch", {"operations": batch}, key=gw["g_key"])
    assert response.json()["results"][0]["status"] == 403
    assert await api.snapshot(gw["G"], gw["U"]) == before


async def test_partner_key_debits_is_forbidden(api: Api) -> None:
    gw = await gateway(api)
    before = await api.snapshot(gw["U"])
    response = await api.post(f"/v1/accounts/{gw['U']}/debits", {"id": api.op_id(), "amount": 1}, key=gw["g_key"])
    api.assert_problem(response, 403, "forbidden")
    assert await api.snapshot(gw["U"]) == before


async def test_partner_sets_child_credit_limit_huge_is_forbidden(api: Api) -> None:
    gw = await gateway(api)
    before = await api.snapshot(gw["U"])
    response = await api.patch(f"/v1/accounts/{gw['U']}", {"credit_limit": HUGE}, key=gw["g_key"])
    api.assert_problem(response, 403, "forbidden")
    response = await api.post("/v1/accounts", {"parent_id": gw["G"], "kind": "user", "credit_limit": HUGE},
                              key=gw["g_key"])  # fmt: skip
    api.assert_problem(response, 403, "forbidden")
    assert await api.snapshot(gw["U"]) == before
    # An admin-granted limits key may, below itself only.
    limits_key = await api.create_key(gw["G"], scopes=["read", "move", "limits"])
    assert (await api.patch_account(gw["U"], key=limits_key, credit_limit=100))["credit_limit"] == 100
    response = await api.patch(f"/v1/accounts/{gw['G']}", {"credit_limit": 100}, key=limits_key)
    api.assert_problem(response, 403, "forbidden")


async def test_an_admin_granted_funds_key_credits_inside_its_subtree_only(api: Api) -> None:
    gw = await gateway(api)
    funds_key = await api.create_key(gw["G"], scopes=["read", "move", "funds"])
    await api.credit(gw["U"], 10, key=funds_key)
    await api.debit(gw["U"], 5, key=funds_key)
    other = (await api.create_account())["id"]
    response = await api.post(f"/v1/accounts/{other}/credits", {"id": api.op_id(), "amount": 1}, key=funds_key)
    api.assert_problem(response, 403, "forbidden")
    assert (await api.account(gw["U"]))["balance"] == 5_005


async def test_payer_own_key_releases_gateway_hold_is_forbidden(api: Api) -> None:
    gw = await gateway(api)
    placed = await api.hold(gw["U"], 1_000, key=gw["g_key"])
    hold_id = placed["hold"]["id"]
    before = await api.snapshot(gw["U"])
    response = await api.post(f"/v1/accounts/{gw['U']}/holds/{hold_id}/release", key=gw["u_key"])
    api.assert_problem(response, 403, "forbidden")
    batch = [{"op": "release", "account_id": gw["U"], "hold_id": hold_id}]
    response = await api.post("/v1/batch", {"operations": batch}, key=gw["u_key"])
    assert response.json()["results"][0]["status"] == 403
    assert await api.snapshot(gw["U"]) == before
    assert (await api.get_hold(gw["U"], hold_id))["status"] == "pending"
    # The payer may still finish a hold it placed itself.
    own = await api.hold(gw["U"], 10, key=gw["u_key"])
    assert (await api.release(gw["U"], own["hold"]["id"], key=gw["u_key"]))["hold"]["status"] == "released"


async def test_payer_captures_1_of_1000_is_forbidden(api: Api) -> None:
    gw = await gateway(api)
    placed = await api.hold(gw["U"], 1_000, key=gw["g_key"], destination_account_id=gw["G"])
    hold_id = placed["hold"]["id"]
    response = await api.post(f"/v1/accounts/{gw['U']}/holds/{hold_id}/capture", {"amount": 1}, key=gw["u_key"])
    api.assert_problem(response, 403, "forbidden")
    assert (await api.get_hold(gw["U"], hold_id))["status"] == "pending"
    captured = await api.capture(gw["U"], hold_id, 1_000, key=gw["g_key"])  # the gateway's own key may
    assert captured["hold"]["captured_amount"] == 1_000
    # A replay by the payer's key learns nothing either: authority comes before the replay.
    response = await api.post(f"/v1/accounts/{gw['U']}/holds/{hold_id}/capture", {"amount": 1_000}, key=gw["u_key"])
    api.assert_problem(response, 403, "forbidden")


async def test_who_placed_a_hold_survives_a_restart(make_api: MakeApi) -> None:
    async with make_api() as api:
        gw = await gateway(api)
        placed = await api.hold(gw["U"], 700, key=gw["g_key"])
        settled = await api.hold(gw["U"], 50, key=gw["g_key"])
        await api.capture(gw["U"], settled["hold"]["id"], key=gw["g_key"])
    async with make_api() as api:  # recovery: the placer is read back from the journal
        for hold_id, action in ((placed["hold"]["id"], "release"), (settled["hold"]["id"], "capture")):
            response = await api.post(f"/v1/accounts/{gw['U']}/holds/{hold_id}/{action}", key=gw["u_key"])
            api.assert_problem(response, 403, "forbidden")
        assert (await api.release(gw["U"], placed["hold"]["id"], key=gw["g_key"]))["hold"]["status"] == "released"


async def test_partner_lifts_admin_freeze_is_forbidden(api: Api) -> None:
    gw = await gateway(api)
    assert (await api.patch_account(gw["U"], status="frozen"))["status"] == "frozen"  # by the admin
    for status in ("active", "closed"):
        response = await api.patch(f"/v1/accounts/{gw['U']}", {"status": status}, key=gw["g_key"])
        api.assert_problem(response, 403, "forbidden")
    assert (await api.account(gw["U"]))["status"] == "frozen"
    # A freeze the partner set, the partner lifts; the admin lifts its own.
    assert (await api.patch_account(gw["U"], status="active"))["status"] == "active"
    assert (await api.patch_account(gw["U"], key=gw["g_key"], status="frozen"))["status"] == "frozen"
    assert (await api.patch_account(gw["U"], key=gw["g_key"], status="active"))["status"] == "active"


async def test_admin_freeze_holds_across_a_restart(make_api: MakeApi) -> None:
    async with make_api() as api:
        gw = await gateway(api)
        await api.patch_account(gw["U"], status="frozen")
    async with make_api() as api:
        response = await api.patch(f"/v1/accounts/{gw['U']}", {"status": "active"}, key=gw["g_key"])
        api.assert_problem(response, 403, "forbidden")


async def test_revoked_key_gets_401_at_once_and_after_a_restart(make_api: MakeApi) -> None:
    async with make_api() as api:
        gw = await gateway(api)
        listed = (await api.get(f"/v1/accounts/{gw['U']}/keys", key=gw["g_key"])).json()["data"]
        assert len(listed) == 1 and gw["u_key"].startswith(listed[0]["prefix"])
        response = await api.request("DELETE", f"/v1/accounts/{gw['U']}/keys/{listed[0]['key_id']}", key=gw["g_key"])
        assert response.status_code == 200, response.text
        assert response.json()["revoked_at"] is not None
        response = await api.get(f"/v1/accounts/{gw['U']}", key=gw["u_key"])
        api.assert_problem(response, 401, "unauthorized")
    async with make_api() as api:
        response = await api.get(f"/v1/accounts/{gw['U']}", key=gw["u_key"])
        api.assert_problem(response, 401, "unauthorized")
        assert (await api.account(gw["U"], key=gw["g_key"]))["id"] == gw["U"]


async def test_key_listing_never_shows_the_key(api: Api) -> None:
    gw = await gateway(api)
    reader = await api.create_key(gw["U"], key=gw["g_key"], scopes=["read"])
    response = await api.get(f"/v1/accounts/{gw['U']}/keys", key=gw["g_key"])
    assert response.status_code == 200, response.text
    listed = response.json()["data"]
    assert [k["scopes"] for k in listed] == [["read", "move"], ["read"]]
    for secret in (gw["u_key"], reader):
        assert secret not in response.text and secret[:8] in response.text
    assert "key_hash" not in response.text
    for k in listed:
        assert set(k) == {"key_id", "account_id", "prefix", "scopes", "created_at", "revoked_at", "client_id"}
    response = await api.get(f"/v1/accounts/{gw['G']}/keys", key=gw["u_key"])  # not above: not its business
    api.assert_problem(response, 403, "forbidden")


async def test_key_of_frozen_account_cannot_move_but_can_read(api: Api) -> None:
    gw = await gateway(api)
    other = (await api.create_account(gw["G"], kind="user"))["id"]
    await api.patch_account(gw["U"], status="frozen")
    assert (await api.account(gw["U"], key=gw["u_key"]))["status"] == "frozen"
    assert await api.history(gw["U"], key=gw["u_key"])
    before = await api.snapshot(gw["U"])
    body = {"id": api.op_id(), "from_account_id": gw["U"], "to_account_id": other, "amount": 1, "currency": "USD"}
    for method, url, payload in (
        ("POST", "/v1/transfers", body),
        ("POST", f"/v1/accounts/{gw['U']}/holds", {"id": api.op_id(), "amount": 1}),
        ("POST", "/v1/accounts", {"parent_id": gw["U"], "kind": "user"}),
    ):
        api.assert_problem(await api.request(method, url, key=gw["u_key"], json=payload), 403, "forbidden")
    assert await api.snapshot(gw["U"]) == before


async def test_key_of_closed_account_gets_401(api: Api) -> None:
    gw = await gateway(api)
    empty = (await api.create_account(gw["G"], kind="user"))["id"]
    key = await api.create_key(empty, key=gw["g_key"])
    await api.patch_account(empty, key=gw["g_key"], status="closed")
    api.assert_problem(await api.get(f"/v1/accounts/{empty}", key=key), 401, "unauthorized")


async def test_read_only_key_cannot_move(api: Api) -> None:
    gw = await gateway(api)
    reader = await api.create_key(gw["U"], key=gw["g_key"], scopes=["read"])
    assert (await api.account(gw["U"], key=reader))["balance"] == 5_000
    before = await api.snapshot(gw["U"])
    body = {"id": api.op_id(), "from_account_id": gw["U"], "to_account_id": gw["G"], "amount": 1, "currency": "USD"}
    api.assert_problem(await api.post("/v1/transfers", body, key=reader), 403, "forbidden")
    response = await api.post(f"/v1/accounts/{gw['U']}/holds", {"id": api.op_id(), "amount": 1}, key=reader)
    api.assert_problem(response, 403, "forbidden")
    assert await api.snapshot(gw["U"]) == before


async def test_platform_key_moves_between_unrelated_accounts_but_manages_nothing(api: Api) -> None:
    one, two = (await gateway(api)), (await gateway(api))
    backend = (await api.create_account(name="gateway backend"))["id"]
    platform = await api.create_key(backend, scopes=["platform"])
    placed = await api.hold(one["U"], 300, key=platform, destination_account_id=two["G"])
    assert (await api.capture(one["U"], placed["hold"]["id"], 200, key=platform))["hold"]["captured_amount"] == 200
    await api.transfer(two["U"], one["U"], 40, key=platform)
    assert (await api.account(two["G"], key=platform))["balance"] == 200
    # A hold the gateway placed, the platform key may finish (and the payer still may not).
    gw_hold = await api.hold(one["U"], 5, key=one["g_key"])
    assert (await api.release(one["U"], gw_hold["hold"]["id"], key=platform))["hold"]["status"] == "released"
    for method, url, payload in (
        ("POST", f"/v1/accounts/{one['U']}/keys", None),
        ("PATCH", f"/v1/accounts/{one['U']}", {"credit_limit": 10}),
        ("PATCH", f"/v1/accounts/{one['U']}", {"status": "frozen"}),
        ("POST", f"/v1/accounts/{one['U']}/credits", {"id": api.op_id(), "amount": 1}),
        ("POST", f"/v1/accounts/{one['U']}/debits", {"id": api.op_id(), "amount": 1}),
    ):
        api.assert_problem(await api.request(method, url, key=platform, json=payload), 403, "forbidden")


async def test_a_key_cannot_create_a_key_wider_than_itself(api: Api) -> None:
    gw = await gateway(api)
    reader = await api.create_key(gw["G"], scopes=["read", "move"])
    for scopes in (["funds"], ["limits"], ["platform"], ["read", "move", "funds"]):
        response = await api.post(f"/v1/accounts/{gw['U']}/keys", {"scopes": scopes}, key=reader)
        api.assert_problem(response, 403, "forbidden")
    child = (await api.create_account(gw["U"], key=gw["g_key"], kind="user"))["id"]
    only_read = await api.create_key(gw["U"], key=gw["g_key"], scopes=["read"])
    response = await api.post(f"/v1/accounts/{child}/keys", {"scopes": ["read"]}, key=only_read)
    api.assert_problem(response, 403, "forbidden")  # a read-only key manages no keys
    for scopes in (["root"], [], ["read", 1]):
        response = await api.post(f"/v1/accounts/{gw['U']}/keys", {"scopes": scopes}, key=gw["g_key"])
        api.assert_problem(response, 422, "validation_error")


async def test_key_creation_with_a_client_id_replays_without_the_secret(make_api: MakeApi) -> None:
    async with make_api() as api:
        gw = await gateway(api)
        body = {"scopes": ["read"], "client_id": "reader-1"}
        first = await api.post(f"/v1/accounts/{gw['U']}/keys", body, key=gw["g_key"])
        assert first.status_code == 201 and first.json()["key"] and first.json()["replayed"] is False
    async with make_api() as api:
        again = await api.post(f"/v1/accounts/{gw['U']}/keys", body, key=gw["g_key"])
        assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["key"] is None and again.json()["replayed"] is True
        assert again.json()["key_id"] == first.json()["key_id"]
        assert len((await api.get(f"/v1/accounts/{gw['U']}/keys", key=gw["g_key"])).json()["data"]) == 2
        other = await api.post(f"/v1/accounts/{gw['U']}/keys", {**body, "scopes": ["read", "move"]}, key=gw["g_key"])
        api.assert_problem(other, 409, "idempotency_conflict")


async def test_generated_admin_key_survives_a_restart(tmp_path: Path) -> None:
    settings = Settings.from_env({"BALANCE_DATA_DIR": str(tmp_path)})
    assert settings.admin_key_generated
    first = bootstrap.build_service(settings, on_fatal=lambda exc: None)
    assert (tmp_path / ADMIN_KEY_FILE).read_text().strip() != settings.admin_key  # the hash, never the key
    assert first.actor(settings.admin_key) is not None
    later = Settings.from_env({"BALANCE_DATA_DIR": str(tmp_path)})  # a new random key, not used
    second = bootstrap.build_service(later, on_fatal=lambda exc: None)
    assert second.principal(settings.admin_key) == "admin"
    assert second.actor(later.admin_key) is None
