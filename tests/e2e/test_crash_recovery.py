"""Crash safety: the real server is SIGKILLed under load, restarted, and audited.

For SQLite and MariaDB: start ``python -m balance run`` (two shards), build a small partner
tree, drive a concurrent mix of credits, debits, parent<->child transfers, holds, captures and
releases from 16 HTTP clients (and 2 more sending the same mix in batches of 300), and SIGKILL the process at a random moment while requests are in
flight. Then restart it on the same data and prove:

(a) every acknowledged operation is there: replaying it answers the same status and body,
    marked ``Idempotent-Replayed: true``;
(b) nothing is half-applied: the journals hold exactly the rows of the operations that took
    effect (both legs of a transfer or of a capture to an account, or neither), each account's
    balance is the sum of its journal and the journal's running balances add up;
(c) an unanswered request, replayed, either takes effect now or answers its first outcome,
    never both;
(d) the balances of each currency, system accounts included, sum to zero;
(e) each account's reserved is the sum of its pending holds.

While the restarted server recovers, money requests get 503 with Retry-After or succeed, and
``/readyz`` goes from 503 to 200 and stays there.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncmy
import httpx
import pytest
from service_process import free_port

from balance.storage.mariadb_url import connect_kwargs, parse_server, with_database

ADMIN_KEY = "adm_crash_" + uuid.uuid4().hex
SHARDS = 2
WORKERS = 16
BATCH_WORKERS = 2  # besides: clients sending the same mix through /v1/batch
BATCH_OPS = 300  # operations per batch request (MariaDB writes batches this large as XA branches)
SINGLE_REPLAY_EVERY = 10  # of the operations sent in batches, this one in N is also replayed alone
CURRENCY = "USD"
PARTNERS = 3
CHILDREN_PER_PARTNER = 3
RECORDED_REFUSALS = {"insufficient_funds"}  # the 4xx outcomes of this mix that the journal records
START_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 10.0
TOO_MUCH = 10**12  # more than any account of the test ever holds: insufficient_funds
OPS_PER_WORKER_MAX = 100_000  # a bound only: the kill ends the load long before
SEED_ENV = "BALANCE_TEST_SEED"  # set it to rerun a failed run with the same choices (printed in every failure)
ACKNOWLEDGED_MIN = 200  # fewer acknowledged before the kill and the test proved too little to pass


# ---- the server process ------------------------------------------------------------------


class Server:
    """``python -m balance run`` on 127.0.0.1, a fresh port per start, the same data each time."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def start(self) -> str:
        assert self.proc is None or self.proc.poll() is not None, "the server is already running"
        port = free_port()
        env = {**self.env, "BALANCE_HOST": "127.0.0.1", "BALANCE_PORT": str(port)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "balance", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sigkill(self) -> None:
        if self.alive:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=REQUEST_TIMEOUT_S,
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
    )


async def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with client(server.base_url) as http:
        while time.monotonic() < deadline:
            assert server.alive, f"the server exited during start:\n{server.log_tail()}"
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.02)
    raise AssertionError(f"the server was not ready within {START_TIMEOUT_S}s:\n{server.log_tail()}")


# ---- operations and what became of them --------------------------------------------------


@dataclass(eq=False)
class Op:
    """One money request; ``status``/``answer`` are its first answer (None: it got none)."""

    kind: str  # credit | debit | transfer | hold | capture | release
    path: str
    body: dict[str, Any]
    account_id: str  # the account it acts on (a transfer's source, a hold's holder)
    op_id: str  # the journal's Txn id (a hold's id for hold, capture and release)
    amount: int  # credit/debit/transfer/hold amount; a capture's captured amount
    counterparty: str | None = None  # a transfer's target, a hold's destination
    hold: Op | None = None  # capture/release: the hold
    status: int | None = None
    answer: Any = None
    error: str = ""
    via_batch: bool = False  # sent in a POST /v1/batch
    final_status: int | None = None  # after the audit's replays: what the service settled on
    final_answer: Any = None

    def record(self, response: httpx.Response) -> None:
        self.status, self.answer = response.status_code, response.json()

    @property
    def acknowledged(self) -> bool:
        """Answered with an outcome the service recorded (and must replay)."""
        return self.status is not None and is_recorded(self.status, self.answer)

    @property
    def took_effect(self) -> bool:
        assert self.final_status is not None, self
        return 200 <= self.final_status < 300

    def describe(self) -> str:
        return f"{self.kind} {self.op_id} on {self.account_id} (first answer {self.status} {self.error})"


