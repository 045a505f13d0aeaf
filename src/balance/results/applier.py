"""One payment result through the service, whatever broker brought it: the capture or release
with the ``platform`` authority, then what its committed answer means (``message``).

The engine answers only once the outcome is durable (or undone: 503), so a consumer that acts
on the verdict acknowledges only what is committed.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec

from balance.domain import authority as a
from balance.domain import commands as c
from balance.domain import errors as e
from balance.engine.replies import Reply
from balance.metrics import Metrics
from balance.results import message as m

if TYPE_CHECKING:
    from balance.service import BalanceService

log = logging.getLogger("balance.results")

# Who a payment result acts as: the gateway's backend (captures and releases on any account,
# never keys or limits). Who may publish a result is the broker's permission (docs/events.md).
RESULTS_ACTOR = a.Actor("payment-results", a.PLATFORM, "payment-results")

_PROBLEM = msgspec.json.Decoder()
CONFLICTS_KEPT = 10_000
# A fleet node: (shard, message) -> None if this node owns the shard, else the owner's verdict
# (``ShardKeeper.payment_result_to_owner``).
ToOwner = Callable[[int, bytes], Awaitable[Reply | None]]


class VerdictWire(msgspec.Struct):
    """A verdict as the owner node sends it back to the node whose consumer got the message."""

    action: str
    outcome: str
    detail: str = ""


class ResultApplier:
    def __init__(self, service: BalanceService, metrics: Metrics, to_owner: ToOwner | None = None) -> None:
        self.service, self.metrics = service, metrics
        self.to_owner = to_owner
        # Conflicts recorded by this process: a result redelivered after its event was committed
        # (its dead letter or acknowledgement failed) does not record a second one.
        self._conflicts: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    async def apply(self, body: bytes, *, forward: bool = True) -> tuple[m.Verdict, m.PaymentResult | None]:
        """The verdict on one message (and the message, when it parsed). On a fleet node, a
        result for a shard another node owns is applied there (``forward``), once: the owner
        answers the verdict after its commit, and this consumer acknowledges on it."""
        parsed = m.parse(body)
        if isinstance(parsed, m.Verdict):
            return parsed, None
        if forward and self.to_owner is not None:
            shard = self.service.placement.shard_of(parsed.account_id)
            forwarded = None if shard is None else await self.to_owner(shard, body)
            if forwarded is not None:
                return _verdict_of(forwarded), parsed
        port = self.service.port_for(parsed.account_id)
        if port is None:  # the id names no shard of this service
            return m.Verdict(m.DEAD_LETTER, e.ACCOUNT_NOT_FOUND, f"account {parsed.account_id} not found"), parsed
        command: c.Command
        if parsed.result == m.SUCCEEDED:
            command = c.CaptureHold(parsed.account_id, parsed.hold_id, parsed.amount, RESULTS_ACTOR)
        else:
            command = c.ReleaseHold(parsed.account_id, parsed.hold_id, RESULTS_ACTOR)
        reply = await self.service.execute(command)
        verdict = m.after_reply(reply.status, _code(reply.status, reply.body), reply.replayed)
        if verdict.action == m.DEAD_LETTER and not verdict.detail:
            verdict = m.Verdict(m.DEAD_LETTER, verdict.outcome, _detail(reply.body))
        if verdict.action != m.CHECK_HOLD:
            return verdict, parsed
        try:
            hold = await port.hold_state(parsed.account_id, parsed.hold_id)
        except Exception as exc:  # noqa: BLE001 (storage away: transient)
            return m.Verdict(m.RETRY, "unavailable", f"reading the hold: {exc}"), parsed
        verdict = m.after_settled(parsed, None if hold is None else tuple(hold))
        if verdict.conflict:
            assert hold is not None
            key = (parsed.account_id, parsed.hold_id, parsed.id)
            if key in self._conflicts:  # redelivered (its dead letter failed): recorded already
                return verdict, parsed
            recorded = await port.execute(
                c.RecordResultConflict(parsed.account_id, parsed.hold_id, tuple(hold), m.result_pairs(parsed))
            )
            if recorded.status == 503:  # the event must be committed before the message goes
                return m.Verdict(m.RETRY, "unavailable", "recording the conflict"), parsed
            if recorded.status >= 300:
                log.error("payment result %s: the conflict was not recorded: %s", parsed.id, _detail(recorded.body))
            else:
                self._conflicts[key] = None
                if len(self._conflicts) > CONFLICTS_KEPT:
                    self._conflicts.popitem(last=False)
        return verdict, parsed

    async def apply_forwarded(self, body: bytes) -> Reply:
        """The owner's side of a forwarded result (``/internal/v1/shards/{n}/payment-result``):
        applied here, never forwarded again; the verdict as JSON."""
        verdict, _ = await self.apply(body, forward=False)
        return Reply(200, msgspec.json.encode(VerdictWire(verdict.action, verdict.outcome, verdict.detail)))

    def settled(self, broker: str, verdict: m.Verdict, result: m.PaymentResult | None) -> None:
        """Count what the consumer did with a message (after it acknowledged or put it back)."""
        if verdict.action == m.ACK:
            kind = result.result if result is not None else "unknown"
            self.metrics.results_applied.labels(broker, kind, verdict.outcome).inc()
        elif verdict.action == m.DEAD_LETTER:
            self.metrics.results_dead_lettered.labels(broker, verdict.outcome).inc()
            if verdict.conflict:
                self.metrics.results_conflicts.labels(broker).inc()
                log.error(
                    "payment result %s: %s (account %s, hold %s): dead-lettered as result_conflict",
                    None if result is None else result.id, verdict.detail,
                    None if result is None else result.account_id, None if result is None else result.hold_id,
                )  # fmt: skip
            else:
                log.warning("payment result dead-lettered (%s): %s", verdict.outcome, verdict.detail)
        else:
            self.metrics.results_retries.labels(broker).inc()


def _verdict_of(reply: Reply) -> m.Verdict:
    """The owner's verdict; anything else (the owner away, recovering, refusing): put back."""
    if reply.status == 200:
        try:
            wire = msgspec.json.decode(reply.body, type=VerdictWire)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return m.Verdict(m.RETRY, "unavailable", "the owner node's verdict was unreadable")
        if wire.action in (m.ACK, m.DEAD_LETTER, m.RETRY):
            return m.Verdict(wire.action, wire.outcome, wire.detail)
    return m.Verdict(m.RETRY, "unavailable", f"the owner node answered {reply.status}: {_detail(reply.body)}")


def _problem(body: bytes) -> dict[str, object]:
    try:
        value = _PROBLEM.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _code(status: int, body: bytes) -> str:
    return "" if status < 300 else str(_problem(body).get("code", ""))


def _detail(body: bytes) -> str:
    return str(_problem(body).get("detail", ""))
