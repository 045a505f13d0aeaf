"""The expiry job (DESIGN.md, docs/events.md "The expiry job"): per shard, a reader of the
shard database's committed state finds the pending holds past their expiry and publishes
``hold.expiry-due`` notices; the engine consumes them and expires the holds. The job writes
nothing and takes no locks.

``notices`` (pure: the notice, its id, what the journal's tail says), ``reader`` (the read-only
scan of a shard database), ``brokers`` (publishing and consuming notices on RabbitMQ / NATS),
``job`` (the scanner and ``balance-service expiry-job``), ``consumer`` (the engine's side),
``config`` (the environment).
"""
