"""Who may act on which account: partner keys on their own subtree, strict ancestors for PATCH and keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from balance.service import shard_of

if TYPE_CHECKING:  # tests/e2e is no package: the harness is reached through fixtures
    from tests.e2e.conftest import Api


@dataclass
class Tree:
    """T (top) → P (partner) → C, S (siblings) → G (child of C); a key for each of T, P, C, S."""

    api: Api
    T: str
    P: str
    C: str
    S: str
    G: str
    keys: dict[str, str]


@pytest.fixture
async def tree(api: Api) -> Tree:
    t = (await api.create_account(name="T"))["id"]
    p = (await api.create_account(t, name="P"))["id"]
    c = (await api.create_account(p, kind="provider", name="C"))["id"]
    s = (await api.create_account(p, kind="provider", name="S"))["id"]
    g = (await api.create_account(c, kind="user", name="G"))["id"]
    for account in (t, p, c, s, g):
        await api.credit(account, 1_000, id="seed")
    await api.hold(p, 100, id="p-hold")
    await api.hold(s, 100, id="s-hold")
    # Keys with every scope the admin may give a partner: these tests are about the subtree they reach.
    scopes = ["read", "move", "funds", "limits"]
    keys = {
        name: await api.create_key(account, scopes=scopes) for name, account in (("T", t), ("P", p), ("C", c), ("S", s))
    }
    return Tree(api, t, p, c, s, g, keys)


def forbidden_requests(tr: Tree, key: str, victim: str, own: str) -> list[tuple[str, str, Any]]:
    """Every way ``key`` (the owner of ``own``) could try to read or move ``victim``'s money."""
    hold_id = {tr.P: "p-hold", tr.S: "s-hold"}.get(victim, "nope")
    return [
        ("GET", f"/v1/accounts/{victim}", None),
        ("GET", f"/v1/accounts/{victim}/children", None),
        ("GET", f"/v1/accounts/{victim}/transactions", None),
        ("GET", f"/v1/accounts/{victim}/holds/{hold_id}", None),
        ("PATCH", f"/v1/accounts/{victim}", {"name": "mine"}),
        ("POST", f"/v1/accounts/{victim}/keys", None),
        ("POST", "/v1/accounts", {"parent_id": victim, "kind": "user"}),
        ("POST", f"/v1/accounts/{victim}/credits", {"id": "x-1", "amount": 1}),
        ("POST", f"/v1/accounts/{victim}/debits", {"id": "x-1", "amount": 1}),
        ("POST", f"/v1/accounts/{victim}/holds", {"id": "x-1", "amount": 1}),
        ("POST", f"/v1/accounts/{victim}/holds/{hold_id}/capture", {}),
        ("POST", f"/v1/accounts/{victim}/holds/{hold_id}/release", None),
        (
            "POST",
            "/v1/transfers",
            {"id": "x-1", "from_account_id": victim, "to_account_id": own, "amount": 1, "currency": "USD"},
        ),
        (
            "POST",
            "/v1/transfers",
            {"id": "x-2", "from_account_id": own, "to_account_id": victim, "amount": 1, "currency": "USD"},
        ),
        ("POST", f"/v1/accounts/{own}/holds", {"id": "x-3", "amount": 1, "destination_account_id": victim}),
    ]


async def assert_forbidden_everywhere(tr: Tree, key_name: str, own: str, victims: list[str]) -> None:
    api, key = tr.api, tr.keys[key_name]
    before = await api.snapshot(*victims, own)
    holds_before = [await api.get_hold(a, h) for a, h in ((tr.P, "p-hold"), (tr.S, "s-hold"))]
    for victim in victims:
        for method, url, body in forbidden_requests(tr, key, victim, own):
            response = await api.request(method, url, key=key, json=body)
            problem = api.assert_problem(response, 403, "forbidden")
            assert victim in problem["detail"] or "ancestor" in problem["detail"], problem
    assert await api.snapshot(*victims, own) == before
    assert [await api.get_hold(a, h) for a, h in ((tr.P, "p-hold"), (tr.S, "s-hold"))] == holds_before


async def test_child_key_cannot_touch_parent_nor_sibling(tree: Tree) -> None:
    await assert_forbidden_everywhere(tree, "C", tree.C, [tree.P, tree.S, tree.T])


async def test_sibling_key_cannot_touch_the_other_sibling_nor_its_child(tree: Tree) -> None:
    await assert_forbidden_everywhere(tree, "S", tree.S, [tree.C, tree.G, tree.P])


async def test_partner_key_gets_403_not_404_for_accounts_it_cannot_see(tree: Tree) -> None:
    """An unknown id and a foreign id answer alike: a key learns nothing about other trees."""
    for account in ("US-0-0000000000000000", "nobody", tree.T):
        response = await tree.api.get(f"/v1/accounts/{account}", key=tree.keys["C"])
        tree.api.assert_problem(response, 403, "forbidden")


