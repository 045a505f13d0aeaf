"""A hold (and its capture) whose destination is on another node against one whose
destination is on the same shard: two real nodes (SQLite shards and directory in a temporary
directory), a payer on node a's shard 0, one merchant on shard 0 and one on node b's shard 1;
holds placed then captured one after another, sent to a, in alternating rounds.

    .venv/bin/python tools/fleet_holds_latency.py [rounds] [holds per round]
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


def account_on(client: httpx.Client, shard: int, tag: str) -> str:
    body = {"kind": "user", "region": "US", "currency": "USD", "name": "x"}
    for attempt in range(200):
        r = client.post("/v1/accounts", json={**body, "client_id": f"{tag}-{attempt}"})
        if r.status_code == 201 and r.json()["id"].startswith(f"US-{shard}-"):
            return str(r.json()["id"])
        time.sleep(0.05)
    raise AssertionError(f"no account on shard {shard}")


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
    try:
        with httpx.Client(base_url=urls["a"], headers={"Authorization": f"Bearer {KEY}"}) as a:
            payer = account_on(a, 0, "payer")
            targets = {"same shard": account_on(a, 0, "near"), "across nodes": account_on(a, 1, "far")}
            assert a.post(f"/v1/accounts/{payer}/credits", json={"id": "fund", "amount": 10**9}).status_code == 201
            times: dict[str, dict[str, list[float]]] = {name: {"hold": [], "capture": []} for name in targets}
            n = 0
            for round_number in range(rounds):
                for name, merchant in targets.items():
                    for _ in range(per_round):
                        n += 1
                        began = time.perf_counter()
                        hold = {"id": f"h{n}", "amount": 1, "destination_account_id": merchant}
                        r = a.post(f"/v1/accounts/{payer}/holds", json=hold)
                        placed = time.perf_counter()
                        assert r.status_code == 201, r.text
                        r = a.post(f"/v1/accounts/{payer}/holds/h{n}/capture", json={})
                        assert r.status_code == 200, r.text
                        times[name]["hold"].append((placed - began) * 1000)
                        times[name]["capture"].append((time.perf_counter() - placed) * 1000)
                print(f"round {round_number + 1} done", flush=True)
        for name, kinds in times.items():
            for kind, values in kinds.items():
                values.sort()
                p99 = values[int(len(values) * 0.99) - 1]
                print(
                    f"{name:12} {kind:7}: median {statistics.median(values):.2f} ms, p99 {p99:.2f} ms ({len(values)})"
                )
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, int(sys.argv[2]) if len(sys.argv) > 2 else 200)
