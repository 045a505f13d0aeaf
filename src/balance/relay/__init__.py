"""The event relay: per shard, the committed rows after a durable cursor, published in order,
at least once, to RabbitMQ and/or NATS JetStream (``balance.events`` builds the envelopes).

Adapters: ``sources`` (the shard database), ``amqp`` and ``nats`` (the brokers); ``relay`` is
the loop that joins them; ``command`` runs the relays of a node's shards (``balance-service relay``).
"""
