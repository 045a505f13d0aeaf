"""`balance-service demo`: a partner tree, a concurrent mix of operations, and the proof.

Runs in-process on the embedded default (SQLite files, two shards): builds two top partners,
each with sub-partners/providers and users, credits them, then runs many concurrent tasks of
holds (captured or released), credits, debits and parent<->child transfers, so the shard writers
form group-commit batches. It prints the balances as a tree, the batch statistics and the
invariant check (every engine's own check, sums per currency zero, reserved equal to the pending
holds, and a recovery from disk that finds exactly the state in memory) as one PASS/FAIL line.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

from balance import views
from balance.bootstrap import build_service
from balance.config import Settings
from balance.domain import commands as c
from balance.domain.model import HOLD_PENDING
from balance.service import BalanceService

SHARDS = 2
CURRENCY = "USD"
REGION = "US"
CONCURRENCY = 256  # tasks sending commands at once: what lets group-commit batches form
TOP_PARTNERS = 2
SUBS_PER_PARTNER = 2
USERS_PER_SUB = 3


@dataclass
class Node:
    id: str
    name: str
    kind: str
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)


@dataclass
class Stats:
    outcomes: Counter[tuple[str, int]] = field(default_factory=Counter)  # (kind, status) -> count
    sent: int = 0

    def note(self, kind: str, status: int) -> None:
        self.outcomes[(kind, status)] += 1


class Fatal:
    """on_fatal for the demo: remember the breach and report FAIL instead of ending the process."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def __call__(self, exc: BaseException) -> None:
        self.errors.append(exc)


def main(args: argparse.Namespace) -> int:
    operations = int(getattr(args, "operations", 5000))
    if operations < 1:
        Console(stderr=True).print("--operations must be at least 1")
        return 2
    data_dir = getattr(args, "data_dir", None)
    if data_dir:
        return asyncio.run(run(Path(data_dir), operations))
    with tempfile.TemporaryDirectory(prefix="balance-demo-") as tmp:
        return asyncio.run(run(Path(tmp), operations))


def settings_for(data_dir: Path) -> Settings:
    return Settings.from_env({"BALANCE_DATA_DIR": str(data_dir), "BALANCE_SHARDS": str(SHARDS)})


async def run(data_dir: Path, operations: int) -> int:
    console = Console(highlight=False)
    if not console.is_terminal:  # piped or captured: room for the tree's columns
        console = Console(highlight=False, width=max(console.width, 100))
    console.print(f"[bold]balance demo[/]: {SHARDS} shards on SQLite files in {data_dir}/, {operations} operations")
    fatal = Fatal()
    service = build_service(settings_for(data_dir), on_fatal=fatal)
    await service.start()
    try:
        roots = await build_tree(service)
        accounts = [node for root in roots for node in walk(root)]
        await fund(service, accounts)
        stats, seconds, batches = await run_mix(service, accounts, operations, console)
        console.print(render_tree(service, roots))
        console.print(render_outcomes(stats))
        ops_per_s = stats.sent / seconds if seconds > 0 else 0.0
        commits, commands = batches
        average = commands / commits if commits else 0.0
        console.print(
            f"[bold]Batches[/]: {stats.sent} operations in {seconds:.2f}s = {ops_per_s:,.0f} operations/s; "
            f"{commits:,.0f} commits, {average:.1f} commands per commit on average"
        )
        problems, facts = check_in_memory(service, accounts)
        snapshot = committed_snapshot(service)
    finally:
        await service.stop()
    problems += fatal_problems(fatal)
    recovery = "not tried (the state in memory is already wrong)"
    if not problems:
        recovery_problems = await check_recovery(data_dir, snapshot)
        recovery = "differs from memory" if recovery_problems else "the same accounts and pending holds as in memory"
        problems += recovery_problems
    console.print("[bold]Invariants[/]")
    for fact in facts:
        console.print(f"  {fact}")
    console.print(f"  recovery from the shard files: {recovery}")
    if problems:
        console.print("[bold red]Invariant check: FAIL[/]")
        for problem in problems[:20]:
            console.print(f"  - {problem}")
        return 1
    console.print("[bold green]Invariant check: PASS[/]")
    return 0


# ---- the tree ----------------------------------------------------------------------------


async def create(service: BalanceService, parent: Node | None, kind: str, name: str) -> Node:
    command = c.CreateAccount(
        "", None if parent is None else parent.id, kind, REGION, CURRENCY, name, 0, b'{"demo":true}'
    )
    reply = await service.create_account(command)
    if reply.status != 201:
        raise RuntimeError(f"creating {name}: {reply.status} {reply.body.decode(errors='replace')}")
    node = Node(msgspec.json.decode(reply.body)["id"], name, kind, parent)
    if parent is not None:
        parent.children.append(node)
    return node


