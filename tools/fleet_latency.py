"""A forwarded request against a direct one: two real nodes (SQLite shards and directory in a
temporary directory), one account on node a's shard, credits sent one after another to a
(direct) and to b (forwarded to a), in alternating rounds.

    .venv/bin/python tools/fleet_latency.py [rounds] [requests per round]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from fleet_nodes import new_account, two_nodes_fleet  # noqa: E402


def main(rounds: int, per_round: int) -> None:
    work = Path(tempfile.mkdtemp())
    os.environ["BALANCE_DATA_DIR"] = str(work)
    os.environ.pop("BALANCE_DIRECTORY_URL", None)
    fleet = two_nodes_fleet(work)  # node a owns shard 0, node b shard 1
    try:
        with fleet.client("a") as a, fleet.client("b") as b:
            account = new_account(a, 0)
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
        fleet.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, int(sys.argv[2]) if len(sys.argv) > 2 else 300)
