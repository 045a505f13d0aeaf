"""The shard writer: one per shard, batching commands into one durable commit each."""