def is_recorded(status: int, answer: Any) -> bool:
    if 200 <= status < 300:
        return True
    return 400 <= status < 500 and isinstance(answer, dict) and answer.get("code") in RECORDED_REFUSALS


@dataclass
class Tree:
    partners: list[str]
    children: dict[str, list[str]]  # partner -> its children

    @property
    def accounts(self) -> list[str]:
        return [*self.partners, *(c for p in self.partners for c in self.children[p])]


def shard_of(account_id: str) -> int:
    return int(account_id.split("-", 2)[1])


def batch_form(op: Op) -> dict[str, Any]:
    """The operation as an entry of ``POST /v1/batch``."""
    if op.kind == "transfer":
        return {"op": "transfer", **op.body}
    if op.kind in ("capture", "release"):
        assert op.hold is not None
        return {"op": op.kind, "account_id": op.account_id, "hold_id": op.op_id, **op.body}
    return {"op": op.kind, "account_id": op.account_id, **op.body}


def credit_op(account_id: str, op_id: str, amount: int) -> Op:
    return Op("credit", f"/v1/accounts/{account_id}/credits", {"id": op_id, "amount": amount}, account_id, op_id,
              amount)  # fmt: skip


def next_op(rng: random.Random, tree: Tree, op_id: str, my_holds: list[Op]) -> Op:
    """A random operation of the mix; captures and releases only of this worker's acknowledged holds."""
    if my_holds and rng.random() < 0.3:
        hold = my_holds.pop(rng.randrange(len(my_holds)))
        base = f"/v1/accounts/{hold.account_id}/holds/{hold.op_id}"
        if rng.random() < 0.6:
            amount = None if rng.random() < 0.5 else rng.randint(1, hold.amount)
            body = {} if amount is None else {"amount": amount}
            return Op("capture", f"{base}/capture", body, hold.account_id, hold.op_id, amount or hold.amount,
                      hold.counterparty, hold)  # fmt: skip
        return Op("release", f"{base}/release", {}, hold.account_id, hold.op_id, hold.amount, None, hold)
    partner = rng.choice(tree.partners)
    child = rng.choice(tree.children[partner])
    account, other = (partner, child) if rng.random() < 0.5 else (child, partner)
    roll = rng.random()
    if roll < 0.15:
        return credit_op(account, op_id, rng.randint(1_000, 20_000))
    if roll < 0.30:
        amount = rng.randint(1, 15_000) if rng.random() < 0.9 else TOO_MUCH  # some refusals, recorded
        return Op("debit", f"/v1/accounts/{account}/debits", {"id": op_id, "amount": amount}, account, op_id, amount)
    if roll < 0.60:
        amount = rng.randint(1, 20_000)
        body = {"id": op_id, "from_account_id": account, "to_account_id": other, "amount": amount,
                "currency": CURRENCY}  # fmt: skip
        return Op("transfer", "/v1/transfers", body, account, op_id, amount, other)
    amount = rng.randint(1, 10_000) if rng.random() < 0.95 else TOO_MUCH
    destination = other if rng.random() < 0.5 else None
    body = {"id": op_id, "amount": amount}
    if destination is not None:
        body["destination_account_id"] = destination
    return Op("hold", f"/v1/accounts/{account}/holds", body, account, op_id, amount, destination)


# ---- phases ------------------------------------------------------------------------------