async def test_batch_with_a_foreign_operation_refuses_only_that_one(tree: Tree) -> None:
    api, key = tree.api, tree.keys["C"]
    before = await api.snapshot(tree.S, tree.P)
    ops = [
        {"op": "credit", "account_id": tree.C, "id": "b-1", "amount": 10},
        {"op": "credit", "account_id": tree.S, "id": "b-1", "amount": 10},
        {"op": "debit", "account_id": tree.P, "id": "b-1", "amount": 10},
        {
            "op": "transfer",
            "id": "b-2",
            "from_account_id": tree.C,
            "to_account_id": tree.S,
            "amount": 5,
            "currency": "USD",
        },
        {
            "op": "transfer",
            "id": "b-3",
            "from_account_id": tree.S,
            "to_account_id": tree.C,
            "amount": 5,
            "currency": "USD",
        },
        {"op": "hold", "account_id": tree.C, "id": "b-4", "amount": 5, "destination_account_id": tree.P},
        {"op": "release", "account_id": tree.S, "hold_id": "s-hold"},
        {"op": "capture", "account_id": tree.P, "hold_id": "p-hold"},
        {
            "op": "transfer",
            "id": "b-5",
            "from_account_id": tree.C,
            "to_account_id": tree.G,
            "amount": 5,
            "currency": "USD",
        },
        {"op": "hold", "account_id": tree.G, "id": "b-6", "amount": 5},
        {"op": "debit", "account_id": tree.C, "id": "b-7", "amount": 1},
    ]
    response = await api.post("/v1/batch", {"operations": ops}, key=key)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201, 403, 403, 403, 403, 403, 403, 403, 201, 201, 201]
    for result in results[1:8]:
        api.assert_problem_body(result["body"], 403, "forbidden")
    assert results[-1]["body"]["account"]["balance"] == 1_000 + 10 - 5 - 1
    assert await api.snapshot(tree.S, tree.P) == before


async def test_partner_key_acts_on_itself_children_and_grandchildren(tree: Tree) -> None:
    api, key = tree.api, tree.keys["P"]
    for account in (tree.P, tree.C, tree.S, tree.G):
        assert (await api.account(account, key=key))["id"] == account
        await api.credit(account, 10, key=key)
        await api.debit(account, 5, key=key)
        assert [t["kind"] for t in await api.history(account, key=key)][:3] == [
            "debit",
            "credit",
            "hold" if account in (tree.P, tree.S) else "credit",
        ]
    await api.transfer(tree.P, tree.G, 50, key=key)  # down two levels
    await api.transfer(tree.G, tree.C, 20, key=key)  # up one
    await api.transfer(tree.C, tree.S, 10, key=key)  # between its children
    await api.transfer(tree.S, tree.P, 10, key=key)  # up to itself
    placed = await api.hold(tree.G, 30, key=key, destination_account_id=tree.P)
    assert placed["hold"]["destination_account_id"] == tree.P
    assert (await api.capture(tree.G, placed["hold"]["id"], 10, key=key))["hold"]["captured_amount"] == 10
    assert (await api.get_hold(tree.G, placed["hold"]["id"], key=key))["status"] == "captured"
    own = await api.hold(tree.S, 20, key=key)
    assert (await api.release(tree.S, own["hold"]["id"], key=key))["hold"]["status"] == "released"
    own = await api.hold(tree.P, 20, key=key)
    assert (await api.capture(tree.P, own["hold"]["id"], key=key))["hold"]["status"] == "captured"  # its own hold
    # The admin placed p-hold: the partner's key may not finish it (who placed a hold finishes it).
    response = await api.post(f"/v1/accounts/{tree.P}/holds/p-hold/capture", {}, key=key)
    api.assert_problem(response, 403, "forbidden")
    children = (await api.get(f"/v1/accounts/{tree.P}/children", key=key)).json()["data"]
    assert {c["id"] for c in children} == {tree.C, tree.S}
    # Strict ancestor: it may PATCH its descendants and create their keys, and create accounts below them.
    assert (await api.patch_account(tree.C, key=key, credit_limit=500))["credit_limit"] == 500
    assert (await api.patch_account(tree.G, key=key, status="frozen"))["status"] == "frozen"
    g_key = await api.create_key(tree.G, key=key)
    assert (await api.account(tree.G, key=g_key))["status"] == "frozen"
    new = await api.create_account(tree.P, key=key, kind="user")
    deeper = await api.create_account(tree.G, key=key, kind="user")
    assert (new["parent_id"], deeper["parent_id"]) == (tree.P, tree.G)
    await api.credit(deeper["id"], 1, key=key)
    assert (await api.get_hold(tree.P, "p-hold", key=key))["status"] == "pending"


