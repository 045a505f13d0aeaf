"""A node of the fleet (``BALANCE_NODE_ID``): it serves the shards it holds a lease for.

``ports`` is the port of one shard in a node (the engine while the node owns the shard);
``keeper`` takes, renews and gives up the leases, and takes a shard over (fence, recover)."""
