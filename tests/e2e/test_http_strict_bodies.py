"""Bodies that mean two things are refused with 422 and change nothing (issue 14 item 8):
a key twice in one object (also escaped, nested, inside batch operations), nesting thousands
of levels deep, ids "." and "..", and whitespace where a body is optional; a batch refuses such an operation alone and says which
of its results were replays."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import Api

DEEP = 5_000  # beyond the decoder's recursion limit (a 500 before the fix)
SHALLOW_TOO_DEEP = 100  # within it, beyond the body depth limit


def nested(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


async def setup(api: Api) -> tuple[str, str]:
    p = (await api.create_account(name="P"))["id"]
    c = (await api.create_account(p, kind="user", name="C"))["id"]
    await api.credit(p, 1_000, id="seed")
    await api.hold(p, 100, id="h1")
    return p, c


async def post_raw(api: Api, url: str, body: bytes, method: str = "POST") -> Any:
    return await api.request(method, url, content=body, headers={"content-type": "application/json"})


def raw_cases(p: str, c: str) -> list[tuple[str, str, str, bytes]]:
    deep_meta = b'{"id":"d-deep","amount":1,"metadata":' + nested(DEEP) + b"}"
    return [
        ("credit-amount-twice", "POST", f"/v1/accounts/{p}/credits", b'{"id":"x1","amount":1,"amount":999999}'),
        ("debit-amount-twice", "POST", f"/v1/accounts/{p}/debits", b'{"amount":999999,"id":"x1","amount":1}'),
        ("credit-escaped-key-twice", "POST", f"/v1/accounts/{p}/credits", b'{"id":"x1","amount":1,"\\u0061mount":9}'),
        ("credit-id-twice", "POST", f"/v1/accounts/{p}/credits", b'{"id":"x1","id":"x2","amount":1}'),
        ("credit-metadata-key-twice", "POST", f"/v1/accounts/{p}/credits",
         b'{"id":"x1","amount":1,"metadata":{"k":{"a":1,"a":2}}}'),
        ("transfer-to-twice", "POST", "/v1/transfers",
         b'{"id":"t1","from_account_id":"%b","to_account_id":"%b","to_account_id":"%b","amount":1,"currency":"USD"}'
         % (p.encode(), c.encode(), p.encode())),
        ("hold-amount-twice", "POST", f"/v1/accounts/{p}/holds", b'{"id":"h2","amount":1,"amount":500}'),
        ("capture-amount-twice", "POST", f"/v1/accounts/{p}/holds/h1/capture", b'{"amount":1,"amount":100}'),
        ("patch-status-twice", "PATCH", f"/v1/accounts/{c}", b'{"status":"frozen","status":"active"}'),
        ("create-kind-twice", "POST", "/v1/accounts", b'{"kind":"user","parent_id":"%b","kind":"user"}' % p.encode()),
        ("credit-metadata-deep", "POST", f"/v1/accounts/{p}/credits", deep_meta),
        ("credit-metadata-too-deep", "POST", f"/v1/accounts/{p}/credits",
         b'{"id":"d-deep","amount":1,"metadata":' + nested(SHALLOW_TOO_DEEP) + b"}"),
        ("credit-id-dot", "POST", f"/v1/accounts/{p}/credits", b'{"id":".","amount":1}'),
        ("credit-id-dotdot", "POST", f"/v1/accounts/{p}/credits", b'{"id":"..","amount":1}'),
        ("hold-id-dotdot", "POST", f"/v1/accounts/{p}/holds", b'{"id":"..","amount":1}'),
        ("hold-destination-dot", "POST", f"/v1/accounts/{p}/holds",
         b'{"id":"h3","amount":1,"destination_account_id":"."}'),
        ("transfer-to-dotdot", "POST", "/v1/transfers",
         b'{"id":"t1","from_account_id":"%b","to_account_id":"..","amount":1,"currency":"USD"}' % p.encode()),
        ("create-parent-dot", "POST", "/v1/accounts", b'{"kind":"user","parent_id":"."}'),
        ("capture-hold-id-dot-in-path", "POST", f"/v1/accounts/{p}/holds/%2E/capture", b"{}"),
        ("get-hold-dotdot-in-path", "GET", f"/v1/accounts/{p}/holds/%2E%2E", b""),
        # Neither no body nor JSON: whitespace only, where a body is optional (a release took it as {}).
        ("release-body-a-lone-cr", "POST", f"/v1/accounts/{p}/holds/h1/release", b"\r"),
        ("capture-body-whitespace", "POST", f"/v1/accounts/{p}/holds/h1/capture", b" \n"),
        ("patch-body-whitespace", "PATCH", f"/v1/accounts/{c}", b"\t"),
        ("batch-operations-twice", "POST", "/v1/batch",
         b'{"operations":[{"op":"credit","account_id":"%b","id":"b1","amount":1}],"operations":[]}' % p.encode()),
    ]  # fmt: skip


CASE_NAMES = [case[0] for case in raw_cases("P", "C")]


@pytest.mark.parametrize("name", CASE_NAMES)
async def test_a_body_that_means_two_things_is_refused_and_changes_nothing(api: Api, name: str) -> None:
    p, c = await setup(api)
    (case,) = [case for case in raw_cases(p, c) if case[0] == name]
    _, method, url, body = case
    before = await api.snapshot(p, c)
    hold_before = await api.get_hold(p, "h1")
    for _ in range(2):  # and again: the same answer, still nothing changed
        response = await post_raw(api, url, body, method)
        api.assert_problem(response, 422, "validation_error")
        assert await api.snapshot(p, c) == before
        assert await api.get_hold(p, "h1") == hold_before


def batch_body(*ops: bytes) -> bytes:
    return b'{"operations":[' + b",".join(ops) + b"]}"


@pytest.mark.parametrize("levels", [DEEP, SHALLOW_TOO_DEEP])
async def test_a_bad_batch_operation_fails_alone(api: Api, levels: int) -> None:
    p, c = await setup(api)
    good = json.dumps({"op": "credit", "account_id": c, "id": "good", "amount": 7}).encode()
    dup = b'{"op":"credit","account_id":"%b","id":"dup","amount":1,"amount":999999}' % c.encode()
    deep = b'{"op":"credit","account_id":"%b","id":"deep","amount":1,"metadata":%b}' % (c.encode(), nested(levels))
    dot = b'{"op":"debit","account_id":"%b","id":"..","amount":1}' % p.encode()
    response = await post_raw(api, "/v1/batch", batch_body(dup, good, deep, dot))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [422, 201, 422, 422]
    for r in (results[0], results[2], results[3]):
        api.assert_problem_body(r["body"], 422, "validation_error")
    assert "twice" in results[0]["body"]["detail"] and "deeper" in results[2]["body"]["detail"]
    assert (await api.account(c))["balance"] == 7
    assert [t["operation_id"] for t in await api.history(c)] == ["good"]
    assert (await api.account(p))["balance"] == 1_000


async def test_batch_results_say_which_operations_were_replays(api: Api) -> None:
    p, c = await setup(api)
    first = [{"op": "credit", "account_id": c, "id": "r1", "amount": 5}]
    response = await api.post("/v1/batch", {"operations": first})
    assert [(r["status"], r["replayed"]) for r in response.json()["results"]] == [(201, False)]
    again = [*first, {"op": "credit", "account_id": c, "id": "r2", "amount": 1}, {"op": "credit", "id": "x"}]
    response = await api.post("/v1/batch", {"operations": again})
    results = response.json()["results"]
    assert [(r["status"], r["replayed"]) for r in results] == [(201, True), (201, False), (422, False)]
    assert results[0]["body"] == (await api.post("/v1/batch", {"operations": first})).json()["results"][0]["body"]
    assert (await api.account(c))["balance"] == 6


async def test_nested_metadata_that_reuses_a_name_is_accepted(api: Api) -> None:
    """Not a duplicate: the same key in two different objects (the fast check's slow path)."""
    p, _ = await setup(api)
    response = await post_raw(
        api, f"/v1/accounts/{p}/credits", b'{"id":"n1","amount":2,"metadata":{"amount":{"amount":1},"id":"n1"}}'
    )
    assert response.status_code == 201, response.text
    assert json.loads(response.text)["transaction"]["metadata"] == {"amount": {"amount": 1}, "id": "n1"}
