"""A hold (and its capture) whose destination is on another node against one whose
destination is on the same shard: two real nodes (SQLite shards and directory in a temporary
directory), a payer on node a's shard 0, one merchant on shard 0 and one on node b's shard 1;
holds placed then captured one after another, sent to a, in alternating rounds.

    .venv/bin/python tools/fleet_holds_latency.py [rounds] [holds per round]
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
        with fleet.client("a") as a:
            payer = new_account(a, 0)
            targets = {"same shard": new_account(a, 0), "across nodes": new_account(a, 1)}
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
        fleet.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, int(sys.argv[2]) if len(sys.argv) > 2 else 200)
