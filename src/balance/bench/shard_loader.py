"""A shard with millions of pending holds, written fast: what the engine's checkpoint would
leave in the tables, without going through the engine (issue 18: 10 million holds on one
shard with 1 million accounts, to measure memory per hold and start to ready).

The rows are not made up: the real ledger applies one account's creation, funding and one
hold, and every row written is that account's, that hold's or a system account's row with
the id, amounts, version and times changed as the same operations on each account would
change them. The tables are then a checkpoint of the journal up to its end (the journal has no
rows: recovery reads none before the checkpoint, and a hold whose journal rows are missing is
read from the holds table, as for an earlier version's database). ``check`` rebuilds the
ledger through the real recovery code and checks its invariants (sums zero per currency,
``reserved`` equal to the pending holds), as every start does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from balance.domain import commands as c
from balance.domain.ids import system_account_id
from balance.domain.ledger import Ledger
from balance.domain.model import (
    ACCOUNT_BALANCE,
    ACCOUNT_FIELDS,
    HOLD_FIELDS,
    KIND_FUNDING,
    KIND_SETTLEMENT,
)
from balance.storage.base import BatchWrite, ShardStorage
from balance.storage.mariadb import MariaDbShardStorage
from balance.storage.mariadb_driver import column_list

FUNDS = 10**12  # each account's credit
HOLD_AMOUNT = 1
EXPIRES_IN_S = 900  # the default: 15 minutes
CHUNK_ROWS = 20_000  # rows per commit
SERVER_CHUNK_ROWS = 500_000  # rows per statement of the MariaDB loader (its own transaction)

_A = {name: k for k, name in enumerate(ACCOUNT_FIELDS)}
_H = {name: k for k, name in enumerate(HOLD_FIELDS)}


def account_id(k: int) -> str:
    return f"US-0-{k:016x}"


class Templates:
    """The rows the ledger writes for one account (created, funded, one hold) and the system
    accounts, from which every other row is made by changing what differs."""

    def __init__(self, now_us: int) -> None:
        self.now = now_us
        ledger = Ledger(0)
        ledger.begin()
        first = account_id(0)
        for command in (
            c.CreateAccount(first, None, "partner", "US", "USD", "", 0, b"{}"),
            c.Credit(first, "fund", FUNDS),
            c.PlaceHold(first, "order-0", HOLD_AMOUNT, EXPIRES_IN_S),
        ):
            outcome = ledger.apply(command, now_us)
            assert outcome.rejection is None, outcome.rejection
        ledger.collect()
        ledger.accept()
        self.account = ledger.accounts[first].state()
        self.hold = next(iter(ledger.holds.values())).state()
        self.funding = ledger.accounts[system_account_id(0, "USD", KIND_FUNDING)].state()
        self.settlement = ledger.accounts[system_account_id(0, "USD", KIND_SETTLEMENT)].state()
        # What one funding and one hold added to the versions (the template has both once).
        self.version_base = self.account[_A["version"]] - 1  # created and funded, no hold
        self.funding_version_base = self.funding[_A["version"]] - 1

    def account_row(self, k: int, holds: int) -> tuple[Any, ...]:
        row = list(self.account)
        row[_A["id"]] = account_id(k)
        row[_A["reserved"]] = holds * HOLD_AMOUNT
        row[_A["version"]] = self.version_base + holds
        return tuple(row)

    def hold_row(self, account: int, n: int) -> tuple[Any, ...]:
        row = list(self.hold)
        row[_H["account_id"]] = account_id(account)
        row[_H["id"]] = f"order-{n:010d}"
        return tuple(row)

    def system_rows(self, accounts: int) -> list[tuple[Any, ...]]:
        funding = list(self.funding)
        funding[ACCOUNT_BALANCE] = -FUNDS * accounts
        funding[_A["version"]] = self.funding_version_base + accounts
        return [tuple(funding), self.settlement]


def _spread(holds: int, accounts: int) -> Iterator[int]:
    """Holds per account: as even as they divide."""
    per, extra = divmod(holds, accounts)
    for k in range(accounts):
        yield per + (1 if k < extra else 0)


async def load(
    storage: ShardStorage, accounts: int, holds: int, *, progress: Callable[[int], None] | None = None
) -> float:
    """Write ``accounts`` funded accounts and ``holds`` pending holds spread over them (opened
    and closed here); the seconds it took. Called again on the same shard with more holds, the
    account rows are rewritten (their ``reserved``) and the holds added."""
    started = time.perf_counter()
    templates = Templates(int(time.time() * 1_000_000))
    await storage.open()
    try:
        await storage.commit(BatchWrite(accounts=templates.system_rows(accounts)))
        if isinstance(storage, MariaDbShardStorage):
            await _load_mariadb(storage, templates, accounts, holds, progress)
            return time.perf_counter() - started
        written = 0
        per_account = list(_spread(holds, accounts))
        for k in range(0, accounts, CHUNK_ROWS):
            rows = [templates.account_row(i, per_account[i]) for i in range(k, min(accounts, k + CHUNK_ROWS))]
            await storage.commit(BatchWrite(accounts=rows))
            written += len(rows)
            if progress:
                progress(written)
        n = 0
        batch: list[tuple[Any, ...]] = []
        for account, count in enumerate(per_account):
            for _ in range(count):
                batch.append(templates.hold_row(account, n))
                n += 1
            if len(batch) >= CHUNK_ROWS:
                await storage.commit(BatchWrite(holds=batch))
                written += len(batch)
                batch = []
                if progress:
                    progress(written)
        if batch:
            await storage.commit(BatchWrite(holds=batch))
    finally:
        await storage.close()
    return time.perf_counter() - started


async def _load_mariadb(
    storage: MariaDbShardStorage,
    templates: Templates,
    accounts: int,
    holds: int,
    progress: Callable[[int], None] | None,
) -> None:
    """The same rows as ``load`` writes, made by the server: ``INSERT ... SELECT`` from
    MariaDB's sequence engine (``seq_0_to_N``), a statement per half a million rows. Sent as
    the writer's XA branches of 20,000 rows, 10 million holds took over 13 minutes."""
    import asyncmy

    per, extra = divmod(holds, accounts)
    # Account k holds ``per + 1`` holds if k < extra, else ``per`` (``_spread``).
    count = f"IF(seq < {extra}, {per + 1}, {per})"
    account_of = (
        f"IF(seq < {extra * (per + 1)}, seq DIV {per + 1}, {extra} + (seq - {extra * (per + 1)}) DIV {max(per, 1)})"
    )

    def account_id_sql(k: str) -> str:
        return f"CONCAT('US-0-', LPAD(LOWER(HEX({k})), 16, '0'))"

    def select(row: tuple[Any, ...], fields: tuple[str, ...], made: dict[str, str]) -> tuple[str, list[Any]]:
        parts: list[str] = []
        params: list[Any] = []
        for name, value in zip(fields, row, strict=True):
            if name in made:
                parts.append(made[name])
            else:
                parts.append("%s")
                params.append(value)
        return ",".join(parts), params

    conn = await asyncmy.connect(**storage.connection_kwargs())
    try:
        async with conn.cursor() as cur:
            written = 0
            account_made = {
                "id": account_id_sql("seq"),
                "reserved": f"{count} * {HOLD_AMOUNT}",
                "version": f"{templates.version_base} + {count}",
            }
            columns, params = select(templates.account, ACCOUNT_FIELDS, account_made)
            for lo in range(0, accounts, SERVER_CHUNK_ROWS):
                hi = min(accounts, lo + SERVER_CHUNK_ROWS) - 1
                await cur.execute(
                    f"INSERT INTO accounts ({column_list(ACCOUNT_FIELDS)}) SELECT {columns} FROM seq_{lo}_to_{hi}"
                    " ON DUPLICATE KEY UPDATE reserved = VALUES(reserved), version = VALUES(version)",
                    params,
                )
                written += hi - lo + 1
                if progress:
                    progress(written)
            hold_made = {"account_id": account_id_sql(account_of), "id": "CONCAT('order-', LPAD(seq, 10, '0'))"}
            columns, params = select(templates.hold, HOLD_FIELDS, hold_made)
            for lo in range(0, holds, SERVER_CHUNK_ROWS):
                hi = min(holds, lo + SERVER_CHUNK_ROWS) - 1
                await cur.execute(
                    f"INSERT INTO holds ({column_list(HOLD_FIELDS)}) SELECT {columns} FROM seq_{lo}_to_{hi}", params
                )
                written += hi - lo + 1
                if progress:
                    progress(written)
    finally:
        conn.close()
