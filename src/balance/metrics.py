"""Prometheus metrics of the service (one registry per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 8190)


class Metrics:
    """Counters and histograms the engine and the HTTP layer update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.operations = Counter(
            "balance_operations", "Operations answered, by kind and outcome code", ["kind", "outcome"], registry=r
        )
        self.request_seconds = Histogram(
            "balance_request_seconds", "HTTP request latency", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_commands = Histogram(
            "balance_batch_commands", "Commands per shard batch (group commit size)", ["shard"],
            buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.commit_seconds = Histogram(
            "balance_commit_seconds", "Duration of one batch commit", ["shard"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.commit_busy = Counter(
            "balance_commit_busy_seconds",
            "Time with at least one batch commit of the shard in flight (the writer's duty cycle)",
            ["shard"], registry=r,
        )  # fmt: skip
        self.commit_failures = Counter(
            "balance_commit_failures", "Batch commits that failed and were undone", ["shard"], registry=r
        )
        self.queue_depth = Gauge("balance_queue_depth", "Commands waiting for a shard writer", ["shard"], registry=r)
        self.recovery_seconds = Gauge(
            "balance_recovery_seconds", "Time the last recovery of a shard took", ["shard"], registry=r
        )
        self.holds_expired = Counter(
            "balance_holds_expired",
            "Holds expired (by the sweep, or from the expiry job's notices)",
            ["shard"],
            registry=r,
        )
        self.holds_checkpoints = Counter(
            "balance_holds_checkpoints",
            "Batches that also brought the holds and accounts tables up to date",
            ["shard"],
            registry=r,
        )
        self.holds_unsaved = Gauge(
            "balance_holds_unsaved", "Holds changed since the last holds checkpoint (only the journal has them)",
            ["shard"], registry=r,
        )  # fmt: skip
        self.accounts_unsaved = Gauge(
            "balance_accounts_unsaved", "Accounts whose row is behind the journal (the next checkpoint writes them)",
            ["shard"], registry=r,
        )  # fmt: skip
        self.storage_retries = Counter(
            "balance_storage_retries", "Failed attempts to reach storage, each followed by a backoff wait",
            ["shard", "phase"], registry=r,
        )  # fmt: skip
        self.ready = Gauge("balance_shard_ready", "1 when the shard has recovered and serves", ["shard"], registry=r)
        self.events_published = Counter(
            "balance_events_published",
            "Events the relay published and the broker confirmed",
            ["shard", "sink"],
            registry=r,
        )
        self.events_lag_seconds = Gauge(
            "balance_events_lag_seconds", "Age of the oldest event not yet published (0: caught up)",
            ["shard", "sink"], registry=r,
        )  # fmt: skip
        self.events_published_seq = Gauge(
            "balance_events_published_seq", "The relay's durable cursor: events up to this seq are confirmed",
            ["shard", "sink"], registry=r,
        )  # fmt: skip
        self.events_sink_failures = Counter(
            "balance_events_sink_failures", "Publishes that failed (broker away or refusing); retried with backoff",
            ["shard", "sink"], registry=r,
        )  # fmt: skip
        self.expiry_lag_seconds = Gauge(
            "balance_expiry_lag_seconds",
            "Age of the oldest pending hold past its expiry (0: none overdue); alert when it grows",
            ["shard"], registry=r,
        )  # fmt: skip
        self.expiry_notices_published = Counter(
            "balance_expiry_notices_published", "hold.expiry-due notices the expiry job published (broker confirmed)",
            ["shard", "sink"], registry=r,
        )  # fmt: skip
        self.expiry_scan_failures = Counter(
            "balance_expiry_scan_failures", "Expiry job scans that failed (database or broker away); retried",
            ["shard"], registry=r,
        )  # fmt: skip
        self.expiry_notices_handled = Counter(
            "balance_expiry_notices_handled",
            "hold.expiry-due notices the engine consumed, by outcome (expired, settled, early, invalid)",
            ["shard", "outcome"], registry=r,
        )  # fmt: skip
        self.results_applied = Counter(
            "balance_payment_results_applied",
            "Payment results acknowledged after their capture or release committed (outcome: applied, replayed,"
            " already: the hold was settled as the result says)",
            ["broker", "result", "outcome"], registry=r,
        )  # fmt: skip
        self.results_dead_lettered = Counter(
            "balance_payment_results_dead_lettered", "Payment results that can never apply, sent to the dead letters",
            ["broker", "reason"], registry=r,
        )  # fmt: skip
        self.results_conflicts = Counter(
            "balance_payment_results_conflicts",
            "Succeeded payment results for holds already expired or released (paid, money not moved): alert on it",
            ["broker"], registry=r,
        )  # fmt: skip
        self.results_retries = Counter(
            "balance_payment_results_retries", "Payment results put back because the engine was unavailable",
            ["broker"], registry=r,
        )  # fmt: skip
        self.http_refusals = Counter(
            "balance_http_refusals",
            "Requests and connections the HTTP server refused before the API saw them, by reason",
            ["reason"],
            registry=r,
        )
