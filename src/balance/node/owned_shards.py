"""Work a fleet node runs for each shard it owns (``docs/fleet.md``): started once the shard
is owned here and recovered, stopped when the node loses it (its engine replaced or gone),
looked at every ``check_s``. The expiry consumers and job (``expiry/node.py``), the outbox
pruner (``relay/node_pruner.py``) and the event relays (``relay/node_relay.py``) follow the
node's leases this way; each says what it starts and how it closes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar

from balance.engine.shard import ShardEngine


class _Started(Protocol):
    @property
    def engine(self) -> ShardEngine: ...


R = TypeVar("R", bound=_Started)


class OwnedShardWork(Generic[R]):
    """``running``: what runs for each shard, by shard; ``ports``: the node's ``NodeShard`` ports."""

    check_s = 1.0

    def __init__(self, ports: Sequence[Any]) -> None:
        self.ports = ports
        self.running: dict[int, R] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Until cancelled (``stop``)."""
        while True:
            self.refresh()
            await asyncio.sleep(self.check_s)

    def refresh(self) -> None:
        for port in self.ports:
            shard, engine = int(port.shard), port.engine
            current = self.running.get(shard)
            if current is not None and self.lost(shard, current, engine):
                self._stop_shard(shard, self.running.pop(shard), save=False)
                current = None
            elif current is not None and self.ended(shard, current):
                self._stop_shard(shard, self.running.pop(shard), save=True)
                continue  # started again at the next look, once the stopped one has closed
            if current is None and engine is not None and engine.ready:
                self.running[shard] = self.start(shard, engine)

    def lost(self, shard: int, current: R, engine: ShardEngine | None) -> bool:
        """The shard is no longer this node's (or was taken over again): stop without saving."""
        return current.engine is not engine

    def ended(self, shard: int, current: R) -> bool:
        """What runs for the shard ended by itself: stop it (saving) and start it again."""
        return False

    def start(self, shard: int, engine: ShardEngine) -> R:
        raise NotImplementedError

    def forget(self, shard: int, running: R) -> None:
        """What must stop at once, before the close (which runs as a task of its own)."""

    async def close(self, running: R, save: bool) -> None:
        raise NotImplementedError

    def _stop_shard(self, shard: int, running: R, *, save: bool) -> None:
        self.forget(shard, running)
        closing = asyncio.get_running_loop().create_task(self.close(running, save))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def stop(self) -> None:
        """A clean stop of everything running (``save``: what keeps a cursor saves it)."""
        for shard, running in list(self.running.items()):
            self._stop_shard(shard, running, save=True)
        self.running.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)
