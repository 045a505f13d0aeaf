"""A fault-injection hook for the crash tests of movements across nodes: a node started with
``BALANCE_FLEET_CRASH_AT=<point>[,<point>...]`` kills itself (SIGKILL: nothing flushed, no
lease released) when it reaches that point. Read once at start; without it, a test of an
empty set at steps that cross the network anyway. The points:

- ``before_target_leg``: the source's node, its source leg committed, before it sends the target leg;
- ``after_target_leg``: the target's node, the target leg committed, before it answers;
- ``before_complete``: the source's node, the target's answer received, before it completes the source.
- ``move_exported``, ``move_moved_out``, ``move_moved_in``: a partner move's node (the source
  shard's owner), that step recorded, before the next;
- ``after_move_in``: the target's node, a partner move's arrival committed, before it answers.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger("balance.node")

POINTS = frozenset(p for p in os.environ.get("BALANCE_FLEET_CRASH_AT", "").split(",") if p)


def reached(point: str) -> None:
    if point in POINTS:
        log.critical("crash point %s reached: killing this node (BALANCE_FLEET_CRASH_AT)", point)
        os.kill(os.getpid(), signal.SIGKILL)
