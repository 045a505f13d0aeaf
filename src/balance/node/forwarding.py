"""Forwarding a request to the node that owns the account's shard, once.

The receiving node has authenticated the key already (``BalanceApp._handle``); the owner
authenticates it again and answers; its status, body and replay mark are passed back
unchanged. Connections to each owner are pooled and kept alive (one ``httpx.AsyncClient``);
an owner that does not answer (refused, timed out) gives ``503 unavailable`` with
Retry-After. A forwarded request carries the fleet secret (``BALANCE_FLEET_SECRET``) in
``x-balance-fleet``: the owner then never forwards it again (a shard that moved meanwhile is
answered 503, not bounced around). The header grants nothing else: the key decides what
the request may do, on every node.
"""

from __future__ import annotations

import hmac
import importlib.util
import logging
import sys

import httpx
import msgspec

from balance.domain import commands as c
from balance.engine.replies import Reply, unavailable_reply
from balance.node import crash_points

log = logging.getLogger("balance.node")
logging.getLogger("httpx").setLevel(logging.WARNING)  # (it logs every request at INFO: a line per forward)

FLEET_HEADER = b"x-balance-fleet"
INTERNAL_PREFIX = "/internal/v1/"


class LegWire(msgspec.Struct, array_like=True):
    """A transfer as the internal route carries it (its metadata as base64)."""

    op_id: str
    from_account_id: str
    to_account_id: str
    amount: int
    currency: str
    description: str
    metadata: bytes

    def transfer(self) -> c.Transfer:
        return c.Transfer(self.op_id, self.from_account_id, self.to_account_id, self.amount, self.currency,
                          self.description, self.metadata)  # fmt: skip


class HoldMarkWire(msgspec.Struct, array_like=True):
    """A hold of another shard naming an account here: mark it (before it is placed) or drop it."""

    account_id: str
    hold_id: str
    destination_id: str
    add: bool


class DestinationWire(msgspec.Struct, array_like=True):
    """The destination's committed state, as the marking node read it (``c.RemoteAccount``)."""

    found: bool
    currency: str = ""
    status: str = ""
    is_system: bool = False


class HoldsNamingAsk(msgspec.Struct):
    shards: list[int]  # the asking node's shards: the holds naming their accounts


class HoldsNamingWire(msgspec.Struct):
    sources: list[int]  # the shards answered for (owned here and recovered)
    holds: list[tuple[str, str, str]]  # (account, hold id, destination) pending or being captured


class HistoryAsk(msgspec.Struct, array_like=True):
    """A moved account's rows on a shard another node owns (``GET …/transactions`` and
    ``GET …/transactions/{txn_id}`` of the node it lives on): one page, as ``ShardPort.history``."""

    account_id: str
    limit: int
    before_seq: int | None
    since: int | None
    until: int | None


class HistoryWire(msgspec.Struct):
    rows: list[tuple[int, int, msgspec.Raw]]  # (created_at, seq, the Txn as that shard renders it), newest first


class HoldAsk(msgspec.Struct, array_like=True):
    """A moved account's hold as a shard another node owns has it (``GET …/holds/{hold_id}``)."""

    account_id: str
    hold_id: str


class HoldWire(msgspec.Struct, array_like=True):
    status: str  # "" when that shard has no such hold
    hold: msgspec.Raw  # the Hold as that shard renders it (null when it has none)


class _BatchResult(msgspec.Struct):
    status: int
    replayed: bool
    body: msgspec.Raw


class _BatchAnswer(msgspec.Struct):
    results: list[_BatchResult]


# httpcore imports ``sniffio`` on every request to learn the event loop it runs in; absent (it
# is not a dependency), each import fails after searching the whole path: about 0.25 ms, a
# dozen times per forwarded request. Marked absent here, the import fails at once.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]
# httpcore checks every pooled connection on each request (its pool is scanned, and each
# idle connection asks the socket whether it is readable): the cost grows with the pool, so
# it is kept small; requests beyond it wait for a connection. (With 64 connections a forwarded
# credit at 32 concurrent requests ran at 182/s, with 8 at 412/s: BENCHMARKS.md, "Fleet".)
POOL_CONNECTIONS = 8
_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length", b"te", b"upgrade"}
CONNECT_TIMEOUT_S = 1.0
ANSWER_TIMEOUT_S = 15.0  # an owner's answer (a batch of 8,190 operations included)


