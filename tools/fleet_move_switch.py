"""A partner move across two real nodes (SQLite shards and directory in a temporary directory;
node a owns shard 0, node b shard 1): a partner with N children, each with one pending hold, on
shard 0, moved to shard 1 while clients credit its children through node b (the subtree: they
wait during the switch) and other clients credit the children of two other partners, one on each
shard (the rest of the fleet), through the node that owns them.

    .venv/bin/python tools/fleet_move_switch.py [N ...]      (default: 1000 10000)

Reported per N: the move's duration, the longest wait of a subtree request that overlapped it,
and the other partners' credits per second and p99 before and during the move.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from service_process import free_port, start_ready  # noqa: E402

from balance import cli  # noqa: E402

KEY = "adm_move_tool_key"
HEADERS = {"Authorization": f"Bearer {KEY}"}
CLIENTS = 8


async def partner(client: httpx.AsyncClient, shard: int, children: int, holds: bool) -> tuple[str, list[str]]:
    body = {"kind": "partner", "region": "US", "currency": "USD", "name": "p"}
    while True:
        root = (await client.post("/v1/accounts", json=body)).json()["id"]
        if root.startswith(f"US-{shard}-"):
            break
    kids: list[str] = []
    for start in range(0, children, 100):
        made = await asyncio.gather(*(
            client.post("/v1/accounts", json={"kind": "user", "parent_id": root, "name": f"k{i}"})
            for i in range(start, min(children, start + 100))
        ))  # fmt: skip
        kids += [reply.json()["id"] for reply in made]
    for start in range(0, children, 1000):
        chunk = kids[start : start + 1000]
        ops = [{"op": "credit", "account_id": kid, "id": f"seed-{kid}", "amount": 10**6} for kid in chunk]
        if holds:
            ops += [{"op": "hold", "account_id": kid, "id": f"h-{kid}", "amount": 10, "expires_in_s": 86_400}
                    for kid in chunk]  # fmt: skip
        reply = await client.post("/v1/batch", json={"operations": ops})
        assert reply.status_code == 200, reply.text[:300]
    return root, kids


async def credits(url: str, kids: list[str], tag: str, stop: asyncio.Event, log: list[tuple[float, float]]) -> None:
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60) as client:
        i = 0
        while not stop.is_set():
            i += 1
            started = time.perf_counter()
            reply = await client.post(f"/v1/accounts/{kids[(i * 7919) % len(kids)]}/credits",
                                      json={"id": f"{tag}-{i}", "amount": 1})  # fmt: skip
            assert reply.status_code == 201, reply.text
            log.append((started, time.perf_counter()))


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values, default=0.0)


async def measure(n: int, urls: dict[str, str]) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=urls["a"], headers=HEADERS, timeout=120) as a:
        root, kids = await partner(a, 0, n, holds=True)
        _, others0 = await partner(a, 0, 200, holds=False)
        _, others1 = await partner(a, 1, 200, holds=False)
        stop = asyncio.Event()
        sub_log: list[tuple[float, float]] = []
        other_log: list[tuple[float, float]] = []
        tasks = [asyncio.create_task(credits(urls["b"], kids, f"s{k}-{n}", stop, sub_log)) for k in range(CLIENTS)]
        tasks += [
            asyncio.create_task(
                credits(urls["a" if k % 2 else "b"], others0 if k % 2 else others1, f"o{k}-{n}", stop, other_log)
            )  # fmt: skip
            for k in range(CLIENTS)
        ]
        await asyncio.sleep(2.0)
        began = time.perf_counter()
        answer = (await a.post(f"/v1/partners/{root}/move", json={"to_shard": 1})).json()
        ended = time.perf_counter()
        await asyncio.sleep(2.0)  # the other node learns the placement (about a second)
        stop.set()
        await asyncio.gather(*tasks)
    assert answer["status"] == "done", answer
    during_sub = [e - s for s, e in sub_log if s < ended and e > began]
    before = [e - s for s, e in other_log if began - 1.5 <= s and e < began]
    during = [e - s for s, e in other_log if s >= began and e <= ended]
    return {
        "move_s": ended - began,
        "wait_max_s": max(during_sub, default=0.0),
        "before_ops": len(before) / 1.5,
        "during_ops": len(during) / max(ended - began, 1e-9),
        "before_p99_ms": p99(before) * 1000,
        "during_p99_ms": p99(during) * 1000,
    }


def main(sizes: list[int]) -> None:
    print(
        "| N (accounts, holds) | move s | subtree wait max s | others ops/s before | during | p99 ms before | during |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        work = Path(tempfile.mkdtemp())
        os.environ["BALANCE_DATA_DIR"] = str(work)
        os.environ.pop("BALANCE_DIRECTORY_URL", None)
        for shard, node in ((0, "a"), (1, "b")):
            cli.main(["shards", "add", str(shard), "--database", str(work / f"shard-{shard}.db"), "--node", node])
        procs, urls = [], {}
        for node in ("a", "b"):
            port = free_port()
            env = {**os.environ, "BALANCE_HOST": "127.0.0.1", "BALANCE_PORT": str(port), "BALANCE_ADMIN_KEY": KEY,
                   "BALANCE_NODE_ID": node, "BALANCE_NODE_URL": f"http://127.0.0.1:{port}",
                   "BALANCE_FLEET_SECRET": "move-tool-secret", "BALANCE_RELAY": "off", "BALANCE_RESULTS": "off",
                   "BALANCE_EXPIRY_JOB": "off"}  # fmt: skip
            proc, urls[node] = start_ready(env, work / f"{node}.log")
            procs.append(proc)
        try:
            r = asyncio.run(measure(n, urls))
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        print(
            f"| {n:,} ({n + 1:,}, {n:,}) | {r['move_s']:.2f} | {r['wait_max_s']:.2f} | {r['before_ops']:.0f}"
            f" | {r['during_ops']:.0f} | {r['before_p99_ms']:.1f} | {r['during_p99_ms']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [1_000, 10_000])
