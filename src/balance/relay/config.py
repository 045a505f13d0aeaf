"""The relay's configuration (environment, read at start; a bad value stops the start)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from balance.events import catalogue as cat

RELAY_MODES = ("process", "inline", "off")


@dataclass(frozen=True, slots=True)
class RelayConfig:
    amqp_url: str | None = None
    nats_url: str | None = None
    mode: str = "process"  # a child process of `run` (default), tasks in the service's loop, or none
    retention_s: float = 86_400.0  # outbox rows: kept this long after every sink published them
    amqp_exchange: str = cat.AMQP_EXCHANGE
    nats_stream: str = cat.NATS_STREAM
    nats_subject_prefix: str = cat.NATS_SUBJECT_PREFIX
    metrics_port: int | None = None  # the relay process's /metrics (None: not served)
    nice: int = 10  # how far below the service's CPU priority the relay process runs (it yields under load)
    # The shards whose relays this process runs (``BALANCE_RELAY_SHARDS``, e.g. "0,2"; None: all).
    # The other shards' databases are read for their cursors only (``ShardRelay.barrier_sources``).
    shards: tuple[int, ...] | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "off" and bool(self.amqp_url or self.nats_url)

    @property
    def sink_names(self) -> tuple[str, ...]:
        """The brokers configured (``Sink.name``: each names a cursor), wherever their relay runs."""
        return (("amqp",) if self.amqp_url else ()) + (("nats",) if self.nats_url else ())

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> RelayConfig:
        env = dict(os.environ if env is None else env)
        mode = env.get("BALANCE_RELAY") or "process"
        if mode not in RELAY_MODES:
            raise ValueError(f"BALANCE_RELAY must be one of {', '.join(RELAY_MODES)}")
        retention_s = float(env.get("BALANCE_EVENTS_RETENTION_S", "86400"))
        if not 0 <= retention_s <= 366 * 86_400:
            raise ValueError("BALANCE_EVENTS_RETENTION_S must be between 0 and 31622400 seconds")
        port = env.get("BALANCE_RELAY_METRICS_PORT") or None
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError("BALANCE_RELAY_METRICS_PORT must be a TCP port")
        nice = env.get("BALANCE_RELAY_NICE") or "10"
        if not (nice.isdigit() and int(nice) <= 19):
            raise ValueError("BALANCE_RELAY_NICE must be between 0 and 19")
        shards = env.get("BALANCE_RELAY_SHARDS") or None
        if shards is not None and not all(part.strip().isdigit() for part in shards.split(",")):
            raise ValueError("BALANCE_RELAY_SHARDS must list shard numbers, e.g. 0,2")
        return cls(
            shards=None if shards is None else tuple(sorted({int(part) for part in shards.split(",")})),
            nice=int(nice),
            amqp_url=env.get("BALANCE_AMQP_URL") or None,
            nats_url=env.get("BALANCE_NATS_URL") or None,
            mode=mode,
            retention_s=retention_s,
            amqp_exchange=env.get("BALANCE_AMQP_EXCHANGE") or cat.AMQP_EXCHANGE,
            nats_stream=env.get("BALANCE_NATS_STREAM") or cat.NATS_STREAM,
            nats_subject_prefix=env.get("BALANCE_NATS_SUBJECT_PREFIX") or cat.NATS_SUBJECT_PREFIX,
            metrics_port=None if port is None else int(port),
        )
