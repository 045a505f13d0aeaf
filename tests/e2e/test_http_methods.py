"""A method a path does not serve is 405 with an ``Allow`` header naming what it serves (RFC 9110
15.5.6), on every route and on the operational paths, before the key is looked at; HEAD is
served wherever GET is. (TRACE answered 200 on /healthz, /readyz, /metrics and 405 without
``Allow`` on the API routes.)"""

from __future__ import annotations

from typing import Any

import pytest

from balance.api.app import route_table

FIXED = ("/healthz", "/readyz", "/metrics", "/openapi.json")


def route_methods() -> dict[str, set[str]]:
    """Every API route of the app's own table, with the methods it serves."""
    served: dict[str, set[str]] = {}
    for method, pattern, _ in route_table():
        served.setdefault(pattern, set()).add(method)
    return served


def concrete(pattern: str) -> str:
    return (
        pattern.replace("{id}", "US-0-0000")
        .replace("{hold_id}", "h1")
        .replace("{key_id}", "k1")
        .replace("{txn_id}", "US-0-t1")
    )


def allow_of(response: Any) -> set[str]:
    return {method.strip() for method in response.headers["allow"].split(",")}


@pytest.mark.parametrize("method", ["TRACE", "OPTIONS", "PUT", "DELETE", "PATCH", "POST"])
async def test_a_method_a_route_does_not_serve_is_405_with_allow(api: Any, method: str) -> None:
    for pattern, methods in route_methods().items():
        if method in methods:
            continue
        response = await api.request(method, concrete(pattern), key=None)
        api.assert_problem(response, 405, "method_not_allowed")
        assert allow_of(response) == methods | ({"HEAD"} if "GET" in methods else set()), pattern


@pytest.mark.parametrize("method", ["TRACE", "OPTIONS", "POST", "DELETE"])
async def test_the_operational_paths_serve_get_and_head_only(api: Any, method: str) -> None:
    for path in FIXED:
        response = await api.request(method, path)
        api.assert_problem(response, 405, "method_not_allowed")
        assert allow_of(response) == {"GET", "HEAD"}, path


async def test_head_is_served_where_get_is(api: Any) -> None:
    account = await api.create_account()
    for path in (*FIXED, f"/v1/accounts/{account['id']}", f"/v1/accounts/{account['id']}/transactions"):
        got, head = await api.get(path), await api.request("HEAD", path)
        assert head.status_code == got.status_code == 200, path
        assert head.headers["content-type"] == got.headers["content-type"], path


async def test_an_unknown_path_is_still_404(api: Any) -> None:
    api.assert_problem(await api.request("TRACE", "/v1/nowhere"), 404, "not_found")
    api.assert_problem(await api.get("/v1/accounts/US-0-0000/nowhere"), 404, "not_found")
