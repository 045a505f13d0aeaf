"""The fleet benchmark (issue 17 item 6), side by side in one run: real node processes over
SQLite shard files (or MariaDB databases with ``--mariadb URL``) and a SQLite directory in a
temporary directory, started and stopped by the tool.

    .venv/bin/python tools/fleet_bench.py [--rounds 3] [--seconds 8] [--mariadb mysql://root@127.0.0.1:3306/fb]

Each round starts two fleets afresh, one after the other (their order alternates between
rounds, so the machine's drift falls on both alike):

- **one node, two shards**: node a owns shards 0 and 1;
- **two nodes, one shard each**: node a owns shard 0, node b shard 1.

and measures, with wrk (C, one thread per process), each pair one after the other:

1. spread workload (holds, then captures or releases of the acknowledged ones, over 100
   accounts per shard): two wrk processes of 32 connections, one per shard's accounts, each
   sent to the shard's owner (as the edge would); on one node both go to node a;
2. a credit sent to the owner (direct) vs to the other node (forwarded): one connection
   (latency) and 32 connections (throughput);
3. a transfer within one shard vs between two shards: of one node, and of two nodes: one
   connection and 32 connections;

then the takeover outage: node a of a two-node fleet (b the standby of a's shard) is SIGKILLed (with the default lease
of 5 s and with 2 s) or stopped cleanly (SIGTERM: it releases its lease), while one client
sends a credit to an account of a's shard through b every 10 ms; the outage is the time from
the kill to the first credit acknowledged after it. The table gives the medians of the
rounds, and the load average seen during each measurement (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncmy
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from service_process import free_port, start_ready  # noqa: E402

from balance import cli  # noqa: E402
from balance.bench import wrk  # noqa: E402
from balance.domain.ids import client_account_suffix  # noqa: E402
from balance.storage.mariadb_url import connect_kwargs, with_database  # noqa: E402

KEY = "adm_fleet_bench_" + uuid.uuid4().hex[:8]
SECRET = "fleet-bench-" + uuid.uuid4().hex
HEADERS = {"Authorization": f"Bearer {KEY}"}
ACCOUNTS_PER_SHARD = 100
PAIRS = 100  # transfer pairs per case
FUNDS = 10**12
CLIENTS = 32  # wrk connections per process under load

# One request per line: path, a tab, the body with %s where the request's id goes.
LUA = r"""
tid = 0
local counter, lines = 0, {}
function setup(thread)
  tid = tid + 1
  thread:set("tid", tid)
end
function init(args)
  for line in io.lines(args[1]) do
    local path, body = string.match(line, "^([^\t]+)\t(.*)$")
    table.insert(lines, {path, body})
  end
  prefix = args[3] .. "-" .. tid .. "-"
  headers = {["Authorization"] = "Bearer " .. args[2], ["Content-Type"] = "application/json"}
  math.randomseed(tid * 7919 + os.time())
end
function request()
  counter = counter + 1
  local item = lines[math.random(#lines)]
  return wrk.format("POST", item[1], headers, string.format(item[2], prefix .. counter))
end
function response(status, headers, body)
  if status >= 300 then errors_seen = (errors_seen or 0) + 1 end
end
function done(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"socket_errors":%d,"non_2xx":%d,"app_errors":0}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, summary.errors.status))
end
"""


@dataclass
class Run:
    """One measurement: throughput, latency, errors, the node processes' CPU, the load average."""

    ops_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    node_cpu: float  # cores used by the node processes together
    load: float


@dataclass
class Table:
    runs: dict[str, list[Run]] = field(default_factory=dict)

    def add(self, name: str, run: Run) -> None:
        self.runs.setdefault(name, []).append(run)
        print(
            f"  {name:42} {run.ops_per_s:8,.0f}/s  p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:7.2f} ms"
            f"  errors {run.errors}  nodes' CPU {run.node_cpu:.2f}  load {run.load:.1f}",
            flush=True,
        )

    def median(self, name: str, attr: str) -> float:
        return statistics.median(getattr(run, attr) for run in self.runs[name])