async def build_tree(http: httpx.AsyncClient, tag: str) -> tuple[Tree, list[Op]]:
    """Partners (spread over both shards by placement) with children; every account credited."""
    tree = Tree([], {})
    for p in range(PARTNERS):
        body = {"kind": "partner", "region": "US", "currency": CURRENCY, "name": f"partner {p}"}
        response = await http.post("/v1/accounts", json=body)
        assert response.status_code == 201, response.text
        partner = response.json()["id"]
        tree.partners.append(partner)
        tree.children[partner] = []
        for k in range(CHILDREN_PER_PARTNER):
            kind = "provider" if k == 0 else "user"
            body = {"parent_id": partner, "kind": kind, "name": f"{kind} {p}.{k}"}
            response = await http.post("/v1/accounts", json=body)
            assert response.status_code == 201, response.text
            assert shard_of(response.json()["id"]) == shard_of(partner)
            tree.children[partner].append(response.json()["id"])
    assert {shard_of(p) for p in tree.partners} == set(range(SHARDS)), "placement should use every shard"
    ops = []
    for n, account in enumerate(tree.accounts):
        op = credit_op(account, f"{tag}-seed-{n}", 1_000_000 if account in tree.partners else 200_000)
        op.record(await http.post(op.path, json=op.body))
        assert op.status == 201, op.answer
        ops.append(op)
    return tree, ops


@dataclass
class LoadResult:
    ops: list[Op] = field(default_factory=list)
    in_flight_at_kill: int = 0
    answered_at_kill: int = 0
    errors_before_kill: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    kill_after_s: float = 0.0


async def load_and_kill(server: Server, tree: Tree, rng: random.Random, tag: str) -> LoadResult:
    """16 clients send the mix one request per operation, 2 more in batches of 300, until the
    server is SIGKILLed after a random 0.3-1.5 s."""
    result = LoadResult(kill_after_s=rng.uniform(0.3, 1.5))
    killed = asyncio.Event()
    in_flight = 0
    answered = 0

    def take_answer(op: Op, shown: Any, my_holds: list[Op]) -> None:
        """A first answer: of the 5xx only 503, of the 4xx only recorded refusals; a placed hold
        may be captured or released later by the same worker."""
        nonlocal answered
        answered += 1
        assert op.status is not None
        if op.status >= 500 and op.status != 503:
            result.unexpected.append(f"{op.describe()}: {op.status} {shown}")
        elif 400 <= op.status < 500 and not op.acknowledged:
            result.unexpected.append(f"{op.describe()}: unrecorded refusal {shown}")
        if op.kind == "hold" and op.status == 201:
            my_holds.append(op)

    async def worker(n: int, http: httpx.AsyncClient) -> None:
        nonlocal in_flight
        wrng = random.Random(rng.getrandbits(64))
        my_holds: list[Op] = []
        for i in range(OPS_PER_WORKER_MAX):
            if killed.is_set():
                return
            op = next_op(wrng, tree, f"{tag}-w{n}-{i}", my_holds)
            result.ops.append(op)
            in_flight += 1
            try:
                response = await http.post(op.path, json=op.body)
            except httpx.TransportError as exc:
                op.error = type(exc).__name__
                if not killed.is_set():
                    result.errors_before_kill.append(f"{op.describe()}: {exc!r}")
                return
            finally:
                in_flight -= 1
            op.record(response)
            if response.headers.get("idempotent-replayed"):
                result.unexpected.append(f"{op.describe()}: a first request answered as a replay")
            take_answer(op, response.text, my_holds)

    async def batch_worker(n: int, http: httpx.AsyncClient) -> None:
        nonlocal in_flight
        wrng = random.Random(rng.getrandbits(64))
        my_holds: list[Op] = []
        for i in range(OPS_PER_WORKER_MAX // BATCH_OPS):
            if killed.is_set():
                return
            ops = [next_op(wrng, tree, f"{tag}-b{n}-{i}-{k}", my_holds) for k in range(BATCH_OPS)]
            for op in ops:
                op.via_batch = True
            result.ops += ops
            in_flight += len(ops)
            try:
                response = await http.post("/v1/batch", json={"operations": [batch_form(op) for op in ops]})
            except httpx.TransportError as exc:
                for op in ops:
                    op.error = type(exc).__name__
                if not killed.is_set():
                    result.errors_before_kill.append(f"batch {tag}-b{n}-{i}: {exc!r}")
                return
            finally:
                in_flight -= len(ops)
            if response.status_code != 200:
                result.unexpected.append(f"batch {tag}-b{n}-{i}: {response.status_code} {response.text[:200]}")
                continue
            for op, item in zip(ops, response.json()["results"], strict=True):
                op.status, op.answer = item["status"], item["body"]
                take_answer(op, op.answer, my_holds)

    async with AsyncExitStack() as stack:
        # Clients are made before the clock starts (each one costs some milliseconds to build).
        clients = [await stack.enter_async_context(client(server.base_url)) for _ in range(WORKERS + BATCH_WORKERS)]
        tasks = [asyncio.create_task(worker(n, http)) for n, http in enumerate(clients[:WORKERS])]
        tasks += [asyncio.create_task(batch_worker(n, http)) for n, http in enumerate(clients[WORKERS:])]
        try:
            await asyncio.sleep(result.kill_after_s)
            assert server.alive, f"the server died before the kill:\n{server.log_tail()}"
            result.in_flight_at_kill, result.answered_at_kill = in_flight, answered
            server.sigkill()
            killed.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=REQUEST_TIMEOUT_S + 5)
        finally:
            for task in tasks:
                task.cancel()
    return result


