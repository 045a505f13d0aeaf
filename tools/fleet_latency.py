"""A forwarded request against a direct one: two real nodes (SQLite shards and directory in a
temporary directory), one account on node a's shard, credits sent one after another to a
(direct) and to b (forwarded to a), in alternating rounds.

    .venv/bin/python tools/fleet_latency.py [rounds] [requests per round]
"""

from __future__ import annotations

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

KEY = "adm_latency_tool_key"


def main(rounds: int, per_round: int) -> None:
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
               "BALANCE_FLEET_SECRET": "latency-tool-secret"}  # fmt: skip
        proc, urls[node] = start_ready(env, work / f"{node}.log")
        procs.append(proc)
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        with (
            httpx.Client(base_url=urls["a"], headers=headers) as a,
            httpx.Client(base_url=urls["b"], headers=headers) as b,
        ):
            body = {"kind": "user", "region": "US", "currency": "USD", "name": "x", "client_id": "latency"}
            account = ""
            for attempt in range(100):  # client ids until one lands on a's shard 0
                body["client_id"] = f"latency-{attempt}"
                r = a.post("/v1/accounts", json=body)
                if r.status_code == 201 and r.json()["id"].startswith("US-0-"):
                    account = r.json()["id"]
                    break
                time.sleep(0.05)
            assert account, "no account on shard 0"
            times: dict[str, list[float]] = {"direct": [], "forwarded": []}
            n = 0
            for round_number in range(rounds):
                for name, client in (("direct", a), ("forwarded", b)):
                    for _ in range(per_round):
                        n += 1
                        began = time.perf_counter()
                        r = client.post(f"/v1/accounts/{account}/credits", json={"id": f"l{n}", "amount": 1})
                        times[name].append((time.perf_counter() - began) * 1000)
                        assert r.status_code == 201, r.text
                print(f"round {round_number + 1} done", flush=True)
        for name, values in times.items():
            values.sort()
            p99 = values[int(len(values) * 0.99) - 1]
            print(f"{name:9}: median {statistics.median(values):.2f} ms, p99 {p99:.2f} ms ({len(values)} credits)")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, int(sys.argv[2]) if len(sys.argv) > 2 else 300)
