"""Events: what every committed change publishes, derived from what the shard committed.

Pure rules (no IO): the catalogue of event types and ids (``catalogue``), the outbox rows the
engine writes for facts no journal row holds (``outbox``), an account and a hold as of a
journal row (``states``), and the stream that turns a shard's rows, in seq order, into
envelopes (``stream``). Reading the rows and publishing them is the relay's (``balance.relay``).
"""