@dataclass
class Recovery:
    readyz: list[int] = field(default_factory=list)
    probe_statuses: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def restart_and_observe(server: Server, probe: Op) -> Recovery:
    """Restart; until ready, a money request must answer 503 with Retry-After or succeed."""
    recovery = Recovery()
    started = time.monotonic()
    server.start()
    deadline = started + START_TIMEOUT_S
    async with client(server.base_url) as http:
        while time.monotonic() < deadline:
            assert server.alive, f"the server exited during recovery:\n{server.log_tail()}"
            try:
                ready = await http.get("/readyz")
                response = await http.post(probe.path, json=probe.body)
            except httpx.TransportError:  # not listening yet
                await asyncio.sleep(0.005)
                continue
            recovery.readyz.append(ready.status_code)
            recovery.probe_statuses.append(response.status_code)
            if response.status_code == 503:
                if "retry-after" not in response.headers:
                    recovery.violations.append("503 without Retry-After")
                if response.json().get("code") != "unavailable":
                    recovery.violations.append(f"503 with the wrong problem: {response.text}")
            elif response.status_code == 201 and probe.status is None:
                probe.record(response)
            elif response.status_code != 201:
                recovery.violations.append(f"probe answered {response.status_code}: {response.text}")
            if ready.status_code == 200 and probe.status is not None:
                break
    recovery.seconds = time.monotonic() - started
    return recovery


async def run_all(base_url: str, items: Iterable[Op], fn: Callable[[httpx.AsyncClient, Op], Awaitable[None]]) -> None:
    queue = list(items)

    async def worker() -> None:
        async with client(base_url) as http:
            while queue:
                await fn(http, queue.pop())

    await asyncio.gather(*(worker() for _ in range(WORKERS)))


async def replay_acknowledged(base_url: str, ops: list[Op]) -> list[str]:
    """(a) the same request answers the same status and body, as a replay (operations sent in
    batches are replayed in batches, and one in ``SINGLE_REPLAY_EVERY`` alone as well)."""
    failures: list[str] = []

    async def replay(http: httpx.AsyncClient, op: Op) -> None:
        response = await http.post(op.path, json=op.body)
        if response.status_code != op.status or response.json() != op.answer:
            failures.append(
                f"{op.describe()}: replay answered {response.status_code} {response.text}, first {op.answer}"
            )
        elif response.headers.get("idempotent-replayed") != "true":
            failures.append(f"{op.describe()}: replay without Idempotent-Replayed: true")
        op.final_status, op.final_answer = op.status, op.answer

    batched = [op for op in ops if op.via_batch]
    async with client(base_url) as http:
        for start in range(0, len(batched), BATCH_OPS):
            chunk = batched[start : start + BATCH_OPS]
            response = await http.post("/v1/batch", json={"operations": [batch_form(op) for op in chunk]})
            assert response.status_code == 200, response.text
            for op, item in zip(chunk, response.json()["results"], strict=True):
                if (item["status"], item["body"]) != (op.status, op.answer):
                    failures.append(f"{op.describe()}: batch replay answered {item}, first {op.answer}")
                op.final_status, op.final_answer = op.status, op.answer
    singles = [op for op in ops if not op.via_batch] + batched[::SINGLE_REPLAY_EVERY]
    await run_all(base_url, singles, replay)
    return failures


