"""The event relay's lag under an open-loop single-operation load, and its cost, in one run.

    .venv/bin/python tools/events_lag.py sqlite 9000 [seconds] [--no-queue] [--consume]

Starts ``balance-service run`` with ``BALANCE_AMQP_URL`` (the relay in its child process),
binds a durable queue to ``balance.events`` (capped at 100,000 messages; ``--no-queue`` leaves
the exchange without one), drives gateway-like single holds and settlements at the given rate
(``bench/tail.py``'s open loop) and samples the relay's ``balance_events_lag_seconds`` (age
of the oldest event not yet published) every 100 ms. Prints the lag's p50/p99/max while the
load runs, how long the relay took to catch up after it, and the CPU seconds of the service,
the relay and RabbitMQ. ``--consume``: a consumer process of its own (this file with
``--consumer``), on a transient queue bound to every event, also measures each event's own lag
(received minus ``occurred_at``) for the events that occurred during the load: thousands of
samples where the gauge's sampler, on a loaded machine, gets a few dozen.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import aio_pika
import httpx

from balance.bench import ours, tail


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pid_of(name: str) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if open(f"/proc/{entry}/comm").read().strip() == name:
                    return int(entry)
            except OSError:
                continue
    return None


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
            except (OSError, ValueError):
                continue
    return found


async def _lag(metrics_url: str) -> float | None:
    try:
        async with httpx.AsyncClient(timeout=1) as client:
            text = (await client.get(metrics_url)).text
    except httpx.HTTPError:
        return None
    values = [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("balance_events_lag_seconds{")
    ]
    return max(values) if values else None


def _occurred(body: bytes) -> float:
    """An envelope's ``occurred_at`` as seconds since the epoch (read without parsing the rest)."""
    at = body.index(b'"occurred_at":"') + 15
    text = body[at : body.index(b'"', at)].decode()
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def main(backend: str, rate: float, seconds: float, queue: bool, consume: bool = False) -> None:
    amqp = os.environ.get("BALANCE_AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/"
    connection = await aio_pika.connect(amqp)
    channel = await connection.channel()
    exchange = await channel.declare_exchange("balance.events", aio_pika.ExchangeType.TOPIC, durable=True)
    bound = None
    if queue:
        bound = await channel.declare_queue("bench.events", durable=True, arguments={"x-max-length": 100_000})
        await bound.bind(exchange, "#")
    event_lags: list[float] = []
    window = [0.0, 0.0]
    consumer = None
    lags_file = Path(tempfile.mkdtemp()) / "lags.txt"
    if consume:
        consumer = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--consumer", str(lags_file), stdout=asyncio.subprocess.PIPE
        )
        assert consumer.stdout is not None
        await consumer.stdout.readline()  # "ready": its queue is bound
    metrics_port = ours._free_port()
    env = {"BALANCE_AMQP_URL": amqp, "BALANCE_RELAY_METRICS_PORT": str(metrics_port), "BALANCE_RESULTS": "off"}
    with tempfile.TemporaryDirectory() as work:
        async with ours.scratch_storage(backend, Path(work)) as (_, storage_env):
            with ours.server_process({**storage_env, **env}, Path(work) / "server.log") as (url, pid):
                payers, merchants = await tail._setup(url, "gateway")
                relay = _children(pid)
                rabbit = _pid_of("beam.smp")
                metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
                samples: list[float] = []
                stop = asyncio.Event()

                async def sample() -> None:
                    while not stop.is_set():
                        value = await _lag(metrics_url)
                        if value is not None:
                            samples.append(value)
                        await asyncio.sleep(0.1)

                cpu0 = (_cpu(pid), sum(_cpu(p) for p in relay), _cpu(rabbit) if rabbit else 0.0)
                sampler = asyncio.create_task(sample())
                window[0] = time.time()
                gen, ran_s, _ = await tail._drive(url, "gateway", "single", 1, rate, seconds, payers, merchants)
                window[1] = time.time()
                stop.set()
                await sampler
                began = time.monotonic()
                while (await _lag(metrics_url) or 0) > 0 and time.monotonic() - began < 120:
                    await asyncio.sleep(0.1)
                caught_up_s = time.monotonic() - began
                cpu1 = (_cpu(pid), sum(_cpu(p) for p in relay), _cpu(rabbit) if rabbit else 0.0)
                gen.close()
    if consumer is not None:
        consumer.terminate()
        await consumer.wait()
        for line in lags_file.read_text().splitlines():
            occurred, received = (float(v) for v in line.split())
            if window[0] <= occurred <= window[1]:
                event_lags.append(received - occurred)
    if bound is not None:
        await bound.delete(if_unused=False, if_empty=False)
    await connection.close()
    samples.sort()
    p = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] if samples else float("nan")  # noqa: E731
    cpu = [(b - a) / ran_s for a, b in zip(cpu0, cpu1, strict=True)]
    print(
        f"{backend} {rate:,.0f} ops/s for {ran_s:.0f}s ({'durable queue bound' if queue else 'exchange only'}):"
        f" relay lag p50 {p(0.5) * 1000:.0f} ms, p99 {p(0.99) * 1000:.0f} ms, max {p(1.0) * 1000:.0f} ms"
        f" ({len(samples)} samples); caught up {caught_up_s:.1f}s after the load;"
        f" CPU (cores) service {cpu[0]:.2f}, relay {cpu[1]:.2f}, rabbitmq {cpu[2]:.2f}"
    )
    if consume:
        event_lags.sort()
        q = lambda f: event_lags[min(len(event_lags) - 1, int(f * len(event_lags)))] * 1000  # noqa: E731
        print(
            f"each event, occurred_at to a consumer: p50 {q(0.5):.0f} ms, p99 {q(0.99):.0f} ms, max {q(1.0):.0f} ms"
            f" ({len(event_lags):,} events that occurred during the load)"
            if event_lags
            else "no event received"
        )


async def consumer_process(out: str) -> None:
    """``--consumer OUT``: every event's (occurred_at, received) into OUT, until SIGTERM."""
    import signal

    amqp = os.environ.get("BALANCE_AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/"
    connection = await aio_pika.connect(amqp)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=2000)
    exchange = await channel.declare_exchange("balance.events", aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, "#")
    seen: list[tuple[float, float]] = []

    async def received(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        seen.append((_occurred(message.body), time.time()))

    await queue.consume(received, no_ack=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    Path(out).write_text("".join(f"{o} {r}\n" for o, r in seen))
    await connection.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--consumer"]:
        asyncio.run(consumer_process(sys.argv[2]))
        raise SystemExit(0)
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) not in (2, 3):
        raise SystemExit(__doc__)
    asyncio.run(
        main(args[0], float(args[1]), float(args[2]) if len(args) == 3 else 10.0, "--no-queue" not in sys.argv,
             "--consume" in sys.argv)
    )  # fmt: skip
