"""The payment results consumers' configuration (environment, read at start; a bad value stops
the start). On by default wherever a broker URL is set."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from balance.events import catalogue as cat

_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")
_STREAM = re.compile(r"[A-Za-z0-9_-]{1,200}")  # NATS stream and consumer names: no dots


@dataclass(frozen=True, slots=True)
class ResultsConfig:
    amqp_url: str | None = None
    nats_url: str | None = None
    switch: str = "on"  # BALANCE_RESULTS: on (consume from every broker set) or off
    queue: str = cat.RESULTS_QUEUE
    subject: str = cat.RESULTS_SUBJECT
    nats_stream: str = cat.RESULTS_NATS_STREAM
    nats_durable: str = cat.RESULTS_NATS_DURABLE
    dead_letters: str = cat.DEAD_LETTERS  # RabbitMQ exchange and queue; NATS subject
    dead_letters_stream: str = cat.DEAD_LETTERS_NATS_STREAM
    prefetch: int = 256  # messages in flight per consumer (RabbitMQ prefetch, NATS fetch batch)

    @property
    def enabled(self) -> bool:
        return self.switch == "on" and bool(self.amqp_url or self.nats_url)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ResultsConfig:
        env = dict(os.environ if env is None else env)
        switch = env.get("BALANCE_RESULTS") or "on"
        if switch not in ("on", "off"):
            raise ValueError("BALANCE_RESULTS must be on or off")
        prefetch = env.get("BALANCE_RESULTS_PREFETCH") or "256"
        if not (prefetch.isdigit() and 1 <= int(prefetch) <= 10_000):
            raise ValueError("BALANCE_RESULTS_PREFETCH must be between 1 and 10000")
        names = {
            "queue": ("BALANCE_RESULTS_QUEUE", cat.RESULTS_QUEUE, _NAME),
            "subject": ("BALANCE_RESULTS_SUBJECT", cat.RESULTS_SUBJECT, _NAME),
            "nats_stream": ("BALANCE_RESULTS_NATS_STREAM", cat.RESULTS_NATS_STREAM, _STREAM),
            "nats_durable": ("BALANCE_RESULTS_NATS_DURABLE", cat.RESULTS_NATS_DURABLE, _STREAM),
            "dead_letters": ("BALANCE_DEAD_LETTERS", cat.DEAD_LETTERS, _NAME),
            "dead_letters_stream": ("BALANCE_DEAD_LETTERS_NATS_STREAM", cat.DEAD_LETTERS_NATS_STREAM, _STREAM),
        }
        values: dict[str, str] = {}
        for field, (variable, default, shape) in names.items():
            value = env.get(variable) or default
            if shape.fullmatch(value) is None:
                raise ValueError(f"{variable}: letters, digits, _ and - (and . where a broker allows it)")
            values[field] = value
        return cls(
            amqp_url=env.get("BALANCE_AMQP_URL") or None,
            nats_url=env.get("BALANCE_NATS_URL") or None,
            switch=switch,
            prefetch=int(prefetch),
            **values,
        )
