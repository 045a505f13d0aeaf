"""`balance-service run | relay | expiry-job | demo | bench`: the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balance.config import Settings


def _settings() -> Settings | None:
    """The settings from the environment, or None once a bad value is said in one line."""
    from balance.config import Settings

    try:
        return Settings.from_env()
    except ValueError as exc:
        print(f"balance-service: {exc}", file=sys.stderr, flush=True)
        return None


def run(_: argparse.Namespace) -> int:
    settings = _settings()
    if settings is None:
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.admin_key_generated:
        from balance.keys import ADMIN_KEY_FILE, admin_key_hash

        _hash, new_key = admin_key_hash(settings.admin_key, True, settings.data_dir)
        if new_key is not None:  # printed once: only its hash is kept (in the data directory)
            print(f"BALANCE_ADMIN_KEY was not set; the admin key (shown once) is:\n  {new_key}\n", flush=True)
        else:
            print(
                f"admin key: the one printed at first start (hash in {settings.data_dir / ADMIN_KEY_FILE})", flush=True
            )
    from balance.storage.mariadb_url import redacted

    storage = redacted(settings.db_url) if settings.db_url else f"SQLite files in {settings.data_dir}/"
    if settings.node_id is not None:
        where = redacted(settings.directory_url) if settings.directory_url else f"{settings.data_dir}/directory.db"
        print(f"balance node {settings.node_id}: the shards the directory ({where}) assigns to it,"
              f" http://{settings.host}:{settings.port}", flush=True)  # fmt: skip
    else:
        print(
            f"balance service: {settings.shards} shard(s) on {storage}, http://{settings.host}:{settings.port}",
            flush=True,
        )
    from balance.server import StartError
    from balance.server import run as serve

    try:
        serve(settings)
    except StartError as exc:
        print(f"balance-service: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def relay(_: argparse.Namespace) -> int:
    from balance.relay.command import main as relay_main

    return relay_main()


def expiry_job(args: argparse.Namespace) -> int:
    from balance.expiry.job import main as job_main

    return job_main(args.shard)


def demo(args: argparse.Namespace) -> int:
    from balance.demo import main as demo_main

    return demo_main(args)


def bench(args: argparse.Namespace) -> int:
    from balance.bench.command import main as bench_main

    return bench_main(args)


def _directory_file(settings: Settings) -> bool:
    from balance.directory.sqlite import FILE_NAME

    return (settings.data_dir / FILE_NAME).exists()


def directory_action(args: argparse.Namespace) -> int:
    """An operator command on the shard directory (``BALANCE_DIRECTORY_URL`` or the data directory's).
    ``partners where`` without a directory (no URL, no directory file in the data directory)
    asks the running service: a single process knows its moved partners itself."""
    from balance.directory.operator import partners_where, run_action

    settings = _settings()
    if settings is None:
        return 1
    if args.action_fn is partners_where and settings.directory_url is None and not _directory_file(settings):
        args.partners_command = "where"
        return partners(args)
    return run_action(args.action_fn, args, settings.directory_url, settings.data_dir)


def partners(args: argparse.Namespace) -> int:
    """``partners move`` / ``partners where``: the HTTP API of a running service (BALANCE_URL,
    default http://BALANCE_HOST:BALANCE_PORT; the admin key from BALANCE_ADMIN_KEY)."""
    import json
    import os

    import httpx

    base = os.environ.get("BALANCE_URL") or (
        f"http://{os.environ.get('BALANCE_HOST', '127.0.0.1')}:{os.environ.get('BALANCE_PORT', '8080')}"
    )
    key = os.environ.get("BALANCE_ADMIN_KEY", "")
    if not key:
        print("balance-service: BALANCE_ADMIN_KEY is needed", file=sys.stderr)
        return 1
    headers = {"Authorization": f"Bearer {key}"}
    try:
        if args.partners_command == "move":
            reply = httpx.post(
                f"{base}/v1/partners/{args.account_id}/move", json={"to_shard": args.to_shard}, headers=headers,
                timeout=args.timeout,
            )  # fmt: skip
        else:
            reply = httpx.get(f"{base}/v1/partners/{args.account_id}/placement", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        print(f"balance-service: {base}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(reply.json(), indent=2))
    return 0 if reply.status_code == 200 and reply.json().get("status", "done") == "done" else 1


def fleet(_: argparse.Namespace) -> int:
    from balance.node.local_fleet import main as fleet_main

    return fleet_main()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="balance-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="serve the HTTP API (configured by BALANCE_* variables)").set_defaults(fn=run)
    commands.add_parser(
        "relay", help="publish the shards' events to RabbitMQ and/or NATS (BALANCE_AMQP_URL, BALANCE_NATS_URL)"
    ).set_defaults(fn=relay)
    job_parser = commands.add_parser(
        "expiry-job", help="announce the holds past their expiry (hold.expiry-due notices); writes nothing"
    )
    job_parser.add_argument("--shard", type=int, default=None, help="this shard only (default: every shard)")
    job_parser.set_defaults(fn=expiry_job)
    demo_parser = commands.add_parser("demo", help="build a partner tree, run a mix of operations, show the result")
    demo_parser.add_argument("--operations", type=int, default=5000)
    demo_parser.add_argument("--data-dir", default=None, help="default: a fresh temporary directory")
    demo_parser.set_defaults(fn=demo)
    bench_parser = commands.add_parser("bench", help="measure throughput and latency against baselines")
    bench_parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    bench_parser.add_argument("--json", dest="json_path", default=None, help="also write the figures to this file")
    bench_parser.add_argument("--backend", choices=["sqlite", "mariadb", "both"], default="both")
    bench_parser.add_argument(
        "--scenario",
        default="all",
        help="hot | uniform | mix | recovery | all | pending | pending-hot | pending-10k | gateway | tail | million"
        " | expiry",
    )
    bench_parser.add_argument("--clients", type=int, default=64)
    # Tail latency (issue 18): --scenario pending (pending-hot, pending-10k) | gateway | tail (all three)
    # | million | expiry.
    bench_parser.add_argument("--chart", default=None, help="write a latency-over-time PNG per row into this directory")
    bench_parser.add_argument(
        "--before-python", default=None, help="run each row on this Python's code too (before/after)"
    )
    bench_parser.add_argument("--rates", default="0.5,0.9", help="open-loop rates, as fractions of the maximum")
    bench_parser.add_argument(
        "--max-rate", type=float, default=None, help="the maximum (ops/s) instead of measuring it"
    )
    bench_parser.add_argument("--modes", default="single,batch100", help="single and/or batchN")
    bench_parser.add_argument("--duration", type=float, default=None, help="seconds per row")
    bench_parser.add_argument("--accounts", type=int, default=100_000, help="million: accounts")
    bench_parser.add_argument("--holds", type=int, default=1_000_000, help="million: pending holds (expiry: the burst)")
    bench_parser.add_argument(
        "--private-mariadb",
        default=None,
        metavar="CNF",
        help="MariaDB rows on a private mariadbd started with this my.cnf (deploy/mariadb/balance.cnf)",
    )
    bench_parser.set_defaults(fn=bench)
    commands.add_parser("fleet", help="a local fleet: three nodes, six shards on MariaDB (docs/fleet.md)").set_defaults(
        fn=fleet
    )
    from balance.directory.operator import add_commands

    partner_commands = add_commands(commands, directory_action)
    move_parser = partner_commands.add_parser(
        "move", help="move a top-level partner with its subtree to another shard (a running service; docs/moves.md)"
    )
    move_parser.add_argument("account_id")
    move_parser.add_argument("--to-shard", type=int, required=True)
    move_parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the answer")
    move_parser.set_defaults(fn=partners, partners_command="move")
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
