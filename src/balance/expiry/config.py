"""The expiry job's configuration (environment, read at start; a bad value stops the start).

Job mode (``notices``): a broker is configured (``BALANCE_AMQP_URL`` and/or ``BALANCE_NATS_URL``)
and ``BALANCE_EXPIRY_JOB`` is not ``off``. Then the service consumes ``hold.expiry-due``
notices and its own sweep only expires holds overdue by more than ``fallback_s`` (the job or
the broker away); without a broker the sweep expires every hold as it falls due. The job
itself: a child process of ``run`` (``process``, the default) or run by the operator
(``external``: ``balance-service expiry-job``, e.g. on another host)."""

from __future__ import annotations

import os
from dataclasses import dataclass

QUEUE_PREFIX = "balance.expiry-due"  # RabbitMQ: queue <prefix>.<shard>
NATS_STREAM = "BALANCE_EXPIRY_DUE"
SUBJECT_PREFIX = "balance.expiry-due"  # NATS: <prefix>.<region>.<shard>
JOB_MODES = ("process", "external", "off")


def _number(env: dict[str, str], name: str, default: str, low: float, high: float) -> float:
    text = env.get(name) or default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}")
    return value


@dataclass(frozen=True, slots=True)
class ExpiryConfig:
    amqp_url: str | None = None
    nats_url: str | None = None
    mode: str = "process"  # BALANCE_EXPIRY_JOB: process (a child of `run`), external, or off
    fallback_s: float = 30.0  # job mode: the engine's sweep expires holds overdue by more than this
    resend_s: float = 60.0  # a hold still pending is announced again after this long
    scan_s: float = 1.0  # how often the job scans
    page_rows: int = 1000  # rows per read (and notices per publish)
    db_url: str | None = None  # MariaDB: a SELECT-only user (BALANCE_EXPIRY_DB_URL)
    queue_prefix: str = QUEUE_PREFIX
    nats_stream: str = NATS_STREAM
    subject_prefix: str = SUBJECT_PREFIX
    metrics_port: int | None = None

    @property
    def notices(self) -> bool:
        """Job mode: notices are published and consumed, the sweep is the fallback."""
        return self.mode != "off" and bool(self.amqp_url or self.nats_url)

    def queue(self, shard: int) -> str:
        return f"{self.queue_prefix}.{shard}"

    def subject(self, region: str, shard: int) -> str:
        return f"{self.subject_prefix}.{region}.{shard}"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ExpiryConfig:
        env = dict(os.environ if env is None else env)
        mode = env.get("BALANCE_EXPIRY_JOB") or "process"
        if mode not in JOB_MODES:
            raise ValueError(f"BALANCE_EXPIRY_JOB must be one of {', '.join(JOB_MODES)}")
        page_rows = env.get("BALANCE_EXPIRY_PAGE_ROWS") or "1000"
        if not (page_rows.isdigit() and 1 <= int(page_rows) <= 10_000):
            raise ValueError("BALANCE_EXPIRY_PAGE_ROWS must be between 1 and 10000")
        port = env.get("BALANCE_EXPIRY_METRICS_PORT") or None
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError("BALANCE_EXPIRY_METRICS_PORT must be a TCP port")
        return cls(
            amqp_url=env.get("BALANCE_AMQP_URL") or None,
            nats_url=env.get("BALANCE_NATS_URL") or None,
            mode=mode,
            fallback_s=_number(env, "BALANCE_EXPIRY_FALLBACK_S", "30", 0, 86_400),
            resend_s=_number(env, "BALANCE_EXPIRY_RESEND_S", "60", 1, 86_400),
            scan_s=_number(env, "BALANCE_EXPIRY_SCAN_S", "1", 0.05, 3600),
            page_rows=int(page_rows),
            db_url=env.get("BALANCE_EXPIRY_DB_URL") or None,
            queue_prefix=env.get("BALANCE_EXPIRY_QUEUE_PREFIX") or QUEUE_PREFIX,
            nats_stream=env.get("BALANCE_EXPIRY_NATS_STREAM") or NATS_STREAM,
            subject_prefix=env.get("BALANCE_EXPIRY_SUBJECT_PREFIX") or SUBJECT_PREFIX,
            metrics_port=None if port is None else int(port),
        )
