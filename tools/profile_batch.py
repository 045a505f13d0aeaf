"""The batch endpoint in process (no HTTP server, no socket): where a batch's time goes.

    .venv/bin/python tools/profile_batch.py [sqlite|mariadb] [ops per request] [requests]
    SENDERS=8 ...            concurrent senders (default 4, as the bench)
    BATCH_MAX=2000 ...       the engine's batch_max (commands per batch)
    SPLIT_MIN=0 ...          the engine's split_min (0: an idle writer takes the whole queue)
    TRACE=1 ...              commits: how many, their rows, duration, and how often 0/1/2 were in flight
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


def _trace(storage, commits: list) -> None:
    """Wrap one shard's ``commit`` to record (start, end, rows) of each."""
    commit = storage.commit

    async def traced(batch, after=None):
        started = time.perf_counter()
        try:
            return await commit(batch, after)
        finally:
            commits.append((started, time.perf_counter(), len(batch)))

    storage.commit = traced


def _report(commits: list, begin: float, end: float) -> None:
    events = sorted([(t0, 1) for t0, _, _ in commits] + [(t1, -1) for _, t1, _ in commits])
    in_flight, last, share = 0, begin, [0.0, 0.0, 0.0]
    for t, step in events:
        share[min(in_flight, 2)] += max(0.0, min(t, end) - max(last, begin))
        in_flight, last = in_flight + step, t
    share[0] += max(0.0, end - last)
    total = end - begin
    rows = [r for _, _, r in commits]
    durations = sorted(t1 - t0 for t0, t1, _ in commits)
    print(
        f"{len(commits)} commits, rows median {sorted(rows)[len(rows) // 2]}, max {max(rows)}; duration median "
        f"{durations[len(durations) // 2] * 1000:.1f} ms; 0/1/2 in flight: "
        + " / ".join(f"{s / total:.0%}" for s in share)
    )


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
    for engine in app.service.engines:
        engine.batch_max = int(os.environ.get("BATCH_MAX", engine.batch_max))
        engine.split_min = int(os.environ.get("SPLIT_MIN", engine.split_min))
    commits: list[tuple[float, float, int]] = []
    if os.environ.get("TRACE"):
        for engine in app.service.engines:
            _trace(engine.storage, commits)
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
    if commits:
        _report(commits, started, started + seconds)
    await app.service.stop()
    shutil.rmtree(data_dir)
    if profile:
        stats = pstats.Stats(profile).sort_stats("tottime")
        stats.print_stats(25)
        if os.environ.get("CALLERS"):
            stats.print_callers(os.environ["CALLERS"])


uvloop.install()
asyncio.run(main())
