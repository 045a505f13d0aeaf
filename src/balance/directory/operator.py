"""``balance-service shards list|add|assign``, ``nodes list``, ``partners where``: the
operator's view of the directory, as aligned tables (database URLs shown without credentials)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from balance.directory.records import DirectoryError, ShardDirectory, ShardRecord
from balance.shards import shard_in_id
from balance.storage.mariadb_url import is_mariadb_url, parse_server, redacted

REGIONS = ("US", "EU", "ASIA")


def open_directory(url: str | None, data_dir: Path) -> ShardDirectory:
    """``BALANCE_DIRECTORY_URL`` (mysql://...), or the SQLite file in the data directory."""
    if url is None:
        from balance.directory.sqlite import FILE_NAME, SqliteDirectory

        return SqliteDirectory(data_dir / FILE_NAME)
    if is_mariadb_url(url):
        from balance.directory.mariadb import MariaDbDirectory

        return MariaDbDirectory(url)
    raise ValueError(f"unsupported BALANCE_DIRECTORY_URL scheme: {url.split(':', 1)[0]}")


def table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell; ``(none)`` under the headers when there are no rows."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines if rows else [*lines, "(none)"])


def _age(now_ms: int, at_ms: int) -> str:
    seconds = (now_ms - at_ms) / 1000
    return f"{seconds:.1f}s ago" if seconds >= 0 else f"in {-seconds:.1f}s"


async def shards_list(directory: ShardDirectory, _: argparse.Namespace) -> str:
    now = int(time.time() * 1000)
    owners = {o.shard_id: o for o in await directory.ownerships()}
    rows = []
    for shard in await directory.shards():
        owner = owners.get(shard.id)
        lease = "-"
        if owner is not None:
            live = owner.lease_expires_at_ms >= now
            lease = ("live, ends " if live else "expired ") + _age(now, owner.lease_expires_at_ms)
        rows.append((
            str(shard.id), shard.region, redacted(shard.database_url), shard.node_id or "-",
            shard.standby_node_id or "-", owner.node_id if owner else "-", str(owner.epoch) if owner else "-", lease,
        ))  # fmt: skip
    return table(("SHARD", "REGION", "DATABASE", "ASSIGNED", "STANDBY", "OWNER", "EPOCH", "LEASE"), rows)


async def shards_add(directory: ShardDirectory, args: argparse.Namespace) -> str:
    if args.shard < 0:
        raise DirectoryError("a shard id is 0 or more")
    if is_mariadb_url(args.database):
        parse_server(args.database)  # the one parser: a bad URL is refused here, not at a node's start
    elif "://" in args.database:
        raise DirectoryError("--database: a mysql:// URL or a SQLite file path")
    await directory.add_shard(ShardRecord(args.shard, args.region, args.database, args.node, args.standby))
    return f"shard {args.shard} added ({args.region}, {redacted(args.database)})"


async def shards_assign(directory: ShardDirectory, args: argparse.Namespace) -> str:
    if args.standby == args.node:
        raise DirectoryError("the standby must be another node")
    await directory.assign(args.shard, args.node, args.standby)
    standby = f", standby {args.standby}" if args.standby else ""
    return f"shard {args.shard} assigned to {args.node}{standby} (taken when the current lease ends)"


async def nodes_list(directory: ShardDirectory, _: argparse.Namespace) -> str:
    now = int(time.time() * 1000)
    owned: dict[str, list[str]] = {}
    for o in await directory.ownerships():
        if o.lease_expires_at_ms >= now:
            owned.setdefault(o.node_id, []).append(str(o.shard_id))
    rows = [
        (node.id, node.url, node.region, _age(now, node.heartbeat_at_ms), ",".join(owned.get(node.id, [])) or "-")
        for node in await directory.nodes()
    ]
    return table(("NODE", "URL", "REGION", "LAST HEARTBEAT", "SHARDS OWNED"), rows)


async def partners_where(directory: ShardDirectory, args: argparse.Namespace) -> str:
    account_id = args.account_id
    override = await directory.placement_of(account_id)
    shard_id = override if override is not None else shard_in_id(account_id)
    if shard_id is None:
        raise DirectoryError(f"{account_id!r} is not an account id of this service (REGION-SHARD-...)")
    how = "moved there (directory override)" if override is not None else "the shard its id names"
    shards = {s.id: s for s in await directory.shards()}
    shard = shards.get(shard_id)
    if shard is None:
        return f"{account_id}: shard {shard_id} ({how}), which the directory does not list"
    owners = {o.shard_id: o for o in await directory.ownerships()}
    nodes = {n.id: n for n in await directory.nodes()}
    owner = owners.get(shard_id)
    node = nodes.get(owner.node_id) if owner else None
    row = (
        account_id, str(shard_id), shard.region, redacted(shard.database_url),
        owner.node_id if owner else "-", node.url if node else "-", how,
    )  # fmt: skip
    return table(("ACCOUNT", "SHARD", "REGION", "DATABASE", "OWNER", "OWNER URL", "WHY"), [row])


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], run: Callable[[argparse.Namespace], int]
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The operator sub-commands of ``balance-service`` (the ``partners`` group is returned: the
    command line adds ``move`` to it)."""
    shards = commands.add_parser("shards", help="the shards in the directory").add_subparsers(
        dest="action", required=True
    )
    shards.add_parser("list", help="every shard: region, database, assigned node, owner, lease").set_defaults(
        fn=run, action_fn=shards_list
    )
    add = shards.add_parser("add", help="record a shard and its database")
    add.add_argument("shard", type=int)
    add.add_argument("--region", choices=REGIONS, default="US")
    add.add_argument("--database", required=True, help="mysql://user:password@host:port/name or a SQLite file")
    add.add_argument("--node", default=None, help="the node that should own it")
    add.add_argument("--standby", default=None, help="the node that takes it over when the owner's lease ends")
    add.set_defaults(fn=run, action_fn=shards_add)
    assign = shards.add_parser("assign", help="place a shard on a node (and a standby)")
    assign.add_argument("shard", type=int)
    assign.add_argument("node")
    assign.add_argument("--standby", default=None)
    assign.set_defaults(fn=run, action_fn=shards_assign)
    nodes = commands.add_parser("nodes", help="the nodes in the directory").add_subparsers(dest="action", required=True)
    nodes.add_parser("list", help="every node: URL, region, last heartbeat, shards owned").set_defaults(
        fn=run, action_fn=nodes_list
    )
    partners: argparse._SubParsersAction[argparse.ArgumentParser] = commands.add_parser(
        "partners", help="where partners live, and moving them"
    ).add_subparsers(dest="action", required=True)
    where = partners.add_parser("where", help="the shard and node of an account")
    where.add_argument("account_id")
    where.set_defaults(fn=run, action_fn=partners_where)
    return partners


def run_action(
    action: Callable[[ShardDirectory, argparse.Namespace], Awaitable[str]],
    args: argparse.Namespace,
    url: str | None,
    data_dir: Path,
) -> int:
    async def go() -> str:
        directory = open_directory(url, data_dir)
        await directory.open()
        try:
            return await action(directory, args)
        finally:
            await directory.close()

    try:
        print(asyncio.run(go()), flush=True)
    except (DirectoryError, ValueError) as exc:
        print(f"balance-service: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