def client_ids(shard: int, shards: int) -> Iterator[str]:
    """Client ids whose top-level account goes to ``shard`` (its hash names the shard)."""
    for attempt in itertools.count():
        client_id = f"fb-{attempt}"
        if int(client_account_suffix(None, client_id), 16) % shards == shard:
            yield client_id


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Fleet:
    """Node processes over one directory: ``layout`` is node -> shards it owns, ``standby``
    shard -> the node that takes it over. (A standby takes a shard whose lease is free at its
    start, before the assigned node has started and for good: so only the shard whose
    takeover is measured has one, and its owner starts first.)"""

    def __init__(
        self, work: Path, layout: dict[str, list[int]], lease_s: float, mariadb: str | None,
        standby: dict[int, str] | None = None,
    ) -> None:  # fmt: skip
        self.work, self.layout = work, layout
        work.mkdir(parents=True)
        self.databases: list[str] = []
        os.environ["BALANCE_DATA_DIR"] = str(work)
        os.environ.pop("BALANCE_DIRECTORY_URL", None)
        nodes = list(layout)
        for node, shards in layout.items():
            for shard in shards:
                if mariadb is None:
                    database = str(work / f"shard-{shard}.db")
                else:
                    name = f"fleet_bench_{uuid.uuid4().hex[:8]}_s{shard}"
                    database = with_database(mariadb, name)
                    self.databases.append(name)
                args = ["shards", "add", str(shard), "--database", database, "--node", node]
                taker = (standby or {}).get(shard)
                assert cli.main([*args, *(["--standby", taker] if taker else [])]) == 0
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.urls: dict[str, str] = {}
        for node in nodes:
            port = free_port()
            env = {**os.environ, "BALANCE_HOST": "127.0.0.1", "BALANCE_PORT": str(port), "BALANCE_ADMIN_KEY": KEY,
                   "BALANCE_NODE_ID": node, "BALANCE_NODE_URL": f"http://127.0.0.1:{port}",
                   "BALANCE_FLEET_SECRET": SECRET, "BALANCE_LEASE_S": str(lease_s)}  # fmt: skip
            self.procs[node], self.urls[node] = start_ready(env, work / f"{node}.log", timeout_s=60)
        self.owner = {shard: node for node, shards in layout.items() for shard in shards}
        self.accounts: dict[int, list[str]] = {}
        for node, url in self.urls.items():  # each node serves the shards assigned to it, no other
            owned = set(httpx.get(f"{url}/readyz", timeout=5).json().get("shards", {}))
            assert owned == {str(s) for s in layout[node]}, f"node {node} owns {owned}, not {layout[node]}"

    def client(self, node: str) -> httpx.Client:
        return httpx.Client(base_url=self.urls[node], headers=HEADERS, timeout=30)

    def setup_accounts(self) -> None:
        """``ACCOUNTS_PER_SHARD`` funded accounts on each shard, made through its owner (a
        client id whose hash names the shard: where a top-level creation with it goes)."""
        shards = len(self.owner)
        for shard, node in sorted(self.owner.items()):
            made: list[str] = []
            with self.client(node) as client:
                for client_id in itertools.islice(client_ids(shard, shards), ACCOUNTS_PER_SHARD):
                    body = {"kind": "partner", "region": "US", "currency": "USD", "client_id": client_id}
                    answer = client.post("/v1/accounts", json=body)
                    assert answer.status_code == 201, answer.text
                    made.append(answer.json()["id"])
                assert all(a.startswith(f"US-{shard}-") for a in made)
                ops = [{"op": "credit", "account_id": a, "id": "fund", "amount": FUNDS} for a in made]
                answer = client.post("/v1/batch", json={"operations": ops})
                assert answer.status_code == 200 and all(r["status"] == 201 for r in answer.json()["results"])
            self.accounts[shard] = made

    def cpu(self) -> float:
        return sum(cpu_s(p.pid) for p in self.procs.values() if p.poll() is None)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.databases:
            asyncio.run(drop_databases(self.mariadb_url, self.databases))

    mariadb_url = ""