async def test_partner_key_may_create_children_of_itself(tree: Tree) -> None:
    api = tree.api
    child = await api.create_account(tree.C, key=tree.keys["C"], kind="user", name="mine")
    assert child["parent_id"] == tree.C
    await api.transfer(tree.C, child["id"], 3, key=tree.keys["C"])
    assert (await api.account(child["id"], key=tree.keys["C"]))["balance"] == 3


async def test_partner_key_cannot_create_top_level_patch_itself_nor_make_its_own_keys(tree: Tree) -> None:
    api, key = tree.api, tree.keys["P"]
    before = await api.snapshot(tree.P)
    response = await api.post("/v1/accounts", {"kind": "partner", "region": "US", "currency": "USD"}, key=key)
    api.assert_problem(response, 403, "forbidden")
    for patch in ({"credit_limit": 10**9}, {"status": "active"}, {"name": "me"}, {"metadata": {"vip": True}}):
        response = await api.patch(f"/v1/accounts/{tree.P}", patch, key=key)
        api.assert_problem(response, 403, "forbidden")
    response = await api.post(f"/v1/accounts/{tree.P}/keys", key=key)
    api.assert_problem(response, 403, "forbidden")
    assert await api.snapshot(tree.P) == before
    # Its parent's key may do both; so may the admin.
    raised = await api.patch_account(tree.P, key=tree.keys["T"], credit_limit=5_000)
    assert (raised["credit_limit"], raised["available"]) == (5_000, 1_000 - 100 + 5_000)
    new_key = await api.create_key(tree.P, key=tree.keys["T"])
    assert (await api.account(tree.P, key=new_key))["credit_limit"] == 5_000
    assert (await api.patch_account(tree.P, name="by admin"))["name"] == "by admin"
    # The top-level partner cannot raise its own limit either.
    response = await api.patch(f"/v1/accounts/{tree.T}", {"credit_limit": 1}, key=tree.keys["T"])
    api.assert_problem(response, 403, "forbidden")


async def test_admin_can_do_everything(tree: Tree) -> None:
    api = tree.api
    top = await api.create_account(region="ASIA", currency="USD")
    for account in (tree.T, tree.P, tree.C, tree.S, tree.G, top["id"]):
        await api.credit(account, 7)
        await api.debit(account, 2)
        assert (await api.patch_account(account, credit_limit=3))["credit_limit"] == 3
        assert await api.create_key(account)
        assert await api.history(account)
    await api.transfer(tree.G, top["id"], 5)  # across trees
    await api.transfer(tree.S, tree.C, 5)
    assert (await api.capture(tree.S, "s-hold", 40))["hold"]["captured_amount"] == 40
    assert (await api.release(tree.P, "p-hold"))["hold"]["status"] == "released"
    system = await api.account("SYS-0-funding-USD")  # admin may even read the system accounts
    assert system["kind"] == "funding" and system["balance"] < 0


async def test_keys_of_one_tree_do_not_open_another(tree: Tree) -> None:
    api = tree.api
    other = await api.create_account()
    other_key = await api.create_key(other["id"])
    for account in (tree.T, tree.P, tree.C):
        response = await api.get(f"/v1/accounts/{account}", key=other_key)
        api.assert_problem(response, 403, "forbidden")
    response = await api.get(f"/v1/accounts/{other['id']}", key=tree.keys["T"])
    api.assert_problem(response, 403, "forbidden")


async def test_key_for_an_account_on_shard_1(api2: Api) -> None:
    tops = [await api2.create_account() for _ in range(4)]
    on_1 = next(t for t in tops if shard_of(t["id"]) == 1)
    on_0 = next(t for t in tops if shard_of(t["id"]) == 0)
    key = await api2.create_key(on_1["id"], scopes=["read", "move", "funds"])
    assert (await api2.account(on_1["id"], key=key))["id"] == on_1["id"]
    await api2.credit(on_1["id"], 100, key=key)
    child = await api2.create_account(on_1["id"], key=key, kind="user")
    assert shard_of(child["id"]) == 1
    await api2.transfer(on_1["id"], child["id"], 40, key=key)
    placed = await api2.hold(child["id"], 10, key=key)
    await api2.capture(child["id"], placed["hold"]["id"], key=key)
    child_key = await api2.create_key(child["id"], key=key)
    assert (await api2.account(child["id"], key=child_key))["balance"] == 30
    response = await api2.get(f"/v1/accounts/{on_1['id']}", key=child_key)
    api2.assert_problem(response, 403, "forbidden")
    for account in (on_0["id"], "US-1-0000000000000000"):
        response = await api2.get(f"/v1/accounts/{account}", key=key)
        api2.assert_problem(response, 403, "forbidden")
    ops = [{"op": "credit", "account_id": a, "id": "b-1", "amount": 1} for a in (on_1["id"], on_0["id"], child["id"])]
    results = (await api2.post("/v1/batch", {"operations": ops}, key=key)).json()["results"]
    assert [r["status"] for r in results] == [201, 403, 201]
