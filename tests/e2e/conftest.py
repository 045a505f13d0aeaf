"""HTTP harness: a real service on SQLite files under ``tmp_path``, in this process.

``api`` (one shard) and ``api2`` (two shards) build the service with ``bootstrap.build_service``,
start it (recovery included), and talk to ``BalanceApp(service, metrics, start_service=False)`` twice:
through ``httpx.ASGITransport`` (no sockets) and through the built-in HTTP/1.1 server on a real
socket. A fatal invariant breach fails the test instead of ending the process. At teardown every
started deployment proves its books (``prove_books``): each shard's invariants, each currency's
zero sum over all shards, and a fresh recovery from the files that finds the same accounts.
``make_api`` builds more of them (e.g. a second process on the same files, or one never started).

Test modules import nothing from here (``tests/e2e`` is no package): the helpers ride on the
``Api`` object (``api.op_id()``, ``api.assert_problem(...)``) and the ``e2e`` fixture.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncmy
import httpx
import pytest
from fleet_nodes import Fleet, two_nodes_fleet

from balance import bootstrap
from balance.api.app import BalanceApp
from balance.api.http1 import HttpServer
from balance.config import Settings
from balance.metrics import Metrics
from balance.service import BalanceService
from balance.storage.mariadb_url import connect_kwargs, parse_server, with_database

ADMIN_KEY = "test-admin"
PROBLEM_TYPE = "application/problem+json"

_ids = itertools.count(1)


def op_id(prefix: str = "op") -> str:
    """A fresh, valid operation id."""
    return f"{prefix}-{next(_ids)}-{uuid.uuid4().hex[:8]}"


def bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 problem with the contract's members and the expected status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_TYPE
    body = response.json()
    assert_problem_body(body, status, code)
    return body


def assert_problem_body(body: dict[str, Any], status: int, code: str) -> None:
    for member in ("type", "title", "status", "detail", "code"):
        assert member in body, f"problem without {member}: {body}"
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["status"] == status, body
    assert body["code"] == code, body


class Api:
    """An httpx client on one in-process deployment, plus helpers that assert success."""

    def __init__(self, client: httpx.AsyncClient, service: BalanceService, app: BalanceApp) -> None:
        self.client = client
        self.service = service
        self.app = app
        self.admin = ADMIN_KEY

    op_id = staticmethod(op_id)
    assert_problem = staticmethod(assert_problem)
    assert_problem_body = staticmethod(assert_problem_body)
    problem_type = PROBLEM_TYPE

    # ---- raw requests (the admin key unless told otherwise; key=None sends none) ----------

    async def request(self, method: str, url: str, *, key: str | None = ADMIN_KEY, **kwargs: Any) -> httpx.Response:
        headers = {**bearer(key), **kwargs.pop("headers", {})}
        return await self.client.request(method, url, headers=headers, **kwargs)

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        if json is not None:
            kwargs["json"] = json
        return await self.request("POST", url, **kwargs)

    async def patch(self, url: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        if json is not None:
            kwargs["json"] = json
        return await self.request("PATCH", url, **kwargs)

    # ---- helpers that expect success -------------------------------------------------------

    async def create_account(
        self, parent_id: str | None = None, *, key: str = ADMIN_KEY, kind: str = "partner", **fields: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": kind, **fields}
        if parent_id is None:
            body.setdefault("region", "US")
            body.setdefault("currency", "USD")
        else:
            body["parent_id"] = parent_id
        response = await self.post("/v1/accounts", body, key=key)
        assert response.status_code == 201, response.text
        return response.json()

    async def account(self, account_id: str, *, key: str = ADMIN_KEY) -> dict[str, Any]:
        response = await self.get(f"/v1/accounts/{account_id}", key=key)
        assert response.status_code == 200, response.text
        return response.json()

    async def create_key(self, account_id: str, *, key: str = ADMIN_KEY, scopes: list[str] | None = None) -> str:
        """A new key (scopes: the default, read and move, unless given)."""
        response = await self.post(f"/v1/accounts/{account_id}/keys", None if scopes is None else {"scopes": scopes},
                                   key=key)  # fmt: skip
        assert response.status_code == 201, response.text
        assert response.json()["account_id"] == account_id
        return response.json()["key"]

    async def patch_account(self, account_id: str, *, key: str = ADMIN_KEY, **fields: Any) -> dict[str, Any]:
        response = await self.patch(f"/v1/accounts/{account_id}", fields, key=key)
        assert response.status_code == 200, response.text
        return response.json()

    async def credit(self, account_id: str, amount: int, *, key: str = ADMIN_KEY, id: str | None = None,
                     **fields: Any) -> dict[str, Any]:  # fmt: skip
        body = {"id": id or op_id("credit"), "amount": amount, **fields}
        response = await self.post(f"/v1/accounts/{account_id}/credits", body, key=key)
        assert response.status_code == 201, response.text
        return response.json()

    async def debit(self, account_id: str, amount: int, *, key: str = ADMIN_KEY, id: str | None = None,
                    **fields: Any) -> dict[str, Any]:  # fmt: skip
        body = {"id": id or op_id("debit"), "amount": amount, **fields}
        response = await self.post(f"/v1/accounts/{account_id}/debits", body, key=key)
        assert response.status_code == 201, response.text
        return response.json()

    async def transfer(self, from_id: str, to_id: str, amount: int, *, key: str = ADMIN_KEY, currency: str = "USD",
                       id: str | None = None) -> dict[str, Any]:  # fmt: skip
        body = {"id": id or op_id("transfer"), "from_account_id": from_id, "to_account_id": to_id,
                "amount": amount, "currency": currency}  # fmt: skip
        response = await self.post("/v1/transfers", body, key=key)
        assert response.status_code == 201, response.text
        return response.json()

    async def hold(self, account_id: str, amount: int, *, key: str = ADMIN_KEY, id: str | None = None,
                   **fields: Any) -> dict[str, Any]:  # fmt: skip
        body = {"id": id or op_id("hold"), "amount": amount, **fields}
        response = await self.post(f"/v1/accounts/{account_id}/holds", body, key=key)
        assert response.status_code == 201, response.text
        return response.json()

    async def capture(self, account_id: str, hold_id: str, amount: int | None = None, *,
                      key: str = ADMIN_KEY) -> dict[str, Any]:  # fmt: skip
        body = {} if amount is None else {"amount": amount}
        response = await self.post(f"/v1/accounts/{account_id}/holds/{hold_id}/capture", body, key=key)
        assert response.status_code == 200, response.text
        return response.json()

    async def release(self, account_id: str, hold_id: str, *, key: str = ADMIN_KEY) -> dict[str, Any]:
        response = await self.post(f"/v1/accounts/{account_id}/holds/{hold_id}/release", key=key)
        assert response.status_code == 200, response.text
        return response.json()

    async def get_hold(self, account_id: str, hold_id: str, *, key: str = ADMIN_KEY) -> dict[str, Any]:
        response = await self.get(f"/v1/accounts/{account_id}/holds/{hold_id}", key=key)
        assert response.status_code == 200, response.text
        return response.json()

    async def history(self, account_id: str, *, key: str = ADMIN_KEY, limit: int = 1000,
                      **query: str) -> list[dict[str, Any]]:  # fmt: skip
        """The whole history, newest first, following ``next_cursor`` to the end."""
        rows: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"limit": str(limit), **query, **({"cursor": cursor} if cursor else {})}
            response = await self.get(f"/v1/accounts/{account_id}/transactions", params=params, key=key)
            assert response.status_code == 200, response.text
            page = response.json()
            rows += page["data"]
            cursor = page["next_cursor"]
            if cursor is None:
                return rows

    async def snapshot(self, *account_ids: str) -> dict[str, Any]:
        """Each account as GET shows it, and its full history: what must not change."""
        return {a: {"account": await self.account(a), "history": await self.history(a)} for a in account_ids}


def books(service: BalanceService) -> dict[str, tuple[str, int, int]]:
    """Every account of every shard as (currency, balance, reserved), after checking the books:
    each shard's invariants (its balances sum to zero per currency, ``reserved`` equals the sum
    of its pending holds) and each currency's zero sum over all the shards together."""
    accounts: dict[str, tuple[str, int, int]] = {}
    totals: dict[str, int] = {}
    for engine in service.engines:
        assert not engine.ledger.batches_in_flight, f"shard {engine.shard}: a batch is still in flight"
        engine.ledger.check_invariants()
        for account in engine.ledger.accounts.values():
            accounts[account.id] = (account.currency, account.balance, account.reserved)
            totals[account.currency] = totals.get(account.currency, 0) + account.balance
    assert all(total == 0 for total in totals.values()), f"balances do not sum to zero: {totals}"
    return accounts