async def drop_databases(url: str, names: list[str]) -> None:
    conn = await asyncmy.connect(**connect_kwargs(url))
    try:
        async with conn.cursor() as cur:
            for name in names:
                await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        await conn.ensure_closed()


def wrk_lines(work: Path, lines: list[tuple[str, str]]) -> Path:
    path = work / f"lines-{uuid.uuid4().hex[:6]}.txt"
    path.write_text("".join(f"{p}\t{b}\n" for p, b in lines))
    return path


def run_wrk_lines(url: str, lines: Path, clients: int, seconds: float) -> wrk.WrkResult:
    """wrk, one thread, ``clients`` connections, requests drawn from ``lines``."""
    script = lines.with_suffix(".lua")
    script.write_text(LUA)
    command = ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script),
               url, "--", str(lines), KEY, "f" + uuid.uuid4().hex[:6]]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("{"))
    data = json.loads(line)
    return wrk.WrkResult(
        data["requests"], data["duration_us"] / 1e6, data["p50_us"] / 1000, data["p95_us"] / 1000,
        data["p99_us"] / 1000, data["socket_errors"] + data["non_2xx"], 0.0,
    )  # fmt: skip


def measure(fleet: Fleet, jobs: list[Callable[[], wrk.WrkResult]]) -> Run:
    """The jobs (wrk processes) at the same time: their requests summed, the worst latency."""
    results: list[wrk.WrkResult | None] = [None] * len(jobs)

    def run(index: int) -> None:
        results[index] = jobs[index]()

    cpu0, began = fleet.cpu(), time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    done = [r for r in results if r is not None]
    assert len(done) == len(jobs), "a wrk process failed"
    seconds = max(r.seconds for r in done)
    return Run(
        ops_per_s=sum(r.requests for r in done) / seconds,
        p50_ms=max(r.p50_ms for r in done),
        p99_ms=max(r.p99_ms for r in done),
        errors=sum(r.errors for r in done),
        node_cpu=(fleet.cpu() - cpu0) / elapsed,
        load=os.getloadavg()[0],
    )


def credits(accounts: list[str]) -> list[tuple[str, str]]:
    return [(f"/v1/accounts/{a}/credits", '{"id":"%s","amount":1}') for a in accounts]


def transfers(sources: list[str], targets: list[str]) -> list[tuple[str, str]]:
    lines = []
    for i in range(PAIRS):
        source, target = sources[i % len(sources)], targets[(i * 7 + 1) % len(targets)]
        if source == target:
            continue
        body = f'{{"id":"%s","from_account_id":"{source}","to_account_id":"{target}","amount":1,"currency":"USD"}}'
        lines.append(("/v1/transfers", body))
    return lines


def one_node_round(work: Path, table: Table, seconds: float, mariadb: str | None) -> None:
    fleet = Fleet(work, {"a": [0, 1]}, 5, mariadb)
    fleet.mariadb_url = mariadb or ""
    try:
        fleet.setup_accounts()
        url = fleet.urls["a"]
        table.add("spread: one node, two shards", measure(fleet, [
            (lambda ids=ids: wrk.run_wrk(url, KEY, ids, mix=wrk.HOLD_THEN_SETTLE, clients=CLIENTS,
                                         duration_s=seconds, threads=1, tag="s" + uuid.uuid4().hex[:6]))
            for ids in (fleet.accounts[0], fleet.accounts[1])
        ]))  # fmt: skip
        across = wrk_lines(work, transfers(fleet.accounts[0], fleet.accounts[1]))
        table.add("transfer across shards, one node, 1 conn", measure(fleet, [
            lambda: run_wrk_lines(url, across, 1, seconds)]))  # fmt: skip
        table.add(f"transfer across shards, one node, {CLIENTS} conns", measure(fleet, [
            lambda: run_wrk_lines(url, across, CLIENTS, seconds)]))  # fmt: skip
    finally:
        fleet.stop()


