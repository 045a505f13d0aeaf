"""``untrack(obj)``: take a long-lived record out of the cyclic garbage collector's lists.

A shard keeps an object per pending hold and per recent operation (``Hold``, ``Record``) and
per account, for minutes or for good. Every one of them was tracked by the collector (mypyc's
native classes always are), so each collection of the old generations walked all of them:
with 60,000 holds left pending at 3,000/s, a third of p99 (benchmarks/tail-latency.md,
sessions 11 and 12). Their fields are only str, int, bytes, None and tuples of those, so they
cannot be part of a reference cycle: reference counting frees them, and the collector has
nothing to find in them. Untracked, they cost a collection nothing, and a collection's cost is
that of the traffic in flight.

Only for objects whose fields are atomic values (str, int, float, bool, bytes, None, and
tuples of those): an untracked object in a cycle would never be freed. A tracked object it
points to stays alive while it does, as with any reference the collector does not see.

The compiled build uses a few lines of C (``_untrack.c``, built by setup.py next to the mypyc
modules); the pure-Python one (``BALANCE_PURE_PYTHON=1``) calls the same C API through ctypes,
or does nothing where there is none (the objects then stay tracked, as before).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")


def _through_ctypes() -> Callable[[object], None]:
    """The pure-Python build: the same C API through ctypes (or nothing, off CPython)."""
    try:
        import ctypes

        gc_untrack = ctypes.pythonapi.PyObject_GC_UnTrack
    except (ImportError, AttributeError):  # not CPython: they stay tracked, as before
        return lambda obj: None
    gc_untrack.argtypes = (ctypes.py_object,)
    gc_untrack.restype = None

    def untrack(obj: object) -> None:
        if gc.is_tracked(obj):  # only an object with GC support can be (the C API needs one)
            gc_untrack(obj)

    return untrack


untrack: Callable[[object], None]
try:
    from balance import _untrack

    untrack = _untrack.untrack
except ImportError:
    untrack = _through_ctypes()


def tracked(mapping: dict[K, V]) -> dict[K, V]:
    """``mapping`` (empty), tracked by the cyclic GC from now on.

    CPython tracks a dict only once it holds a container, so a shard's index of holds, made
    empty, was tracked at its first hold, after recovery's ``gc.freeze()``: every full
    collection then visited each pending hold through it. Tracked from the start, the dict is
    frozen with the rest of what recovery made, and no collection walks it again, however many
    holds it comes to hold (reference counting still frees it with its ledger)."""
    if not gc.is_tracked(mapping):
        loose: Any = mapping
        # A container as a value tracks the dict, and it stays tracked once the entry is gone.
        # The key is a str: a key of another type would turn the dict's table into the general
        # kind for good (a stored hash per entry: 11 B more per pending hold, measured).
        loose[_MARK] = []
        del loose[_MARK]
    return mapping


_MARK = "\0balance.untrack.tracked"

__all__ = ["tracked", "untrack"]
