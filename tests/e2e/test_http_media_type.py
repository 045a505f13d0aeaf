"""A JSON body is accepted as ``application/json`` (any parameters) or with no Content-Type;
any other type is 415 ``unsupported_media_type`` and changes nothing, over ASGI and the
built-in server. Refusals answered before the engine are counted in ``balance_operations``."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest


async def _money(api: Any, account: str) -> tuple[int, int]:
    state = await api.account(account)
    return state["balance"], len(await api.history(account))


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"])
async def test_other_media_types_are_refused_and_change_nothing(api: Any, content_type: str) -> None:
    account = (await api.create_account())["id"]
    await api.credit(account, 100)
    before = await _money(api, account)
    raw = json.dumps({"id": api.op_id(), "amount": 5}).encode()
    response = await api.post(f"/v1/accounts/{account}/credits", content=raw, headers={"Content-Type": content_type})
    api.assert_problem(response, 415, "unsupported_media_type")
    assert await _money(api, account) == before
    total = await api.post(
        "/v1/batch", content=json.dumps({"operations": [{"op": "credit", "account_id": account, "id": "b", "amount": 1}]}),
        headers={"Content-Type": content_type},
    )  # fmt: skip
    api.assert_problem(total, 415, "unsupported_media_type")
    assert await _money(api, account) == before
    assert (await api.account(account))["balance"] == 100


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"]
)
async def test_json_or_no_media_type_is_accepted(api: Any, content_type: str | None) -> None:
    account = (await api.create_account())["id"]
    raw = json.dumps({"id": api.op_id(), "amount": 5}).encode()
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = await api.post(f"/v1/accounts/{account}/credits", content=raw, headers=headers)
    assert response.status_code == 201, response.text
    assert (await api.account(account))["balance"] == 5


async def test_malformed_bodies_are_counted_like_other_refusals(api: Any) -> None:
    account = (await api.create_account())["id"]
    for _ in range(3):
        response = await api.post(f"/v1/accounts/{account}/credits", content=b"{not json")
        api.assert_problem(response, 422, "validation_error")
    response = await api.post(f"/v1/accounts/{account}/credits", content=b"{}", headers={"Content-Type": "text/plain"})
    api.assert_problem(response, 415, "unsupported_media_type")
    text = (await api.get("/metrics", key=None)).text
    found = re.search(r'^balance_operations_total\{kind="credit",outcome="validation_error"\} (\S+)$', text, re.M)
    assert found is not None and float(found.group(1)) == 3, text
    assert re.search(r'^balance_operations_total\{kind="credit",outcome="unsupported_media_type"\} 1\.0$', text, re.M)
    assert (await api.account(account))["balance"] == 0
