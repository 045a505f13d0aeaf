"""Payment results in: a gateway's ``succeeded`` / ``failed`` for a hold, consumed from RabbitMQ
(queue ``balance.payment-results``) and NATS JetStream (subject ``balance.payment-results``)
and applied as a capture or a release (docs/events.md, "Payment results in").

``message`` (pure): the message's schema and what an engine answer means for it; ``applier``:
one message through the service, broker-agnostic; ``amqp`` and ``nats``: the consumers, which
acknowledge a message only once its outcome is committed; ``runner``: started by the service.
"""