async def settle_unacknowledged(base_url: str, ops: list[Op]) -> tuple[list[str], Counter[str]]:
    """(c) an unanswered request, sent again, takes effect now or answers its first outcome.

    Holds go first, captures and releases last (a capture is only ever sent for a hold whose
    placement was acknowledged, so it is never waiting for an unsettled hold). A second replay
    must then answer exactly what the first did, as a replay.
    """
    failures: list[str] = []
    outcomes: Counter[str] = Counter()

    async def settle(http: httpx.AsyncClient, op: Op) -> None:
        response = await http.post(op.path, json=op.body)
        replayed = response.headers.get("idempotent-replayed") == "true"
        answer = response.json()
        if not is_recorded(response.status_code, answer):
            failures.append(f"{op.describe()}: sent again, answered {response.status_code} {response.text}")
            return
        outcomes["was applied before the kill" if replayed else "applied now"] += 1
        op.final_status, op.final_answer = response.status_code, answer
        again = await http.post(op.path, json=op.body)
        if again.status_code != op.final_status or again.json() != op.final_answer:
            failures.append(f"{op.describe()}: second replay answered {again.status_code} {again.text}")
        elif again.headers.get("idempotent-replayed") != "true":
            failures.append(f"{op.describe()}: second replay without Idempotent-Replayed: true")

    for kinds in (("hold",), ("credit", "debit", "transfer"), ("capture", "release")):
        await run_all(base_url, [op for op in ops if op.kind in kinds], settle)
    return failures, outcomes


def expected_rows(op: Op) -> list[tuple[str, str, str, int, int, int]]:
    """The journal rows an operation that took effect leaves: (account, kind, id, amount, Δbalance, Δreserved)."""
    if not op.took_effect:
        return []
    a, k, i = op.account_id, op.kind, op.op_id
    if k == "credit":
        return [(a, k, i, op.amount, op.amount, 0)]
    if k == "debit":
        return [(a, k, i, op.amount, -op.amount, 0)]
    if k == "transfer":
        assert op.counterparty is not None
        return [(a, k, i, op.amount, -op.amount, 0), (op.counterparty, k, i, op.amount, op.amount, 0)]
    if k == "hold":
        return [(a, k, i, op.amount, 0, op.amount)]
    assert op.hold is not None
    if k == "release":
        return [(a, k, i, op.amount, 0, -op.hold.amount)]
    rows = [(a, k, i, op.amount, -op.amount, -op.hold.amount)]  # capture: the rest is released
    if op.counterparty is not None:
        rows.append((op.counterparty, k, i, op.amount, op.amount, 0))
    return rows