def two_nodes_round(work: Path, table: Table, seconds: float, mariadb: str | None) -> None:
    fleet = Fleet(work, {"a": [0], "b": [1]}, 5, mariadb)
    fleet.mariadb_url = mariadb or ""
    try:
        fleet.setup_accounts()
        a, b = fleet.urls["a"], fleet.urls["b"]
        table.add("spread: two nodes, one shard each", measure(fleet, [
            (lambda url=url, ids=ids: wrk.run_wrk(url, KEY, ids, mix=wrk.HOLD_THEN_SETTLE, clients=CLIENTS,
                                                  duration_s=seconds, threads=1, tag="s" + uuid.uuid4().hex[:6]))
            for url, ids in ((a, fleet.accounts[0]), (b, fleet.accounts[1]))
        ]))  # fmt: skip
        to_a = wrk_lines(work, credits(fleet.accounts[0]))
        for clients in (1, CLIENTS):
            conns = "1 conn" if clients == 1 else f"{clients} conns"
            table.add(f"credit direct (to its owner), {conns}", measure(fleet, [
                lambda clients=clients: run_wrk_lines(a, to_a, clients, seconds)]))  # fmt: skip
            table.add(f"credit forwarded (via the other), {conns}", measure(fleet, [
                lambda clients=clients: run_wrk_lines(b, to_a, clients, seconds)]))  # fmt: skip
        same = wrk_lines(work, transfers(fleet.accounts[0], fleet.accounts[0][1:] + fleet.accounts[0][:1]))
        across = wrk_lines(work, transfers(fleet.accounts[0], fleet.accounts[1]))
        for clients in (1, CLIENTS):
            conns = "1 conn" if clients == 1 else f"{clients} conns"
            table.add(f"transfer same shard, {conns}", measure(fleet, [
                lambda clients=clients: run_wrk_lines(a, same, clients, seconds)]))  # fmt: skip
            table.add(f"transfer across nodes, {conns}", measure(fleet, [
                lambda clients=clients: run_wrk_lines(a, across, clients, seconds)]))  # fmt: skip
    finally:
        fleet.stop()


TOOK_OVER = re.compile(r"took shard 0 over \(([0-9.]+)s after the former lease ended\)")


