"""The batch endpoint in process (no HTTP server, no socket): where a batch's time goes.

    .venv/bin/python tools/profile_batch.py [sqlite|mariadb] [ops per request] [requests]
    SENDERS=8 ...            concurrent senders (default 4, as the bench)
    PROFILE=1 ...            cProfile of the run (compiled modules show as single entries)
    py-spy record --native --gil -- .venv/bin/python tools/profile_batch.py   (what BENCHMARKS.md quotes)

Calls the ASGI app directly with hold batches and capture/release batches on one hot
account, prints ops/s, the process CPU and the time the cyclic GC took (gc.callbacks).
Used for the side-by-side figures in BENCHMARKS.md ("Decisions"); noisy on a shared VM:
run it several times, alternating the variants.
"""

import asyncio
import cProfile
import gc
import os
import pstats
import shutil
import sys
import tempfile
import time

import msgspec
import uvloop

from balance.bench.ours import ADMIN_KEY, _batch_bodies
from balance.bootstrap import build_app
from balance.config import Settings

BACKEND = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
SIZE = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
REQUESTS = int(sys.argv[3]) if len(sys.argv) > 3 else 160
SENDERS = int(os.environ.get("SENDERS", "4"))

_gc = {"seconds": 0.0, "started": 0.0, "collections": [0, 0, 0]}


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _gc["started"] = time.perf_counter()
    else:
        _gc["seconds"] += time.perf_counter() - _gc["started"]
        _gc["collections"][info["generation"]] += 1


async def call(app, method: str, path: str, body: bytes = b"") -> dict:
    scope = {
        "type": "http", "method": method, "path": path, "query_string": b"",
        "headers": [(b"authorization", f"Bearer {ADMIN_KEY}".encode()), (b"content-type", b"application/json")],
    }  # fmt: skip
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    out: dict = {}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        else:
            out["body"] = message["body"]

    await app(scope, receive, send)
    return out


async def main() -> None:
    data_dir = tempfile.mkdtemp()
    env = {"BALANCE_ADMIN_KEY": ADMIN_KEY, "BALANCE_DATA_DIR": data_dir}
    if BACKEND == "mariadb":
        os.system("mariadb -uroot -e 'DROP DATABASE IF EXISTS profile_batch_s0'")
        env["BALANCE_DB_URL"] = "mysql://root@127.0.0.1:3306/profile_batch"
    app = build_app(Settings.from_env(env))
    await app.service.start()
    created = await call(
        app, "POST", "/v1/accounts", msgspec.json.encode({"kind": "partner", "region": "US", "currency": "USD"})
    )
    account = msgspec.json.decode(created["body"])["id"]
    await call(app, "POST", f"/v1/accounts/{account}/credits", msgspec.json.encode({"id": "fund", "amount": 10**12}))
    bodies = _batch_bodies("hot", [account], {}, SIZE, "p")
    requests = [next(bodies) for _ in range(REQUESTS)]
    ops = sum(len(msgspec.json.decode(body)["operations"]) for body in requests)
    pairs = [requests[i : i + 2] for i in range(0, len(requests), 2)]  # holds, then their captures

    async def sender(mine: list[bytes]) -> None:
        for body in mine:
            reply = await call(app, "POST", "/v1/batch", body)
            assert reply["status"] == 200, reply
            assert b'"status":5' not in reply["body"] and b'"status":4' not in reply["body"], reply["body"][:300]

    profile = cProfile.Profile() if os.environ.get("PROFILE") else None
    gc.callbacks.append(_on_gc)
    cpu0, started = time.process_time(), time.perf_counter()
    if profile:
        profile.enable()
    await asyncio.gather(*(sender([b for pair in pairs[k::SENDERS] for b in pair]) for k in range(SENDERS)))
    if profile:
        profile.disable()
    seconds = time.perf_counter() - started
    gc.callbacks.remove(_on_gc)
    print(
        f"{BACKEND} {SIZE}/request x{SENDERS}: {ops} ops, {ops / seconds:,.0f} ops/s, process CPU "
        f"{time.process_time() - cpu0:.1f} s, GC {_gc['seconds']:.2f} s {_gc['collections']}"
    )
    await app.service.stop()
    shutil.rmtree(data_dir)
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


uvloop.install()
asyncio.run(main())
