"""A two-shard service for the cross-shard tests (``Build``; the ``build`` fixture in
conftest.py runs it on SQLite files and on MariaDB), and what those tests ask of it: accounts
placed on a given shard, their committed state, the books checked over both shards, and a
shard's next commit made to fail (at the storage port)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from faults import FaultyStorage

from balance.domain import commands as c
from balance.engine.shard import ShardEngine
from balance.service import BalanceService
from balance.storage.base import ShardStorage


class Clock:
    """Time under the test's control (holds expire when it says)."""

    def __init__(self) -> None:
        self.now = 1_790_000_000_000_000

    def __call__(self) -> int:
        return self.now


class Build:
    """Builds a two-shard service over the same data (build again = restart), each shard's
    storage (``make(shard)``) in a ``FaultyStorage``; ``clock`` is their time."""

    def __init__(self, make: Callable[[int], ShardStorage]) -> None:
        self.make = make
        self.clock = Clock()
        self.services: list[BalanceService] = []

    def __call__(self) -> BalanceService:
        engines = [
            ShardEngine(shard, FaultyStorage(self.make(shard)), clock=self.clock, sweep_interval_s=0.02,
                        on_fatal=_raise)
            for shard in range(2)
        ]  # fmt: skip
        service = BalanceService(engines, "admin")
        self.services.append(service)
        return service


def _raise(exc: BaseException) -> None:
    raise exc


async def account(service: BalanceService, shard: int, currency: str = "EUR") -> str:
    """A top-level account placed on ``shard`` (the least-filled shard takes the next one)."""
    for _ in range(8):
        reply = await service.create_account(c.CreateAccount("", None, "partner", "EU", currency, "p", 0, b"{}"))
        assert reply.status == 201
        account_id = json.loads(reply.body)["id"]
        if service.engine_for(account_id).shard == shard:  # type: ignore[union-attr]
            return account_id
    raise AssertionError("no account placed on the shard")


async def two(service: BalanceService, seed: int = 1_000) -> tuple[str, str]:
    """An account on shard 0 credited ``seed``, and an empty one on shard 1."""
    a, b = await account(service, 0), await account(service, 1)
    assert (await service.execute(c.Credit(a, "seed", seed))).status == 201
    return a, b


def state(service: BalanceService, account_id: str) -> tuple[int, int, str]:
    """(balance, reserved, status) as committed."""
    found = service.account_state(account_id)
    assert found is not None
    return int(found[7]), int(found[8]), found[6]


def totals(service: BalanceService) -> dict[str, int]:
    """Sum of balances per currency over every shard, system and transit accounts included."""
    sums: dict[str, int] = {}
    for engine in service.engines:
        engine.ledger.check_invariants()
        for acc in engine.ledger.accounts.values():
            sums[acc.currency] = sums.get(acc.currency, 0) + acc.balance
    return sums


def check_books(service: BalanceService) -> None:
    """Each shard's invariants hold, each currency sums to zero over both shards, and no
    closed account holds money."""
    assert set(totals(service).values()) <= {0}
    for engine in service.engines:
        for acc in engine.ledger.accounts.values():
            if acc.status == "closed":
                assert (acc.balance, acc.reserved) == (0, 0), acc.id


async def no_pending(service: BalanceService) -> None:
    """No cross-shard movement is waiting for its second leg on any shard."""
    for engine in service.engines:
        assert await engine.storage.pending_transfers() == []


async def history_kinds(service: BalanceService, account_id: str) -> list[tuple[str, str, int]]:
    """(kind, operation id, amount) of the account's history, oldest first."""
    rows = await service.engine_for(account_id).storage.history(account_id, 50, None, None, None)  # type: ignore[union-attr]
    return [(row[3], row[4], row[8]) for row in reversed(rows)]


def next_commit_fails(service: BalanceService, account_id: str) -> FaultyStorage:
    """The next commit of ``account_id``'s shard fails (nothing of it is written)."""
    storage = service.engine_for(account_id).storage  # type: ignore[union-attr]
    assert isinstance(storage, FaultyStorage)
    storage.fail("commit")
    return storage


async def ready_again(service: BalanceService) -> None:
    """Wait (a second at most) for a shard that failed a commit to resynchronise."""
    for _ in range(100):
        if service.ready:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the service is not ready again")


class Crash(Exception):
    """Raised by a test's crash point: the process dies here (the test then restarts)."""


async def restart(build: Build, service: BalanceService) -> BalanceService:
    """A crash-like stop (no last checkpoint), then the service built again over the same data."""
    for engine in service.engines:
        await engine.stop(checkpoint=False)
    again = build()
    await again.start()
    return again