async def build_tree(service: BalanceService) -> list[Node]:
    """Top partners (placed on different shards), each with a sub-partner and a provider, with users."""
    roots = []
    for p in range(TOP_PARTNERS):
        letter = chr(ord("A") + p)
        top = await create(service, None, "partner", f"Partner {letter}")
        roots.append(top)
        for s in range(SUBS_PER_PARTNER):
            kind = "partner" if s % 2 == 0 else "provider"
            title = "Sub-partner" if kind == "partner" else "Provider"
            sub = await create(service, top, kind, f"{title} {letter}{s + 1}")
            for u in range(USERS_PER_SUB):
                await create(service, sub, "user", f"User {letter}{s + 1}.{u + 1}")
    return roots


def walk(node: Node) -> list[Node]:
    out = [node]
    for child in node.children:
        out += walk(child)
    return out


async def fund(service: BalanceService, accounts: list[Node]) -> None:
    amounts = {"partner": 5_000_000, "provider": 2_000_000, "user": 500_000}
    commands = [c.Credit(node.id, f"seed-{node.id}", amounts[node.kind]) for node in accounts]
    replies = await service.run_many(commands)
    for node, reply in zip(accounts, replies, strict=True):
        if reply.status != 201:
            raise RuntimeError(f"funding {node.name}: {reply.status} {reply.body.decode(errors='replace')}")


# ---- the mix -----------------------------------------------------------------------------


def batch_totals(service: BalanceService) -> tuple[float, float]:
    """(commits, commands) summed over the shards, from the batch-size histogram."""
    commits = commands = 0.0
    for engine in service.engines:
        registry = engine.metrics.registry
        labels = {"shard": str(engine.shard)}
        commits += registry.get_sample_value("balance_batch_commands_count", labels) or 0.0
        commands += registry.get_sample_value("balance_batch_commands_sum", labels) or 0.0
    return commits, commands


