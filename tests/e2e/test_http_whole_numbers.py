"""JSON Schema's ``integer`` is any number with a zero fraction, so an amount written ``2500.0``
or ``2.5e3`` is that integer (read exactly, never through a float: ``4.6e18`` is
4,600,000,000,000,000,000, which no double holds), as the OpenAPI document says. The same
operation written either way is one operation (its replay). A fraction is still refused."""

from __future__ import annotations

from typing import Any


async def credit_raw(api: Any, account_id: str, body: bytes) -> Any:
    return await api.post(f"/v1/accounts/{account_id}/credits", content=body,
                          headers={"Content-Type": "application/json"})  # fmt: skip


async def test_a_whole_number_with_a_fraction_or_an_exponent_is_that_integer(api: Any) -> None:
    account = (await api.create_account())["id"]
    first = await credit_raw(api, account, b'{"id": "w1", "amount": 2500.0}')
    assert first.status_code == 201, first.text
    assert first.json()["transaction"]["amount"] == 2500
    again = await credit_raw(api, account, b'{"id": "w1", "amount": 2.5e3}')
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    huge = await credit_raw(api, account, b'{"id": "w2", "amount": 4.6e18}')
    assert huge.status_code == 201, huge.text
    assert huge.json()["account"]["balance"] == 2500 + 4_600_000_000_000_000_000
    api.assert_problem(await credit_raw(api, account, b'{"id": "w3", "amount": 2500.5}'), 422, "validation_error")
    assert (await api.account(account))["balance"] == 2500 + 4_600_000_000_000_000_000


async def test_whole_numbers_in_a_batch_and_in_a_hold(api: Any) -> None:
    account = (await api.create_account())["id"]
    await api.credit(account, 100)
    body = (
        b'{"operations": [{"op": "hold", "account_id": "%b", "id": "h1", "amount": 40.0, "expires_in_s": 6e2},'
        b' {"op": "capture", "account_id": "%b", "hold_id": "h1", "amount": 1e1}]}'
    ) % (account.encode(), account.encode())
    response = await api.post("/v1/batch", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [result["status"] for result in results] == [201, 200], results
    assert results[1]["body"]["hold"]["captured_amount"] == 10
    assert (await api.account(account))["balance"] == 90