async def prove_books(service: BalanceService, settings: Settings) -> None:
    """At the end of every test on a started deployment: the books balance in memory, and a
    fresh recovery from the files (which checks its own invariants) finds the same accounts."""
    if not all(engine.ready for engine in service.engines):
        return  # never started, or a test stopped a shard on purpose: nothing served to prove
    in_memory = books(service)
    await service.stop()
    again = bootstrap.build_service(settings, on_fatal=Fatal())
    await again.start()
    try:
        assert books(again) == in_memory, "recovery from storage disagrees with what was served"
    finally:
        await again.stop()


class Fatal:
    """on_fatal for tests: record the breach and fail loudly instead of ending the process."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def __call__(self, exc: BaseException) -> None:
        self.errors.append(exc)
        pytest.fail(f"fatal invariant breach in the service: {exc!r}")


MakeApi = Callable[..., AbstractAsyncContextManager[Api]]


@pytest.fixture
def make_api(tmp_path: Path) -> MakeApi:
    """``async with make_api(shards=1, start=True, data_dir=tmp_path) as api:`` — a deployment."""

    @asynccontextmanager
    async def make(
        *, shards: int = 1, start: bool = True, data_dir: Path | None = None, transport: str = "asgi"
    ) -> AsyncIterator[Api]:
        settings = Settings.from_env(
            {
                "BALANCE_DATA_DIR": str(data_dir or tmp_path),
                "BALANCE_ADMIN_KEY": ADMIN_KEY,
                "BALANCE_SHARDS": str(shards),
            }  # fmt: skip
        )
        fatal = Fatal()
        metrics = Metrics()
        service = bootstrap.build_service(settings, on_fatal=fatal, metrics=metrics)
        proved = False
        try:
            if start:
                await service.start()
            app = BalanceApp(service, metrics, start_service=False, events=bootstrap.events_feed(service))
            try:
                if transport == "asgi":
                    transport_ = httpx.ASGITransport(app=app)
                    async with httpx.AsyncClient(transport=transport_, base_url="http://test") as client:
                        yield Api(client, service, app)
                else:  # the built-in HTTP/1.1 server on a real socket
                    server = HttpServer(app.serve, admission=app.admission())
                    port = await server.listen("127.0.0.1", 0)
                    try:
                        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                            yield Api(client, service, app)
                    finally:
                        await server.stop()
            finally:
                await app.close()  # the event feed's readers, if a test used it
            if not fatal.errors:
                await prove_books(service, settings)  # only when the test passed: its failure comes first
            proved = True
        finally:
            if not proved:
                await service.stop()
        if fatal.errors:
            pytest.fail(f"the service hit a fatal error: {fatal.errors[0]!r}")

    return make


@pytest.fixture(params=["asgi", "http"])
async def api(make_api: MakeApi, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    """A started one-shard deployment, reached in process (ASGI) and through the built-in
    HTTP/1.1 server on a real socket: every API test runs both ways."""
    async with make_api(shards=1, transport=request.param) as api:
        yield api


@pytest.fixture(params=["asgi", "http"])
async def api2(make_api: MakeApi, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    """A started two-shard deployment, both ways."""
    async with make_api(shards=2, transport=request.param) as api:
        yield api


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """Two real nodes (``fleet_nodes``): shard 0 on node a, shard 1 on node b, SQLite files."""
    monkeypatch.setenv("BALANCE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("BALANCE_DIRECTORY_URL", raising=False)
    fleet = two_nodes_fleet(tmp_path)
    yield fleet
    fleet.stop()


@pytest.fixture
async def fleet_db(mariadb_required: Callable[[], Any]) -> AsyncIterator[str]:
    """A MariaDB URL naming a fresh fleet: its six shard databases (``_s0``..``_s5``) and its
    directory (``_directory``) are dropped afterwards."""
    url = await mariadb_required()
    name = f"{parse_server(url).database or 'balance_test'}_fl_{uuid.uuid4().hex[:6]}"
    yield with_database(url, name)
    conn = await asyncmy.connect(**connect_kwargs(url))
    async with conn.cursor() as cur:
        for suffix in [*(f"_s{i}" for i in range(6)), "_directory"]:
            await cur.execute(f"DROP DATABASE IF EXISTS `{name}{suffix}`")
    await conn.ensure_closed()