async def run_mix(
    service: BalanceService, accounts: list[Node], operations: int, console: Console
) -> tuple[Stats, float, tuple[float, float]]:
    stats = Stats()
    rng = random.Random(20_240_601)
    remaining = operations
    with_parent = [node for node in accounts if node.parent is not None]
    users = [node for node in accounts if node.kind == "user"]
    before = batch_totals(service)
    progress = Progress(
        TextColumn("[bold]operations"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )  # fmt: skip
    task = progress.add_task("mix", total=operations)

    def take() -> bool:
        nonlocal remaining
        if remaining <= 0:
            return False
        remaining -= 1
        stats.sent += 1
        return True

    async def send(kind: str, command: c.Command) -> int:
        reply = await service.execute(command)
        stats.note(kind, reply.status)
        progress.advance(task)
        return reply.status

    async def worker(n: int) -> None:
        wrng = random.Random(rng.getrandbits(64))
        i = 0
        while take():
            i += 1
            op_id = f"demo-{n}-{i}"
            roll = wrng.random()
            if roll < 0.40:  # a payment: hold on a user, then capture (to the parent) or release
                user = wrng.choice(users)
                to_parent = wrng.random() < 0.7
                destination = user.parent.id if to_parent and user.parent is not None else None
                hold = c.PlaceHold(user.id, op_id, wrng.randint(100, 20_000), 900, destination)
                if await send("hold", hold) != 201 or wrng.random() < 0.03 or not take():
                    continue  # refused, left pending on purpose, or no operation left
                if wrng.random() < 0.75:
                    amount = None if wrng.random() < 0.6 else wrng.randint(1, hold.amount)
                    await send("capture", c.CaptureHold(user.id, op_id, amount))
                else:
                    await send("release", c.ReleaseHold(user.id, op_id))
            elif roll < 0.75:  # parent <-> child
                child = wrng.choice(with_parent)
                assert child.parent is not None
                source, target = (child, child.parent) if wrng.random() < 0.5 else (child.parent, child)
                amount = wrng.randint(100, 50_000)
                await send("transfer", c.Transfer(op_id, source.id, target.id, amount, CURRENCY))
            elif roll < 0.88:
                await send("credit", c.Credit(wrng.choice(accounts).id, op_id, wrng.randint(100, 30_000)))
            else:
                await send("debit", c.Debit(wrng.choice(accounts).id, op_id, wrng.randint(100, 40_000)))

    started = time.perf_counter()
    with progress:
        await asyncio.gather(*(worker(n) for n in range(min(CONCURRENCY, operations))))
    seconds = time.perf_counter() - started
    after = batch_totals(service)
    return stats, seconds, (after[0] - before[0], after[1] - before[1])


# ---- output ------------------------------------------------------------------------------


NAME_END = 30  # the column where names end, whatever the depth (rich indents 4 per level)


def columns(name: str, depth: int, kind: str, balance: str, reserved: str, available: str) -> str:
    width = NAME_END - 4 * depth
    return f"{escape(name[:width]):<{width}} {kind:<10} {balance:>12} {reserved:>10} {available:>12}"


def render_tree(service: BalanceService, roots: list[Node]) -> Tree:
    tree = Tree(
        "[bold]" + columns(f"Balances ({CURRENCY}, minor units)", 0, "kind", "balance", "reserved", "available") + "[/]"
    )

    def add(branch: Tree, node: Node, depth: int) -> None:
        state = service.account_state(node.id)
        assert state is not None
        view = views.account_view(state)
        label = columns(
            node.name, depth, node.kind, f"{view['balance']:,}", f"{view['reserved']:,}", f"{view['available']:,}"
        )
        sub = branch.add(label)
        for child in node.children:
            add(sub, child, depth + 1)

    for root in roots:
        add(tree, root, 1)
    system = tree.add("[dim]system accounts (money from and to the outside world)[/]")
    for engine in service.engines:
        for account in sorted(engine.ledger.accounts.values(), key=lambda a: a.id):
            if account.is_system:
                system.add(columns(account.id, 2, account.kind, f"{account.balance:,}", "", ""))
    return tree


def render_outcomes(stats: Stats) -> Table:
    table = Table(title="Outcomes of the mix")
    table.add_column("operation")
    table.add_column("status")
    table.add_column("count", justify="right")
    for (kind, status), count in sorted(stats.outcomes.items()):
        table.add_row(kind, str(status), f"{count:,}")
    return table


# ---- the proof ---------------------------------------------------------------------------


def check_in_memory(service: BalanceService, accounts: list[Node]) -> tuple[list[str], list[str]]:
    """(problems, facts): the ledgers' own checks and the demo's, over every shard."""
    problems: list[str] = []
    totals: Counter[str] = Counter()
    pending_holds = reserved_total = 0
    for engine in service.engines:
        try:
            engine.ledger.check_invariants()
        except Exception as exc:  # the ledger's own full check
            problems.append(f"shard {engine.shard}: {exc}")
        if not engine.ready:
            problems.append(f"shard {engine.shard} is {engine.state}")
        pending: Counter[str] = Counter()
        for hold in engine.ledger.holds.values():
            if hold.status == HOLD_PENDING:
                pending[hold.account_id] += hold.amount
                pending_holds += 1
        for account in engine.ledger.accounts.values():
            reserved_total += account.reserved
            totals[account.currency] += account.balance
            if account.reserved != pending[account.id]:
                problems.append(f"{account.id}: reserved {account.reserved} != pending holds {pending[account.id]}")
            if not account.is_system and account.available < 0:
                problems.append(f"{account.id}: negative available {account.available}")
    for currency, total in totals.items():
        if total != 0:
            problems.append(f"sum of {currency} balances over all shards is {total}, not 0")
    missing = [node.name for node in accounts if service.account_state(node.id) is None]
    if missing:
        problems.append(f"accounts the demo created are missing: {missing}")
    shards = ", ".join(str(engine.shard) for engine in service.engines)
    sums = ", ".join(f"{currency} {total:,}" for currency, total in sorted(totals.items()))
    facts = [
        f"ledger.check_invariants() on shards {shards}: {'failed' if problems else 'ok'}",
        f"sum of all balances per currency, system accounts included: {sums}",
        f"reserved on all accounts {reserved_total:,} = sum of {pending_holds} pending holds "
        f"{sum(h.amount for e in service.engines for h in e.ledger.holds.values() if h.status == HOLD_PENDING):,}",
    ]
    return problems, facts


def fatal_problems(fatal: Fatal) -> list[str]:
    return [f"a shard stopped on a broken invariant: {exc!r}" for exc in fatal.errors]


def committed_snapshot(service: BalanceService) -> dict[str, Any]:
    """Every account's state and every pending hold, as in memory (all committed: nothing queued)."""
    accounts = {a.id: a.state() for e in service.engines for a in e.ledger.accounts.values()}
    holds = {
        (h.account_id, h.id): h.state()
        for e in service.engines
        for h in e.ledger.holds.values()
        if h.status == HOLD_PENDING
    }
    return {"accounts": accounts, "holds": holds}


async def check_recovery(data_dir: Path, snapshot: dict[str, Any]) -> list[str]:
    """Recover a fresh service from the files (which checks invariants) and compare with memory."""
    fatal = Fatal()
    service = build_service(settings_for(data_dir), on_fatal=fatal)
    try:
        await service.start()
    except Exception as exc:
        return [f"recovery from disk failed: {exc!r}"]
    try:
        recovered = committed_snapshot(service)
    finally:
        await service.stop()
    problems = fatal_problems(fatal)
    for what in ("accounts", "holds"):
        if recovered[what] != snapshot[what]:
            differ = {
                k
                for k in recovered[what].keys() | snapshot[what].keys()
                if recovered[what].get(k) != snapshot[what].get(k)
            }
            problems.append(f"recovered {what} differ from memory: {sorted(differ)[:5]}")
    return problems