class Forwarder:
    def __init__(self, fleet_secret: str) -> None:
        self._secret = fleet_secret.encode()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(ANSWER_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(
                max_connections=POOL_CONNECTIONS, max_keepalive_connections=POOL_CONNECTIONS, keepalive_expiry=30
            ),
        )

    def forwarded(self, headers: dict[bytes, bytes]) -> bool:
        """Did another node of the fleet forward this request (it carries the fleet secret)?"""
        given = headers.get(FLEET_HEADER)
        return given is not None and hmac.compare_digest(given, self._secret)

    async def forward(
        self, owner_url: str, method: str, path: str, raw_query: bytes, headers: dict[bytes, bytes], body: bytes
    ) -> Reply:
        sent = {name: value for name, value in headers.items() if name not in _HOP_BY_HOP and name != FLEET_HEADER}
        sent[FLEET_HEADER] = self._secret
        url = owner_url.rstrip("/") + path + ("?" + raw_query.decode("latin-1") if raw_query else "")
        try:
            response = await self._client.request(method, url, headers=list(sent.items()), content=body)
        except httpx.HTTPError as exc:
            log.warning("forwarding %s %s to %s failed: %r", method, path, owner_url, exc)
            return unavailable_reply(f"the node that owns this account's shard ({owner_url}) does not answer")
        replayed = response.headers.get("idempotent-replayed") == "true"
        return Reply(response.status_code, response.content, replayed)

    async def transfer_in(self, owner_url: str, shard: int, transfer: c.Transfer) -> Reply:
        """The target leg of a transfer whose target shard another node owns: executed there
        (``ShardKeeper.internal``), its answer back; 503 if that node does not answer (the
        transfer stays in flight: a retry of the same id, or the finisher, completes it)."""
        wire = LegWire(transfer.op_id, transfer.from_account_id, transfer.to_account_id, transfer.amount,
                       transfer.currency, transfer.description, transfer.metadata)  # fmt: skip
        url = f"{owner_url.rstrip('/')}{INTERNAL_PREFIX}shards/{shard}/transfer-in"
        crash_points.reached("before_target_leg")
        try:
            response = await self._client.post(
                url, content=msgspec.json.encode(wire),
                headers={FLEET_HEADER.decode(): self._secret.decode(), "content-type": "application/json"},
            )  # fmt: skip
        except httpx.HTTPError as exc:
            log.warning("transfer %s: the target leg on %s failed: %r", transfer.op_id, owner_url, exc)
            return unavailable_reply(f"the node that owns shard {shard} ({owner_url}) does not answer")
        crash_points.reached("before_complete")
        return Reply(response.status_code, response.content, response.headers.get("idempotent-replayed") == "true")

    async def internal(self, owner_url: str, route: str, body: bytes) -> Reply:
        """``POST /internal/v1/{route}`` on another node (the fleet secret); 503 if it does not answer."""
        url = f"{owner_url.rstrip('/')}{INTERNAL_PREFIX}{route}"
        try:
            response = await self._client.post(
                url,
                content=body,
                headers={FLEET_HEADER.decode(): self._secret.decode(), "content-type": "application/json"},
            )
        except httpx.HTTPError as exc:
            log.warning("internal %s on %s failed: %r", route, owner_url, exc)
            return unavailable_reply(f"the node at {owner_url} does not answer")
        return Reply(response.status_code, response.content)

    async def batch(self, owner_url: str, headers: dict[bytes, bytes], operations: list[bytes]) -> list[Reply]:
        """A batch's operations on the shards of one other node, forwarded once as one batch:
        each answer in order; all 503 if that node does not answer, all its refusal (401, 413...)
        if it refuses the whole batch."""
        body = b'{"operations":[' + b",".join(operations) + b"]}"
        reply = await self.forward(owner_url, "POST", "/v1/batch", b"", headers, body)
        if reply.status == 200:
            try:
                results = msgspec.json.decode(reply.body, type=_BatchAnswer).results
            except (msgspec.DecodeError, msgspec.ValidationError):
                results = []
            if len(results) == len(operations):
                return [Reply(r.status, bytes(r.body), r.replayed) for r in results]
            reply = unavailable_reply(f"the node at {owner_url} answered the batch unreadably")
        return [reply] * len(operations)

    async def close(self) -> None:
        await self._client.aclose()
