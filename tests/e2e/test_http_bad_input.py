"""Bad input, one kind per case: the right status and problem, and NOTHING changed.

Every case runs against the same small world (accounts in every state, holds in every state,
a child's key). Before and after the request we take each account as GET shows it, its full
history, its holds, the children of the parent, and how many accounts exist: all must be equal.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # tests/e2e is no package: the harness is reached through fixtures
    from tests.e2e.conftest import Api

BIG = 2**62


@dataclass
class World:
    api: Api
    P: str  # top-level USD partner, balance 1000 - holds; holds below
    C: str  # child of P, balance 100; its key is `child_key`
    S: str  # sibling of C
    E: str  # top-level EUR account, balance 50
    F: str  # frozen child of P, balance 10
    Z: str  # closed child of P, balance 0
    child_key: str

    async def snapshot(self) -> dict[str, Any]:
        ids = (self.P, self.C, self.S, self.E, self.F, self.Z)
        state = await self.api.snapshot(*ids)
        state["holds"] = [await self.api.get_hold(self.P, h) for h in ("h-pending", "h-released", "h-captured")]
        state["children"] = (await self.api.get(f"/v1/accounts/{self.P}/children")).json()
        state["accounts"] = sum(len(engine.ledger.accounts) for engine in self.api.service.engines)
        return state


@pytest.fixture
async def world(api: Api) -> World:
    p = (await api.create_account(name="P"))["id"]
    c = (await api.create_account(p, kind="user", name="C"))["id"]
    s = (await api.create_account(p, kind="user", name="S"))["id"]
    e = (await api.create_account(region="EU", currency="EUR", name="E"))["id"]
    f = (await api.create_account(p, kind="user", name="F"))["id"]
    z = (await api.create_account(p, kind="user", name="Z"))["id"]
    await api.credit(p, 1_000, id="seed")
    await api.credit(c, 100, id="seed")
    await api.credit(e, 50, id="seed")
    await api.credit(f, 10, id="seed")
    await api.patch_account(f, status="frozen")
    await api.patch_account(z, status="closed")
    await api.hold(p, 100, id="h-pending", destination_account_id=c)
    await api.hold(p, 50, id="h-released")
    await api.release(p, "h-released")
    await api.hold(p, 30, id="h-captured")
    await api.capture(p, "h-captured")
    return World(api, p, c, s, e, f, z, await api.create_key(c))


@dataclass
class Req:
    method: str
    url: str
    json: Any = None
    content: bytes | None = None
    params: dict[str, str] | None = None
    key: str | None = "admin"  # "admin", "child", None (no header) or a literal Authorization value
    literal_auth: bool = False


Build = Callable[[World], Req]


def credit(body: Any) -> Build:
    return lambda w: Req("POST", f"/v1/accounts/{w.P}/credits", json=body)


def credit_raw(raw: bytes) -> Build:
    return lambda w: Req("POST", f"/v1/accounts/{w.P}/credits", content=raw)


def transfer(**fields: Any) -> Build:
    def build(w: World) -> Req:
        body = {"id": "t-bad", "from_account_id": w.P, "to_account_id": w.C, "amount": 10, "currency": "USD"}
        body.update(
            {k: (getattr(w, v[1:]) if isinstance(v, str) and v.startswith("@") else v) for k, v in fields.items()}
        )
        return Req("POST", "/v1/transfers", json={k: v for k, v in body.items() if v is not ...})

    return build


def hold(account: str = "P", **fields: Any) -> Build:
    def build(w: World) -> Req:
        body = {"id": "h-bad", "amount": 10, **fields}
        if isinstance(body.get("destination_account_id"), str) and body["destination_account_id"].startswith("@"):
            body["destination_account_id"] = getattr(w, body["destination_account_id"][1:])
        return Req("POST", f"/v1/accounts/{getattr(w, account)}/holds", json=body)

    return build


def history(**params: str) -> Build:
    return lambda w: Req("GET", f"/v1/accounts/{w.P}/transactions", params=params)


def children(**params: str) -> Build:
    return lambda w: Req("GET", f"/v1/accounts/{w.P}/children", params=params)


def new_account(**fields: Any) -> Build:
    def build(w: World) -> Req:
        body = {"kind": "user", **fields}
        if body.get("parent_id") is not None and body["parent_id"].startswith("@"):
            body["parent_id"] = getattr(w, body["parent_id"][1:])
        return Req("POST", "/v1/accounts", json=body)

    return build


def patch(account: str = "C", **fields: Any) -> Build:
    return lambda w: Req("PATCH", f"/v1/accounts/{getattr(w, account)}", json=fields)


def batch(operations: Callable[[World], Any]) -> Build:
    return lambda w: Req("POST", "/v1/batch", json={"operations": operations(w)})


def ok_credit_op(w: World, i: int) -> dict[str, Any]:
    return {"op": "credit", "account_id": w.C, "id": f"b-{i}", "amount": 1}


VALID = {"id": "c-bad", "amount": 10}

# (case id, status, code, request). Each is a distinct kind of bad input.
# fmt: off
CASES: list[tuple[str, int, str, Build]] = [
    # ---- body shape ------------------------------------------------------------------------
    ("malformed-json", 422, "validation_error", credit_raw(b'{"id": "x", "amount": 1')),
    ("json-array-not-object", 422, "validation_error", credit_raw(b'[{"id": "x", "amount": 1}]')),
    ("empty-body", 422, "validation_error", credit_raw(b"")),
    ("json-null-body", 422, "validation_error", credit_raw(b"null")),
    ("not-utf8", 422, "validation_error", credit_raw(b'{"id": "\xff\xfe", "amount": 1}')),
    ("missing-id", 422, "validation_error", credit({"amount": 10})),
    ("id-empty", 422, "validation_error", credit({**VALID, "id": ""})),
    ("id-65-chars", 422, "validation_error", credit({**VALID, "id": "a" * 65})),
    ("id-with-space", 422, "validation_error", credit({**VALID, "id": "a b"})),
    ("id-with-slash", 422, "validation_error", credit({**VALID, "id": "a/b"})),
    ("id-not-ascii", 422, "validation_error", credit({**VALID, "id": "caf\u00e9"})),
    ("id-number", 422, "validation_error", credit({**VALID, "id": 12})),
    ("amount-zero", 422, "validation_error", credit({**VALID, "amount": 0})),
    ("amount-negative", 422, "validation_error", credit({**VALID, "amount": -5})),
    ("amount-float", 422, "validation_error", credit({**VALID, "amount": 1.5})),
    ("amount-float-2.5e-1", 422, "validation_error", credit({**VALID, "amount": 0.25e1})),
    ("amount-float-integral-past-2^62", 422, "validation_error", credit_raw(b'{"id": "x", "amount": 4.7e18}')),
    ("id-trailing-newline", 422, "validation_error", credit({**VALID, "id": "a\n"})),
    ("amount-string", 422, "validation_error", credit({**VALID, "amount": "10"})),
    ("amount-bool", 422, "validation_error", credit({**VALID, "amount": True})),
    ("amount-null", 422, "validation_error", credit({**VALID, "amount": None})),
    ("amount-2^62+1", 422, "validation_error", credit({**VALID, "amount": BIG + 1})),
    ("amount-2^64", 422, "validation_error", credit({**VALID, "amount": 2**64})),
    ("missing-amount", 422, "validation_error", credit({"id": "c-bad"})),
    ("unknown-field", 422, "validation_error", credit({**VALID, "colour": "red"})),
    ("description-501-chars", 422, "validation_error", credit({**VALID, "description": "d" * 501})),
    ("metadata-not-object", 422, "validation_error", credit({**VALID, "metadata": [1, 2]})),
    ("metadata-over-4096-bytes", 422, "validation_error", credit({**VALID, "metadata": {"k": "v" * 4100}})),
    # ---- currencies and transfers ----------------------------------------------------------
    ("currency-lower-case", 422, "validation_error", transfer(currency="usd")),
    ("currency-not-iso", 422, "validation_error", transfer(currency="XXX")),
    ("currency-two-letters", 422, "validation_error", transfer(currency="US")),
    ("transfer-missing-currency", 422, "validation_error", transfer(currency=...)),
    ("transfer-to-self", 422, "validation_error", transfer(to_account_id="@P")),
    ("transfer-currency-field-mismatch", 422, "currency_mismatch", transfer(currency="EUR")),
    ("transfer-between-currencies", 422, "currency_mismatch", transfer(to_account_id="@E")),
    ("transfer-to-unknown-account", 404, "account_not_found", transfer(to_account_id="US-0-0000000000000000")),
    ("transfer-to-foreign-id", 404, "account_not_found", transfer(to_account_id="nobody")),
    ("transfer-from-unknown-account", 404, "account_not_found", transfer(from_account_id="US-0-0000000000000000")),
    ("transfer-insufficient-funds", 422, "insufficient_funds", transfer(amount=10**9)),
    ("transfer-to-frozen", 409, "account_inactive", transfer(to_account_id="@F")),
    ("transfer-from-frozen", 409, "account_inactive", transfer(from_account_id="@F", to_account_id="@P")),
    ("transfer-to-closed", 409, "account_inactive", transfer(to_account_id="@Z")),
    # ---- debits, credits on inactive accounts ----------------------------------------------
    ("debit-insufficient-funds", 422, "insufficient_funds",
     lambda w: Req("POST", f"/v1/accounts/{w.C}/debits", json={"id": "d-bad", "amount": 101})),
    ("credit-frozen", 409, "account_inactive", lambda w: Req("POST", f"/v1/accounts/{w.F}/credits", json=VALID)),
    ("debit-frozen", 409, "account_inactive",
     lambda w: Req("POST", f"/v1/accounts/{w.F}/debits", json={"id": "d-bad", "amount": 1})),
    ("credit-closed", 409, "account_inactive", lambda w: Req("POST", f"/v1/accounts/{w.Z}/credits", json=VALID)),
    ("credit-unknown-account", 404, "account_not_found",
     lambda w: Req("POST", "/v1/accounts/US-0-0000000000000000/credits", json=VALID)),
    ("credit-system-account", 422, "validation_error",
     lambda w: Req("POST", "/v1/accounts/SYS-0-funding-USD/credits", json=VALID)),
    ("idempotency-conflict", 409, "idempotency_conflict", credit({"id": "seed", "amount": 999})),
    # ---- holds -----------------------------------------------------------------------------
    ("hold-expires-0", 422, "validation_error", hold(expires_in_s=0)),
    ("hold-expires-604801", 422, "validation_error", hold(expires_in_s=604_801)),
    ("hold-destination-unknown", 404, "account_not_found", hold(destination_account_id="US-0-0000000000000000")),
    ("hold-destination-self", 422, "validation_error", hold(destination_account_id="@P")),
    ("hold-destination-other-currency", 422, "currency_mismatch", hold(destination_account_id="@E")),
    ("hold-destination-frozen", 409, "account_inactive", hold(destination_account_id="@F")),
    ("hold-insufficient-funds", 422, "insufficient_funds", hold(amount=871)),  # available is 870
    ("hold-on-frozen", 409, "account_inactive", hold("F", amount=1)),
    ("hold-id-reused-differently", 409, "idempotency_conflict", hold(id="h-pending", amount=99)),
    ("capture-more-than-hold", 422, "amount_exceeds_hold",
     lambda w: Req("POST", f"/v1/accounts/{w.P}/holds/h-pending/capture", json={"amount": 101})),
    ("capture-zero", 422, "validation_error",
     lambda w: Req("POST", f"/v1/accounts/{w.P}/holds/h-pending/capture", json={"amount": 0})),
    ("capture-unknown-field", 422, "validation_error",
     lambda w: Req("POST", f"/v1/accounts/{w.P}/holds/h-pending/capture", json={"amount": 1, "x": 1})),
    ("release-with-body-field", 422, "validation_error",
     lambda w: Req("POST", f"/v1/accounts/{w.P}/holds/h-pending/release", json={"amount": 1})),
    ("capture-released-hold", 409, "hold_not_pending",
     lambda w: Req("POST", f"/v1/accounts/{w.P}/holds/h-released/capture", json={})),
    ("release-captured-hold", 409, "hold_not_pending",
     lambda w: Req("POST", f"/v1/accounts/{w.P}/holds/h-captured/release")),
    ("capture-captured-hold-other-amount", 409, "hold_not_pending",
     lambda w: Req("POST", f"/v1/accounts/{w.P}/holds/h-captured/capture", json={"amount": 1})),
    ("capture-unknown-hold", 404, "hold_not_found",
     lambda w: Req("POST", f"/v1/accounts/{w.P}/holds/nope/capture", json={})),
    ("capture-hold-of-another-account", 404, "hold_not_found",
     lambda w: Req("POST", f"/v1/accounts/{w.C}/holds/h-pending/capture", json={})),
    ("release-hold-id-bad-chars", 404, "hold_not_found",
     lambda w: Req("POST", f"/v1/accounts/{w.P}/holds/bad%20id/release")),
    ("get-unknown-hold", 404, "hold_not_found", lambda w: Req("GET", f"/v1/accounts/{w.P}/holds/nope")),
    # ---- query strings ---------------------------------------------------------------------
    ("history-limit-0", 422, "validation_error", history(limit="0")),
    ("history-limit-1001", 422, "validation_error", history(limit="1001")),
    ("history-limit-abc", 422, "validation_error", history(limit="abc")),
    ("history-limit-negative", 422, "validation_error", history(limit="-1")),
    ("history-limit-unicode-digit", 422, "validation_error", history(limit="\u00b2")),
    ("history-limit-5000-digits", 422, "validation_error", history(limit="9" * 5000)),
    ("history-bad-cursor", 422, "validation_error", history(cursor="abc")),
    ("history-cursor-beyond-int64", 422, "validation_error", history(cursor="9999999999999999999")),
    ("history-cursor-19-digits", 422, "validation_error", history(cursor="1000000000000000000")),
    ("history-cursor-empty", 422, "validation_error", history(cursor="")),
    ("children-cursor-not-an-id", 422, "validation_error", children(cursor="a b")),
    ("children-cursor-empty", 422, "validation_error", children(cursor="")),
    ("history-limit-empty", 422, "validation_error", history(limit="")),
    ("history-since-empty", 422, "validation_error", history(since="")),
    ("history-since-leap-day-of-a-common-year", 422, "validation_error", history(since="2023-02-29T00:00:00Z")),
    ("history-since-week-date", 422, "validation_error", history(since="2024-W01-1T00:00:00Z")),
    ("history-cursor-unicode-digit", 422, "validation_error", history(cursor="\u00b9\u00b2")),
    ("history-since-not-a-timestamp", 422, "validation_error", history(since="yesterday")),
    ("history-since-without-zone", 422, "validation_error", history(since="2024-01-01T00:00:00")),
    ("history-until-not-a-timestamp", 422, "validation_error", history(until="2024-13-01T00:00:00Z")),
    ("children-limit-1001", 422, "validation_error",
     lambda w: Req("GET", f"/v1/accounts/{w.P}/children", params={"limit": "1001"})),
    ("children-limit-unicode-digit", 422, "validation_error",
     lambda w: Req("GET", f"/v1/accounts/{w.P}/children", params={"limit": "\u00b3"})),
    # ---- accounts --------------------------------------------------------------------------
    ("account-kind-not-in-enum", 422, "validation_error", new_account(parent_id="@P", kind="admin")),
    ("account-region-not-in-enum", 422, "validation_error", new_account(parent_id="@P", region="MARS")),
    ("account-missing-kind", 422, "validation_error",
     lambda w: Req("POST", "/v1/accounts", json={"parent_id": w.P})),
    ("account-metadata-not-object", 422, "validation_error", new_account(parent_id="@P", metadata="x")),
    ("account-name-201-chars", 422, "validation_error", new_account(parent_id="@P", name="n" * 201)),
    ("account-credit-limit-negative", 422, "validation_error", new_account(parent_id="@P", credit_limit=-1)),
    ("account-currency-lower-case", 422, "validation_error", new_account(parent_id="@P", currency="eur")),
    ("top-level-currency-not-iso", 422, "validation_error", new_account(region="US", currency="XXX")),
    ("top-level-without-currency", 422, "validation_error", new_account(region="US")),
    ("account-parent-unknown", 404, "account_not_found", new_account(parent_id="US-0-0000000000000000")),
    ("account-parent-closed", 409, "account_inactive", new_account(parent_id="@Z")),
    ("account-parent-system", 422, "validation_error", new_account(parent_id="SYS-0-funding-USD")),
    ("patch-name-201-chars", 422, "validation_error", patch(name="n" * 201)),
    ("patch-credit-limit-negative", 422, "validation_error", patch(credit_limit=-1)),
    ("patch-credit-limit-over-max", 422, "validation_error", patch(credit_limit=BIG + 1)),
    ("patch-status-deleted", 422, "validation_error", patch(status="deleted")),
    ("patch-unknown-field", 422, "validation_error", patch(balance=10**6)),
    ("patch-metadata-over-4096-bytes", 422, "validation_error", patch(metadata={"k": "v" * 4100})),
    ("patch-close-with-balance", 409, "account_not_empty", patch(status="closed")),
    ("patch-close-with-pending-hold", 409, "account_not_empty", patch("P", status="closed")),
    ("patch-closed-account", 409, "account_inactive", patch("Z", name="again")),
    ("patch-unknown-account", 404, "account_not_found",
     lambda w: Req("PATCH", "/v1/accounts/US-0-0000000000000000", json={"name": "x"})),
    ("get-unknown-account", 404, "account_not_found", lambda w: Req("GET", "/v1/accounts/US-0-0000000000000000")),
    ("get-account-shard-unicode-digit", 404, "account_not_found", lambda w: Req("GET", "/v1/accounts/US-\u00b2-x")),
    ("get-account-shard-5000-digits", 404, "account_not_found",
     lambda w: Req("GET", "/v1/accounts/US-" + "1" * 5000 + "-x")),
    ("credit-account-shard-unicode-digit", 404, "account_not_found",
     lambda w: Req("POST", "/v1/accounts/US-\u00b2-x/credits", json=VALID)),
    # ---- routes and auth -------------------------------------------------------------------
    ("unknown-route", 404, "not_found", lambda w: Req("GET", "/v1/nothing-here")),
    ("wrong-method", 405, "method_not_allowed", lambda w: Req("DELETE", f"/v1/accounts/{w.P}")),
    ("missing-authorization", 401, "unauthorized", lambda w: Req("POST", f"/v1/accounts/{w.P}/credits", json=VALID, key=None)),
    ("unknown-key", 401, "unauthorized",
     lambda w: Req("POST", f"/v1/accounts/{w.P}/credits", json=VALID, key="Bearer bk_wrong", literal_auth=True)),
    ("basic-scheme", 401, "unauthorized",
     lambda w: Req("POST", f"/v1/accounts/{w.P}/credits", json=VALID, key="Basic dGVzdC1hZG1pbg==", literal_auth=True)),
    ("bearer-without-token", 401, "unauthorized",
     lambda w: Req("POST", f"/v1/accounts/{w.P}/credits", json=VALID, key="Bearer", literal_auth=True)),
    ("child-key-on-parent", 403, "forbidden", lambda w: Req("POST", f"/v1/accounts/{w.P}/debits", json=VALID, key="child")),
    ("child-key-patches-itself", 403, "forbidden",
     lambda w: Req("PATCH", f"/v1/accounts/{w.C}", json={"credit_limit": 10**6}, key="child")),
    # ---- batches ---------------------------------------------------------------------------
    ("batch-zero-operations", 422, "validation_error", batch(lambda w: [])),
    ("batch-8191-operations", 422, "validation_error", batch(lambda w: [ok_credit_op(w, i) for i in range(8191)])),
    ("batch-operations-not-a-list", 422, "validation_error", batch(lambda w: {"op": "credit"})),
    ("batch-missing-operations", 422, "validation_error", lambda w: Req("POST", "/v1/batch", json={})),
    ("batch-unknown-top-level-field", 422, "validation_error",
     lambda w: Req("POST", "/v1/batch", json={"operations": [ok_credit_op(w, 0)], "atomic": True})),
]

# Batches whose operations are each answered: the request is 200, the one operation is refused.
BATCH_OP_CASES: list[tuple[str, int, str, Callable[[World], dict[str, Any]]]] = [
    ("op-unknown", 422, "validation_error", lambda w: {"op": "refund", "account_id": w.C, "id": "x", "amount": 1}),
    ("op-missing", 422, "validation_error", lambda w: {"account_id": w.C, "id": "x", "amount": 1}),
    ("op-not-an-object", 422, "validation_error", lambda w: 42),
    ("op-missing-account", 422, "validation_error", lambda w: {"op": "credit", "id": "x", "amount": 1}),
    ("op-bad-amount", 422, "validation_error", lambda w: {"op": "debit", "account_id": w.C, "id": "x", "amount": -1}),
    ("op-bad-currency", 422, "validation_error",
     lambda w: {"op": "transfer", "id": "x", "from_account_id": w.C, "to_account_id": w.S, "amount": 1, "currency": "ABC"}),
    ("op-insufficient-funds", 422, "insufficient_funds",
     lambda w: {"op": "debit", "account_id": w.C, "id": "x", "amount": 10**6}),
    ("op-unknown-account", 404, "account_not_found",
     lambda w: {"op": "credit", "account_id": "US-0-0000000000000000", "id": "x", "amount": 1}),
    ("op-unknown-hold", 404, "hold_not_found", lambda w: {"op": "release", "account_id": w.C, "hold_id": "nope"}),
    ("op-hold-not-pending", 409, "hold_not_pending",
     lambda w: {"op": "capture", "account_id": w.P, "hold_id": "h-released"}),
    ("op-frozen", 409, "account_inactive", lambda w: {"op": "credit", "account_id": w.F, "id": "x", "amount": 1}),
]
# fmt: on


async def send(w: World, req: Req) -> Any:
    headers = {}
    if req.literal_auth:
        headers["Authorization"] = req.key or ""
        key = None
    else:
        key = {"admin": w.api.admin, "child": w.child_key, None: None}[req.key]
    kwargs: dict[str, Any] = {"headers": headers, "key": key}
    if req.json is not None:
        kwargs["content"] = json.dumps(req.json).encode()
        headers["content-type"] = "application/json"
    if req.content is not None:
        kwargs["content"] = req.content
    if req.params is not None:
        kwargs["params"] = req.params
    return await w.api.request(req.method, req.url, **kwargs)


def test_at_least_thirty_kinds() -> None:
    names = [case[0] for case in CASES] + [case[0] for case in BATCH_OP_CASES]
    assert len(names) == len(set(names))
    assert len(names) >= 30


@pytest.mark.parametrize(("status", "code", "build"), [pytest.param(*case[1:], id=case[0]) for case in CASES])
async def test_bad_input_is_refused_and_changes_nothing(world: World, status: int, code: str, build: Build) -> None:
    before = await world.snapshot()
    response = await send(world, build(world))
    body = world.api.assert_problem(response, status, code)
    assert "idempotent-replayed" not in response.headers
    if status == 401:
        assert response.headers["www-authenticate"].lower().startswith("bearer")
    assert await world.snapshot() == before
    # The same bad request again: the same answer (refusals are stable), still nothing changed.
    again = await send(world, build(world))
    assert again.status_code == status
    assert again.json()["code"] == body["code"]
    assert await world.snapshot() == before


@pytest.mark.parametrize(("status", "code", "build"), [pytest.param(*case[1:], id=case[0]) for case in BATCH_OP_CASES])
async def test_bad_batch_operation_is_refused_alone(
    world: World, status: int, code: str, build: Callable[[World], Any]
) -> None:
    before = await world.snapshot()
    response = await send(world, Req("POST", "/v1/batch", json={"operations": [build(world)]}))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    (result,) = response.json()["results"]
    assert result["status"] == status
    world.api.assert_problem_body(result["body"], status, code)
    assert await world.snapshot() == before
    # Next to a good operation, the good one goes through and the bad one is still refused.
    good = {"op": "credit", "account_id": world.S, "id": "good-1", "amount": 7}
    response = await send(world, Req("POST", "/v1/batch", json={"operations": [build(world), good]}))
    first, second = response.json()["results"]
    assert (first["status"], first["body"]["code"]) == (status, code)
    assert second["status"] == 201 and second["body"]["account"]["balance"] == 7


async def test_batch_operation_with_invalid_utf8_is_refused_alone(world: World) -> None:
    """msgspec.Raw keeps an operation's bytes undecoded: invalid UTF-8 shows up only per operation."""
    before = await world.snapshot()
    good = json.dumps({"op": "credit", "account_id": world.S, "id": "good-1", "amount": 7}).encode()
    bad = b'{"op": "credit", "account_id": "' + world.S.encode() + b'", "id": "\xff", "amount": 7}'
    response = await send(world, Req("POST", "/v1/batch", content=b'{"operations": [' + bad + b"," + good + b"]}"))
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    world.api.assert_problem_body(first["body"], 422, "validation_error")
    assert second["status"] == 201
    after = await world.snapshot()
    assert after[world.S]["account"]["balance"] == 7
    assert [t["operation_id"] for t in after[world.S]["history"]] == ["good-1"]
    for changed in (world.S, "children"):  # S got its credit, and shows it in P's children
        after.pop(changed), before.pop(changed)
    assert after == before