async def fetch_journal(http: httpx.AsyncClient, account_id: str) -> list[dict[str, Any]]:
    """The whole history, oldest first (bounded paging)."""
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(10_000):
        params: dict[str, str] = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        response = await http.get(f"/v1/accounts/{account_id}/transactions", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        rows += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows[::-1]
    raise AssertionError(f"history of {account_id} did not end")


async def get_json(http: httpx.AsyncClient, path: str) -> dict[str, Any]:
    response = await http.get(path)
    assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
    return response.json()


async def audit(base_url: str, tree: Tree, ops: list[Op]) -> list[str]:
    """(b), (d), (e) on the settled state."""
    failures: list[str] = []
    effective = [op for op in ops if op.took_effect]
    expected: dict[str, Counter[tuple[str, str, int]]] = defaultdict(Counter)
    delta: dict[tuple[str, str, str], tuple[int, int]] = {}
    for op in effective:
        for account, kind, op_id, amount, d_balance, d_reserved in expected_rows(op):
            expected[account][(kind, op_id, amount)] += 1
            delta[(account, kind, op_id)] = (d_balance, d_reserved)
    holds = [op for op in effective if op.kind == "hold"]
    finished = {op.hold.op_id: op for op in effective if op.kind in ("capture", "release") and op.hold is not None}
    async with client(base_url) as http:
        journals = await asyncio.gather(*(fetch_journal(http, a) for a in tree.accounts))
        states = await asyncio.gather(*(get_json(http, f"/v1/accounts/{a}") for a in tree.accounts))
        hold_states = []
        for start in range(0, len(holds), 64):  # bounded: httpx slows down with thousands waiting
            hold_states += await asyncio.gather(
                *(get_json(http, f"/v1/accounts/{h.account_id}/holds/{h.op_id}") for h in holds[start : start + 64])
            )
        system = {}
        for shard in range(SHARDS):
            for kind in ("funding", "settlement"):
                system[(shard, kind)] = await get_json(http, f"/v1/accounts/SYS-{shard}-{kind}-{CURRENCY}")

    # (e) holds: each one's status as the settled operations say; reserved = pending amounts.
    pending: Counter[str] = Counter()
    for hold, state in zip(holds, hold_states, strict=True):
        end = finished.get(hold.op_id)
        want = "pending" if end is None else ("captured" if end.kind == "capture" else "released")
        captured = end.amount if end is not None and end.kind == "capture" else 0
        if (state["status"], state["captured_amount"], state["amount"]) != (want, captured, hold.amount):
            failures.append(f"hold {hold.op_id}: {state}, expected {want} with {captured} captured")
        if state["status"] == "pending":
            pending[hold.account_id] += state["amount"]

    # (b) journals hold exactly the effective operations' rows; balances are their sums.
    for account, rows, state in zip(tree.accounts, journals, states, strict=True):
        seen = Counter((row["kind"], row["operation_id"], row["amount"]) for row in rows)
        if seen != expected[account]:
            missing, extra = expected[account] - seen, seen - expected[account]
            failures.append(f"{account}: journal rows missing {dict(missing)}, unexpected {dict(extra)}")
            continue
        balance = reserved = 0
        for row in rows:
            d_balance, d_reserved = delta[(account, row["kind"], row["operation_id"])]
            balance += d_balance
            reserved += d_reserved
            if (row["balance_after"], row["reserved_after"]) != (balance, reserved):
                failures.append(f"{account}: running totals break at {row}: expected {balance}/{reserved}")
                break
        if state["balance"] != balance:
            failures.append(f"{account}: balance {state['balance']} != sum of its journal {balance}")
        if state["reserved"] != reserved or state["reserved"] != pending[account]:
            failures.append(
                f"{account}: reserved {state['reserved']}, journal {reserved}, pending holds {pending[account]}"
            )
        if state["available"] != state["balance"] + state["credit_limit"] - state["reserved"]:
            failures.append(f"{account}: available {state['available']} inconsistent")
        if state["available"] < 0:
            failures.append(f"{account}: negative available {state['available']}")

    # (d) double entry: everything sums to zero; the system accounts saw exactly the outside money.
    total = sum(s["balance"] for s in states) + sum(s["balance"] for s in system.values())
    if total != 0:
        failures.append(f"sum of {CURRENCY} balances, system accounts included, is {total}")
    for shard in range(SHARDS):
        mine = [op for op in effective if shard_of(op.account_id) == shard]
        funded = sum(op.amount for op in mine if op.kind == "credit")
        settled = sum(op.amount for op in mine if op.kind == "debit")
        settled += sum(op.amount for op in mine if op.kind == "capture" and op.counterparty is None)
        if system[(shard, "funding")]["balance"] != -funded:
            failures.append(f"shard {shard}: funding {system[(shard, 'funding')]['balance']} != -{funded}")
        if system[(shard, "settlement")]["balance"] != settled:
            failures.append(f"shard {shard}: settlement {system[(shard, 'settlement')]['balance']} != {settled}")
    return failures


# ---- MariaDB databases -------------------------------------------------------------------


async def drop_databases(url: str, name: str) -> None:
    """Drop every ``<name>_s<N>`` database."""
    conn = await asyncmy.connect(**connect_kwargs(url), connect_timeout=5)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SHOW DATABASES LIKE %s", (name.replace("_", "\\_") + "\\_s%",))
            for (database,) in await cur.fetchall():
                if database.removeprefix(f"{name}_s").isdigit():
                    await cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
    finally:
        await conn.ensure_closed()


# ---- the test ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
async def test_sigkill_under_load_loses_nothing_and_half_applies_nothing(
    backend: str, tmp_path: Path, mariadb_required: Callable[[], Awaitable[str]]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BALANCE_")}
    env.update(BALANCE_ADMIN_KEY=ADMIN_KEY, BALANCE_SHARDS=str(SHARDS), BALANCE_DATA_DIR=str(tmp_path / "data"))
    # Holds checkpoints every 0.2 s: the kill lands after some, so recovery reads the holds
    # table AND replays the journal's hold rows written after the last one.
    env["BALANCE_CHECKPOINT_INTERVAL_S"] = "0.2"
    url = database = None
    if backend == "mariadb":
        url = await mariadb_required()
        database = f"{parse_server(url).database or 'balance_test'}_crash_{uuid.uuid4().hex[:8]}"
        env["BALANCE_DB_URL"] = with_database(url, database)
    seed = int(os.environ.get(SEED_ENV) or random.randrange(2**32))
    print(f"{SEED_ENV}={seed}")  # shown with every failure (captured output)
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    server = Server(env, tmp_path / "server.log")
    try:
        await _sigkill_run(backend, server, rng, tag, seed)
    except BaseException as exc:
        exc.add_note(f"rerun with {SEED_ENV}={seed} ({backend})")
        raise
    finally:
        server.sigkill()
        if url is not None and database is not None:
            await drop_databases(url, database)


async def _sigkill_run(backend: str, server: Server, rng: random.Random, tag: str, seed: int) -> None:
    server.start()
    await wait_ready(server)
    async with client(server.base_url) as http:
        tree, seed_ops = await build_tree(http, tag)

    load = await load_and_kill(server, tree, rng, tag)
    assert not load.errors_before_kill, load.errors_before_kill[:5]
    assert not load.unexpected, load.unexpected[:5]
    # The kill must land mid-traffic, after enough was acknowledged, or the audit proves little.
    assert load.in_flight_at_kill > 0, f"no request was in flight at the kill ({load.answered_at_kill} answered)"
    acknowledged_at_kill = sum(op.acknowledged for op in load.ops)
    assert acknowledged_at_kill >= ACKNOWLEDGED_MIN, (
        f"only {acknowledged_at_kill} operations acknowledged before the kill (at least {ACKNOWLEDGED_MIN})"
    )

    probe = credit_op(tree.partners[0], f"{tag}-probe", 777)
    recovery = await restart_and_observe(server, probe)
    assert not recovery.violations, recovery.violations[:5]
    assert recovery.readyz and recovery.readyz[-1] == 200, (recovery.readyz, server.log_tail())
    first_ready = recovery.readyz.index(200)
    assert set(recovery.readyz[:first_ready]) <= {503} and set(recovery.readyz[first_ready:]) == {200}
    assert probe.status == 201, (recovery.probe_statuses[-5:], server.log_tail())

    acknowledged = [*seed_ops, probe, *(op for op in load.ops if op.acknowledged)]
    unanswered = [op for op in load.ops if not op.acknowledged]
    failures = await replay_acknowledged(server.base_url, acknowledged)
    assert not failures, f"{len(failures)} acknowledged operations lost or changed: {failures[:5]}"
    failures, settled = await settle_unacknowledged(server.base_url, unanswered)
    assert not failures, f"{len(failures)} unanswered operations misbehaved: {failures[:5]}"
    failures = await audit(server.base_url, tree, [*acknowledged, *unanswered])
    assert not failures, f"{len(failures)} audit failures (seed {seed}): {failures[:8]}"
    assert server.alive and "CRITICAL" not in server.log_path.read_text(errors="replace"), server.log_tail()

    kinds = Counter(op.kind for op in load.ops if op.acknowledged)
    refusals = sum(1 for op in load.ops if op.acknowledged and op.status and op.status >= 400)
    print(
        f"\n[{backend}] seed {seed}: kill after {load.kill_after_s:.2f}s; {len(load.ops)} requests sent, "
        f"{len(acknowledged) - len(seed_ops) - 1} acknowledged ({refusals} recorded refusals; {dict(kinds)}), "
        f"{load.in_flight_at_kill} in flight at the kill, {len(unanswered)} unanswered -> {dict(settled)}; "
        f"restart to ready {recovery.seconds:.2f}s, readyz seen {Counter(recovery.readyz)}, "
        f"probe statuses {Counter(recovery.probe_statuses)}"
    )
