"""Admission of a request body, decided from the head before a byte of the body is read.

Why here and not in the route: a body costs memory as it arrives, so an anonymous client, a
body larger than its route can use, or one more body than the process can hold is refused
from the head alone (401, 413, 503 with Retry-After) and the connection closed; only then is
``Expect: 100-continue`` answered. A key may be hostile too: the bodies of all keys share one
budget of bytes per process, and one key may have only a few bodies arriving at once.
Every limit is documented in docs/limits.md.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from dataclasses import dataclass

from balance.domain.authority import Actor
from balance.engine.replies import RETRY_AFTER_S
from balance.views import problem

KIB, MIB = 1024, 1024 * 1024
BATCH_PATH = "/v1/batch"
# A partner move's arrival between nodes (``node.keeper``: the fleet secret, checked before the
# body is read): the whole subtree's export, so up to the body budget.
MOVE_IN_PREFIX, MOVE_IN_SUFFIX = "/internal/v1/shards/", "/move-in"
UNAUTHENTICATED = ("/healthz", "/readyz", "/metrics", "/openapi.json")
FD_RESERVE = 64  # descriptors kept for the databases, log files and the listener


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one server process accepts from its clients (docs/limits.md)."""

    body_bytes_max: int = 64 * KIB  # a single operation's body: a few KiB at most, with metadata
    batch_bytes_max: int = 16 * MIB  # /v1/batch: up to 8,190 operations
    body_budget_bytes: int = 64 * MIB  # bodies arriving or waiting for their answer, all keys together
    key_bodies_max: int = 8  # large bodies (over body_bytes_max, or chunked) one key may have arriving at once
    connections_max: int = 10_000  # open client connections (lowered to fit the file limit)
    head_timeout_s: float = 10.0  # from a request's first byte to the end of its headers
    body_timeout_s: float = 60.0  # from the end of the headers to the end of the body
    idle_timeout_s: float = 75.0  # a keep-alive connection with nothing to do

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> HttpLimits:
        env = dict(os.environ if env is None else env)
        default = cls()

        def number(name: str, value: float, low: float, high: float) -> float:
            raw = env.get(name, "")
            if not raw:
                return value
            try:
                parsed = float(raw)
            except ValueError:
                parsed = low - 1
            if not low <= parsed <= high:
                raise ValueError(f"{name} must be a number from {low:g} to {high:g}")
            return parsed

        return cls(
            body_bytes_max=int(number("BALANCE_HTTP_BODY_BYTES_MAX", default.body_bytes_max, 1 * KIB, 16 * MIB)),
            batch_bytes_max=int(number("BALANCE_HTTP_BATCH_BYTES_MAX", default.batch_bytes_max, 1 * KIB, 256 * MIB)),
            body_budget_bytes=int(
                number("BALANCE_HTTP_BODY_BUDGET_BYTES", default.body_budget_bytes, 64 * KIB, 64 * 1024 * MIB)
            ),
            key_bodies_max=int(number("BALANCE_HTTP_KEY_BODIES_MAX", default.key_bodies_max, 1, 100_000)),
            connections_max=int(number("BALANCE_HTTP_CONNECTIONS_MAX", default.connections_max, 1, 1_000_000)),
            head_timeout_s=number("BALANCE_HTTP_HEAD_TIMEOUT_S", default.head_timeout_s, 0.1, 3600),
            body_timeout_s=number("BALANCE_HTTP_BODY_TIMEOUT_S", default.body_timeout_s, 0.1, 3600),
            idle_timeout_s=number("BALANCE_HTTP_IDLE_TIMEOUT_S", default.idle_timeout_s, 0.1, 3600),
        )

    def connections_cap(self) -> int:
        """The connection cap that fits the process's file limit: a connection refused with a
        clear answer needs a descriptor too, and accept() failing with EMFILE answers nobody."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.connections_max
        return max(1, min(self.connections_max, soft - FD_RESERVE))


def raise_file_limit() -> None:
    """Raise the soft file limit to the hard one (a server's connections are descriptors)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


class Refused(Exception):
    """A body refused from the head: the status, the problem code and detail, and whether the
    client should retry later (503: Retry-After)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail

    def body(self) -> bytes:
        return problem(self.code, self.status, self.detail)


class Admission:
    """Counts the bodies in flight: bytes per process, bodies arriving per key."""

    def __init__(
        self,
        limits: HttpLimits,
        authenticate: Callable[[dict[bytes, bytes]], Actor | None] | None,
        ready: Callable[[], bool],
    ) -> None:
        self.limits = limits
        # Who the Authorization header's key is (None: missing or unknown key). The Actor is
        # handed to the request's answer, so the key is hashed and looked up once per request.
        # None here: every body is admitted by size alone (a server without an app's keys).
        self._authenticate = authenticate
        self._ready = ready
        self.buffered = 0  # bytes charged to the budget
        self.arriving: dict[str, int] = {}  # principal -> bodies being received

    def limit_of(self, path: str) -> int:
        if path == BATCH_PATH:
            return self.limits.batch_bytes_max
        if path.startswith(MOVE_IN_PREFIX) and path.endswith(MOVE_IN_SUFFIX):  # a partner's subtree, between nodes
            return self.limits.body_budget_bytes
        return self.limits.body_bytes_max

    def begin(self, path: str, headers: dict[bytes, bytes], length: int) -> tuple[Actor | None, str | None]:
        """Admit a body of ``length`` bytes (-1: chunked, charged as it arrives) or raise Refused.
        Returns who the key is (None when this admission does not authenticate) and the key's
        principal when the body counts among the key's large bodies arriving (the caller then
        owes ``end_arrival``), else None. Small bodies do not count there: a client may send its
        head and its body in separate writes, and a gateway's many connections under one key
        must not queue behind each other; the budget bounds them."""
        if path in UNAUTHENTICATED:
            raise Refused(400, "bad_request", f"{path} takes no body")
        if not self._ready():
            raise Refused(503, "unavailable", "the service is recovering; retry shortly")
        actor: Actor | None = None
        principal = ""
        if self._authenticate is not None:
            actor = self._authenticate(headers)
            if actor is None:
                raise Refused(401, "unauthorized", "missing or unknown API key")
            principal = actor.principal
        limit = self.limit_of(path)
        if length > limit:
            raise Refused(413, "payload_too_large", f"body of {length} bytes; this route takes at most {limit}")
        limits = self.limits
        if length > 0 and self.buffered + length > limits.body_budget_bytes:
            raise Refused(503, "unavailable", "the server holds as many request bodies as it may; retry shortly")
        counted: str | None = None
        if length < 0 or length > limits.body_bytes_max:
            arriving = self.arriving.get(principal, 0)
            if arriving >= limits.key_bodies_max:
                raise Refused(
                    503, "unavailable", f"this key already has {arriving} large bodies arriving; retry shortly"
                )
            self.arriving[principal] = arriving + 1
            counted = principal
        if length > 0:
            self.buffered += length
        return actor, counted

    def grow(self, more: int) -> bool:
        """Charge ``more`` bytes of a chunked body; False when the budget cannot take them."""
        if self.buffered + more > self.limits.body_budget_bytes:
            return False
        self.buffered += more
        return True

    def end_arrival(self, principal: str) -> None:
        left = self.arriving.get(principal, 0) - 1
        if left > 0:
            self.arriving[principal] = left
        else:
            self.arriving.pop(principal, None)

    def release(self, charged: int) -> None:
        self.buffered -= charged


RETRY_AFTER = str(RETRY_AFTER_S).encode()
