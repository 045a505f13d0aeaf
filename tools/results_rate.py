"""Payment results consumed per second: N results for pending holds are published to the real
broker first, then the service's consumer (``balance.results``) is started and timed until every
one is committed and acknowledged. One process: the engines (SQLite files in a temporary
directory, or MariaDB with BALANCE_DB_URL) and the consumer, as in `balance-service run`.

.venv/bin/python tools/results_rate.py [--broker amqp|nats] [--results 20000] [--shards 1] [--prefetch 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

from balance.bootstrap import build_service
from balance.config import Settings
from balance.domain import commands as c
from balance.metrics import Metrics
from balance.results.config import ResultsConfig
from balance.results.runner import ResultsConsumers

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
NATS_URL = "nats://127.0.0.1:4222"
ACCOUNTS = 200


async def publish(config: ResultsConfig, bodies: list[bytes]) -> None:
    if config.amqp_url:
        import aio_pika

        from balance.results.amqp import declare

        connection = await aio_pika.connect(config.amqp_url)
        channel = await connection.channel(publisher_confirms=True)
        await declare(channel, config)
        for start in range(0, len(bodies), 1000):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(aio_pika.Message(body, delivery_mode=2), config.queue)
                    for body in bodies[start : start + 1000]
                )
            )
        await connection.close()
    else:
        import nats

        from balance.results.nats import declare as declare_streams

        nc = await nats.connect(config.nats_url)
        js = nc.jetstream()
        await declare_streams(js, config)
        for start in range(0, len(bodies), 1000):
            acks = [await js.publish_async(config.subject, body) for body in bodies[start : start + 1000]]
            await asyncio.gather(*acks)
        await nc.close()


async def cleanup(config: ResultsConfig) -> None:
    if config.amqp_url:
        import aio_pika

        connection = await aio_pika.connect(config.amqp_url)
        channel = await connection.channel()
        for queue in (config.queue, config.dead_letters):
            await channel.queue_delete(queue)
        await channel.exchange_delete(config.dead_letters)
        await connection.close()
    else:
        import nats

        nc = await nats.connect(config.nats_url)
        js = nc.jetstream()
        for stream in (config.nats_stream, config.dead_letters_stream):
            await js.delete_stream(stream)
        await nc.close()


async def run(broker: str, results: int, shards: int, prefetch: int, data_dir: Path) -> None:
    settings = Settings.from_env({"BALANCE_ADMIN_KEY": "admin", "BALANCE_DATA_DIR": str(data_dir),
                                  "BALANCE_SHARDS": str(shards)})  # fmt: skip
    metrics = Metrics()
    service = build_service(settings, metrics=metrics)
    await service.start()
    accounts = []
    for n in range(ACCOUNTS):
        reply = await service.create_account(c.CreateAccount("", None, "user", "EU", "EUR", f"a{n}", 0, b"{}"))
        account_id = json.loads(reply.body)["id"]
        assert (await service.execute(c.Credit(account_id, "seed", 10**12))).status == 201
        accounts.append(account_id)
    holds = [(accounts[n % ACCOUNTS], f"h{n}") for n in range(results)]
    replies = await service.run_many([c.PlaceHold(a, h, 100, 3600) for a, h in holds])
    assert all(reply.status == 201 for reply in replies)
    tag = uuid.uuid4().hex[:8]
    config = ResultsConfig(
        amqp_url=AMQP_URL if broker == "amqp" else None, nats_url=NATS_URL if broker == "nats" else None,
        queue=f"rate.payment-results.{tag}", subject=f"rate.payment-results.{tag}", nats_stream=f"RATE_{tag}",
        nats_durable=f"rate-{tag}", dead_letters=f"rate.dead-letters.{tag}", dead_letters_stream=f"RATE_DEAD_{tag}", prefetch=prefetch,
    )  # fmt: skip
    bodies = [
        json.dumps(
            {"id": f"p{n}", "account_id": a, "hold_id": h, "result": "succeeded" if n % 4 else "failed"}
        ).encode()
        for n, (a, h) in enumerate(holds)
    ]
    began = time.perf_counter()
    await publish(config, bodies)
    print(f"{broker}: published {results} results in {time.perf_counter() - began:.2f}s")
    consumers = ResultsConsumers(config, service, metrics)
    began, cpu = time.perf_counter(), time.process_time()
    consumers.start()
    try:
        while True:
            done = sum(
                s.value
                for metric in metrics.registry.collect()
                if metric.name == "balance_payment_results_applied"
                for s in metric.samples
                if s.name.endswith("_total")
            )
            if done >= results:
                break
            await asyncio.sleep(0.01)
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
        print(f"{broker}: {results} results applied and acknowledged in {elapsed:.2f}s: {results / elapsed:,.0f}/s"
              f" ({shards} shard(s), SQLite, prefetch {config.prefetch}; this process used {cpu:.2f} s of CPU,"
              f" {cpu / results * 1e6:.0f} us per result)")  # fmt: skip
    finally:
        await consumers.stop()
        await cleanup(config)
        await service.stop()
    for account_id in accounts[:3]:
        found = service.account_state(account_id)
        assert found is not None and found[8] == 0, found  # nothing left reserved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", choices=("amqp", "nats"), default="amqp")
    parser.add_argument("--results", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--prefetch", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        asyncio.run(run(args.broker, args.results, args.shards, args.prefetch, Path(data_dir)))


if __name__ == "__main__":
    main()