def takeover(work: Path, lease_s: float, how: str, mariadb: str | None) -> tuple[float, float | None, float]:
    """Seconds from stopping node a (``kill``: SIGKILL, ``term``: SIGTERM, a clean stop) to the
    first credit on its shard acknowledged through b; the part after the lease ended (recovery),
    as b logged it; the load average."""
    fleet = Fleet(work, {"a": [0], "b": [1]}, lease_s, mariadb, standby={0: "b"})
    fleet.mariadb_url = mariadb or ""
    try:
        with fleet.client("a") as a:
            body = {"kind": "partner", "region": "US", "currency": "USD", "client_id": next(client_ids(0, 2))}
            answer = a.post("/v1/accounts", json=body)
            assert answer.status_code == 201, answer.text
            account = answer.json()["id"]
        with httpx.Client(base_url=fleet.urls["b"], headers=HEADERS, timeout=3) as b:
            n = 0

            def credit() -> int:
                nonlocal n
                n += 1
                try:
                    return b.post(f"/v1/accounts/{account}/credits", json={"id": f"t{n}", "amount": 1}).status_code
                except httpx.TransportError:
                    return 0

            deadline = time.monotonic() + 10
            while credit() != 201:  # b knows a's URL
                assert time.monotonic() < deadline
                time.sleep(0.05)
            for _ in range(20):
                assert credit() == 201
                time.sleep(0.01)
            proc = fleet.procs["a"]
            stopped = time.monotonic()
            proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
            while credit() != 201:
                assert time.monotonic() - stopped < 60, "no takeover within 60 s"
                time.sleep(0.01)
            outage = time.monotonic() - stopped
        load = os.getloadavg()[0]
        found = TOOK_OVER.search((work / "b.log").read_text())
        return outage, (float(found.group(1)) if found else None), load
    finally:
        fleet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--mariadb", default=None, help="shards on MariaDB databases of this server (dropped after)")
    parser.add_argument("--skip-takeover", action="store_true")
    args = parser.parse_args()
    if not wrk.available():
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    root = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    table = Table()
    outages: dict[str, list[tuple[float, float | None, float]]] = {}
    print(f"fleet bench: {args.rounds} rounds of {args.seconds:g} s per measurement, work in {root}, "
          f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs", flush=True)  # fmt: skip
    started = time.monotonic()
    try:
        for r in range(args.rounds):
            order: list[tuple[str, Callable[[Path, Table, float, str | None], None]]] = [
                ("one", one_node_round), ("two", two_nodes_round),
            ]  # fmt: skip
            if r % 2:
                order.reverse()
            print(f"round {r + 1}", flush=True)
            for name, fn in order:
                fn(root / f"r{r}-{name}", table, args.seconds, args.mariadb)
            if not args.skip_takeover:
                for lease, how in ((5.0, "kill"), (2.0, "kill"), (5.0, "term")):
                    label = f"{'SIGKILL' if how == 'kill' else 'clean stop (SIGTERM)'}, lease {lease:g} s"
                    got = takeover(root / f"r{r}-takeover-{how}-{lease:g}", lease, how, args.mariadb)
                    outages.setdefault(label, []).append(got)
                    recovery = "?" if got[1] is None else f"{got[1]:.2f}"
                    print(f"  takeover, {label:30} outage {got[0]:.2f} s (b: {recovery} s after the lease ended)"
                          f"  load {got[2]:.1f}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nmedians of {args.rounds} rounds ({time.monotonic() - started:.0f} s in all):\n")
    print("| what | ops/s | p50 | p99 | errors | nodes' CPU (cores) | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, runs in table.runs.items():
        print(
            f"| {name} | {table.median(name, 'ops_per_s'):,.0f} | {table.median(name, 'p50_ms'):.2f} ms"
            f" | {table.median(name, 'p99_ms'):.2f} ms | {sum(r.errors for r in runs)}"
            f" | {table.median(name, 'node_cpu'):.2f} | {min(r.load for r in runs):.1f}-{max(r.load for r in runs):.1f} |"
        )
    pairs = [
        ("spread: two nodes, one shard each", "spread: one node, two shards"),
        ("credit forwarded (via the other), 1 conn", "credit direct (to its owner), 1 conn"),
        (f"credit forwarded (via the other), {CLIENTS} conns", f"credit direct (to its owner), {CLIENTS} conns"),
        ("transfer across nodes, 1 conn", "transfer same shard, 1 conn"),
        (f"transfer across nodes, {CLIENTS} conns", f"transfer same shard, {CLIENTS} conns"),
        (f"transfer across nodes, {CLIENTS} conns", f"transfer across shards, one node, {CLIENTS} conns"),
    ]
    print("\n| ratio | throughput | p50 |")
    print("|---|---:|---:|")
    for x, y in pairs:
        if x in table.runs and y in table.runs:
            print(
                f"| {x} / {y} | {table.median(x, 'ops_per_s') / table.median(y, 'ops_per_s'):.2f}x"
                f" | {table.median(x, 'p50_ms') / table.median(y, 'p50_ms'):.2f}x |"
            )
    if outages:
        print("\n| takeover | outage, median (runs) | after the lease ended (recovery), median | load avg |")
        print("|---|---:|---:|---:|")
        for label, got in outages.items():
            recoveries = [g[1] for g in got if g[1] is not None]
            recovery = f"{statistics.median(recoveries):.2f} s" if recoveries else "-"
            print(
                f"| {label} | {statistics.median(g[0] for g in got):.2f} s"
                f" ({', '.join(f'{g[0]:.2f}' for g in got)}) | {recovery}"
                f" | {min(g[2] for g in got):.1f}-{max(g[2] for g in got):.1f} |"
            )


if __name__ == "__main__":
    main()
