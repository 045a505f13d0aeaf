"""The wait during a partner move's switch, and the rest of the shards' throughput meanwhile
(issue 19 item 6). In process, SQLite shard files in a temporary directory (or MariaDB with
--mariadb URL), two shards: a partner with N children, each with one pending hold, moved from
shard 0 to shard 1 while clients credit its children (the subtree: they wait during the switch)
and other clients credit the children of two other partners, one on each shard (the rest).

    .venv/bin/python tools/move_switch.py [N ...]          (default: 1000 10000)

Reported per N: the move's duration (freeze to switch), the longest and p99 latency of a
subtree request that overlapped it, and the other partners' operations per second and p99
before and during the move.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from balance import bootstrap
from balance.config import Settings
from balance.domain import commands as c
from balance.service import BalanceService

CLIENTS_SUBTREE = 8
CLIENTS_OTHERS = 8


async def partner(service: BalanceService, children: int, shard: int, holds: bool) -> tuple[str, list[str]]:
    for attempt in range(50):
        reply = await service.create_account(c.CreateAccount("", None, "partner", "EU", "EUR", f"p{attempt}", 0, b"{}"))
        root = json.loads(reply.body)["id"]
        if service.engine_for(root).shard == shard:  # type: ignore[union-attr]
            break
    kids: list[str] = []
    for start in range(0, children, 500):
        made = await asyncio.gather(*(
            service.create_account(c.CreateAccount("", root, "user", "EU", "EUR", f"k{i}", 0, b"{}"))
            for i in range(start, min(children, start + 500))
        ))  # fmt: skip
        kids += [json.loads(reply.body)["id"] for reply in made]
    for start in range(0, children, 2_000):
        chunk = kids[start : start + 2_000]
        await service.run_many([c.Credit(kid, f"seed-{kid}", 1_000_000) for kid in chunk])
        if holds:
            await service.run_many([c.PlaceHold(kid, f"h-{kid}", 10, 86_400) for kid in chunk])
    return root, kids


async def client(
    service: BalanceService, kids: list[str], tag: str, stop: asyncio.Event, log: list[tuple[float, float]]
) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        kid = kids[(i * 7919 + hash(tag)) % len(kids)]
        started = time.perf_counter()
        reply = await service.execute(c.Credit(kid, f"{tag}-{i}", 1))
        ended = time.perf_counter()
        assert reply.status == 201, reply.body
        log.append((started, ended))


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values, default=0.0)


async def measure(n: int, data: Path) -> dict[str, float]:
    settings = Settings.from_env(
        {"BALANCE_DATA_DIR": str(data), "BALANCE_ADMIN_KEY": "adm_tool", "BALANCE_SHARDS": "2"}
    )
    service = bootstrap.build_service(settings)
    await service.start()
    root, kids = await partner(service, n, 0, holds=True)
    _, others0 = await partner(service, 200, 0, holds=False)
    _, others1 = await partner(service, 200, 1, holds=False)
    stop = asyncio.Event()
    sub_log: list[tuple[float, float]] = []
    other_log: list[tuple[float, float]] = []
    tasks = [asyncio.create_task(client(service, kids, f"s{k}", stop, sub_log)) for k in range(CLIENTS_SUBTREE)]
    tasks += [
        asyncio.create_task(client(service, others0 if k % 2 else others1, f"o{k}", stop, other_log))
        for k in range(CLIENTS_OTHERS)
    ]
    await asyncio.sleep(2.0)
    began = time.perf_counter()
    answer = await service.move_partner(root, 1)
    ended = time.perf_counter()
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*tasks)
    assert answer["status"] == "done", answer
    during_sub = [e - s for s, e in sub_log if s < ended and e > began]
    before_other = [e - s for s, e in other_log if began - 1.5 <= s and e < began]
    during_other = [e - s for s, e in other_log if s >= began and e <= ended]
    await service.stop()
    return {
        "accounts": float(answer["accounts"]),  # type: ignore[arg-type]
        "holds": float(answer["holds"]),  # type: ignore[arg-type]
        "move_s": ended - began,
        "subtree_wait_max_s": max(during_sub, default=0.0),
        "subtree_wait_p99_s": p99(during_sub),
        "others_ops_s_before": len(before_other) / 1.5,
        "others_ops_s_during": len(during_other) / max(ended - began, 1e-9),
        "others_p99_before_ms": p99(before_other) * 1000,
        "others_p99_during_ms": p99(during_other) * 1000,
    }


def main(sizes: list[int]) -> None:
    print(
        "| N (accounts, holds) | move s | subtree wait max s | p99 s | others ops/s before | during | p99 ms before | during |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            r = asyncio.run(measure(n, Path(tmp)))
        print(
            f"| {n:,} ({int(r['accounts']):,}, {int(r['holds']):,}) | {r['move_s']:.2f} | {r['subtree_wait_max_s']:.2f}"
            f" | {r['subtree_wait_p99_s']:.2f} | {r['others_ops_s_before']:.0f} | {r['others_ops_s_during']:.0f}"
            f" | {r['others_p99_before_ms']:.1f} | {r['others_p99_during_ms']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [1_000, 10_000])
