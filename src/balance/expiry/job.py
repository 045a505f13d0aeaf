"""`balance-service expiry-job`: per shard, the pending holds past their expiry, announced.

Each scan (every ``BALANCE_EXPIRY_SCAN_S``) reads the shard's committed state in one snapshot,
a page at a time (``reader.scan``), and publishes a ``hold.expiry-due`` notice for each due
hold not announced within the last ``BALANCE_EXPIRY_RESEND_S`` (a hold still pending after
that is announced again: its notice was lost, or the engine was away). It writes nothing and
takes no locks: the engine expires the holds (``consumer``). Its lag, the age of the oldest
overdue pending hold, is ``balance_expiry_lag_seconds{shard}``: a lag that grows says the
engine is not keeping up or not consuming."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from balance.config import Settings
from balance.engine.recovery import Backoff
from balance.expiry.brokers import NoticeBroker, NoticeError, brokers
from balance.expiry.config import ExpiryConfig
from balance.expiry.notices import Due, encode, notice_id
from balance.expiry.reader import MariaDbReader, Reader, SqliteReader, scan
from balance.metrics import Metrics
from balance.storage.base import StorageError

log = logging.getLogger("balance.expiry")


class ShardExpiryJob:
    def __init__(
        self, shard: int, region: str, reader: Reader, sinks: list[NoticeBroker], metrics: Metrics,
        config: ExpiryConfig, *, clock: Callable[[], float] = time.time, backoff: Backoff | None = None,
    ) -> None:  # fmt: skip
        self.shard, self.region, self.reader, self.sinks, self.config = shard, region, reader, sinks, config
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.announced: dict[tuple[str, str], float] = {}  # due hold -> when last announced (clock)
        self._lag = metrics.expiry_lag_seconds.labels(str(shard))
        self._published = {s.name: metrics.expiry_notices_published.labels(str(shard), s.name) for s in sinks}
        self._failures = metrics.expiry_scan_failures.labels(str(shard))
        self.failures = 0

    async def scan_once(self) -> int:
        """One scan: the notices published (every sink confirmed them)."""
        now_s = self.clock()
        now = int(now_s * 1_000_000)
        resend_s, round_ = self.config.resend_s, int(now_s // self.config.resend_s)
        due_now: set[tuple[str, str]] = set()
        oldest: int | None = None
        published = 0
        async with contextlib.aclosing(scan(self.reader, now, self.config.page_rows)) as pages:
            async for page in pages:
                oldest = page[0].expires_at if oldest is None else min(oldest, page[0].expires_at)
                fresh: list[Due] = []
                for due in page:
                    key = (due.account_id, due.hold_id)
                    due_now.add(key)
                    last = self.announced.get(key)
                    if last is None or now_s - last >= resend_s:
                        fresh.append(due)
                if fresh:
                    messages = [(mid, encode(mid, self.shard, d)) for d in fresh
                                for mid in (notice_id(self.region, self.shard, d, round_),)]  # fmt: skip
                    for sink in self.sinks:
                        await sink.publish(self.shard, messages)
                        self._published[sink.name].inc(len(messages))
                    for due in fresh:
                        self.announced[(due.account_id, due.hold_id)] = now_s
                    published += len(fresh)
        # Holds no longer due (expired, settled) are forgotten.
        self.announced = {key: at for key, at in self.announced.items() if key in due_now}
        self._lag.set(0.0 if oldest is None else max(0.0, now_s - oldest / 1_000_000))
        return published

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.scan_once()
                self.failures = 0
            except (StorageError, NoticeError) as exc:
                self.failures += 1
                self._failures.inc()
                delay = self.backoff.delay(self.failures)
                if self.failures == 1 or self.failures % 10 == 0:
                    log.warning("expiry shard %s: scan failed (attempt %d), retrying in %.2fs: %s",
                                self.shard, self.failures, delay, exc)  # fmt: skip
                await self.backoff.sleep(delay)
                continue
            await asyncio.sleep(max(0.0, self.config.scan_s - (time.monotonic() - started)))


def reader_for(settings: Settings, config: ExpiryConfig, shard: int) -> Reader:
    if settings.db_url is None:
        return SqliteReader(settings.data_dir / f"shard-{shard}.db")
    url = config.db_url
    if url is None:
        log.warning("expiry: BALANCE_EXPIRY_DB_URL is not set; reading as BALANCE_DB_URL's user"
                    " (give the job a user with SELECT only: docs/events.md)")  # fmt: skip
        url = settings.db_url
    return MariaDbReader.from_url(url, shard)


def build_jobs(settings: Settings, config: ExpiryConfig, metrics: Metrics, shards: list[int]) -> list[ShardExpiryJob]:
    sinks = brokers(config, settings.region)  # one connection per broker, shared by the shards' jobs
    return [
        ShardExpiryJob(shard, settings.region, reader_for(settings, config, shard), sinks, metrics, config)
        for shard in shards
    ]


async def close_jobs(jobs: list[ShardExpiryJob]) -> None:
    for job in jobs:
        await job.reader.close()
    for sink in {id(s): s for job in jobs for s in job.sinks}.values():
        await sink.close()


async def serve(settings: Settings, config: ExpiryConfig, shards: list[int]) -> None:
    metrics = Metrics()
    if config.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, addr=settings.host, registry=metrics.registry)
    jobs = build_jobs(settings, config, metrics, shards)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    tasks = [asyncio.create_task(job.run()) for job in jobs]
    parent = os.environ.get(PARENT_PID_ENV)
    if parent:
        tasks.append(asyncio.create_task(_watch_parent(int(parent), stopping)))
    log.info("expiry job: shard(s) %s -> %s", ",".join(map(str, shards)), ", ".join(s.name for s in jobs[0].sinks))
    try:
        await stopping.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_jobs(jobs)


PARENT_PID_ENV = "BALANCE_EXPIRY_PARENT_PID"


async def _watch_parent(parent: int, stopping: asyncio.Event) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    log.warning("expiry job: the service (pid %d) is gone; the job stops", parent)
    stopping.set()


def spawn() -> subprocess.Popen[bytes]:
    """The job as a child of ``run`` (same environment; it stops when its parent is gone)."""
    env = dict(os.environ, **{PARENT_PID_ENV: str(os.getpid())})
    return subprocess.Popen([sys.executable, "-m", "balance", "expiry-job"], env=env)


def main(shard: int | None) -> int:
    try:
        settings, config = Settings.from_env(), ExpiryConfig.from_env()
    except ValueError as exc:
        print(f"balance-service expiry-job: {exc}", file=sys.stderr, flush=True)
        return 1
    if not (config.amqp_url or config.nats_url):
        print("balance-service expiry-job: set BALANCE_AMQP_URL and/or BALANCE_NATS_URL", file=sys.stderr, flush=True)
        return 1
    if shard is not None and not 0 <= shard < settings.shards:
        print(f"balance-service expiry-job: --shard must be 0..{settings.shards - 1}", file=sys.stderr, flush=True)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvloop

    uvloop.run(serve(settings, config, list(range(settings.shards)) if shard is None else [shard]))
    return 0
