"""Payment results in, against the real RabbitMQ and NATS JetStream of this machine (never a fake
broker): each result becomes one capture or release, committed before it is acknowledged; a
redelivery moves nothing twice; what can never apply is dead-lettered with its reason and does
not hold back what follows; a success for a hold already released or expired is a conflict,
recorded as a ``hold.result_conflict`` event. Each test has its own queue, subjects and streams.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import nats
import pytest
from two_shards import Build, account, check_books, state

from balance.domain import commands as c
from balance.events import catalogue as cat
from balance.metrics import Metrics
from balance.relay.feed import EventsFeed
from balance.relay.sources import source_of
from balance.results import message as m
from balance.results.config import ResultsConfig
from balance.results.runner import ResultsConsumers
from balance.service import BalanceService
from balance.storage.sqlite import SqliteShardStorage
from ci import skip_or_fail

AMQP_URL = os.environ.get("BALANCE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("BALANCE_TEST_NATS_URL", "nats://127.0.0.1:4222")


class Harness:
    """A two-shard service (SQLite files), its results consumer on one broker, and a gateway's
    publisher and a reader of the dead letters on that broker."""

    def __init__(self, broker: str, service: BalanceService, build: Build, config: ResultsConfig) -> None:
        self.broker, self.service, self.build, self.config = broker, service, build, config
        self.metrics = Metrics()
        self.consumers = ResultsConsumers(config, service, self.metrics)
        self._amqp: Any = None
        self._channel: Any = None
        self._nc: Any = None
        self._js: Any = None
        self._dead_sub: Any = None

    async def open(self) -> None:
        if self.broker == "amqp":
            try:
                self._amqp = await aio_pika.connect(AMQP_URL, timeout=3)
            except Exception as exc:  # noqa: BLE001
                skip_or_fail(f"RabbitMQ not reachable at {AMQP_URL}: {exc!r}")
            self._channel = await self._amqp.channel(publisher_confirms=True)
        else:
            try:
                self._nc = await nats.connect(NATS_URL, connect_timeout=3, max_reconnect_attempts=1)
            except Exception as exc:  # noqa: BLE001
                skip_or_fail(f"NATS not reachable at {NATS_URL}: {exc!r}")
            self._js = self._nc.jetstream()
        self.consumers.start()
        await self.consumers.wait_connected()

    async def close(self) -> None:
        await self.consumers.stop()
        if self._channel is not None:
            for queue in (self.config.queue, self.config.dead_letters):
                await self._channel.queue_delete(queue)
            await self._channel.exchange_delete(self.config.dead_letters)
            await self._amqp.close()
        if self._js is not None:
            for stream in (self.config.nats_stream, self.config.dead_letters_stream):
                await self._js.delete_stream(stream)
            await self._nc.close()

    async def publish(self, body: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        if self._channel is not None:
            message = aio_pika.Message(raw, headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await self._channel.default_exchange.publish(message, routing_key=self.config.queue)
        else:
            await self._js.publish(self.config.subject, raw, headers=headers)

    async def dead_letters(self, count: int, timeout_s: float = 15) -> list[tuple[bytes, dict[str, Any]]]:
        """The first ``count`` dead letters (body, headers), in the order they were sent."""
        found: list[tuple[bytes, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < count and time.monotonic() < deadline:
            if self._channel is not None:
                queue = await self._channel.declare_queue(self.config.dead_letters, durable=True, passive=True)
                message = await queue.get(no_ack=True, fail=False)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                found.append((message.body, dict(message.headers or {})))
            else:
                if self._dead_sub is None:
                    self._dead_sub = await self._js.pull_subscribe(
                        self.config.dead_letters, durable=None, stream=self.config.dead_letters_stream
                    )
                try:
                    for message in await self._dead_sub.fetch(count - len(found), timeout=0.5):
                        await message.ack()
                        found.append((message.data, dict(message.headers or {})))
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
        return found

    def count(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"broker": self.broker, **labels})
        return 0.0 if value is None else value

    def settled(self) -> float:
        """Messages acknowledged or dead-lettered so far."""
        total = 0.0
        for metric in self.metrics.registry.collect():
            if metric.name in ("balance_payment_results_applied", "balance_payment_results_dead_lettered"):
                total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
        return total

    async def until(self, condition: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)


@pytest.fixture(params=["amqp", "nats"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    build = Build(lambda shard: SqliteShardStorage(tmp_path / f"shard-{shard}.db"))
    service = build()
    await service.start()
    tag = uuid.uuid4().hex[:10]
    config = ResultsConfig(
        amqp_url=AMQP_URL if request.param == "amqp" else None,
        nats_url=NATS_URL if request.param == "nats" else None,
        queue=f"test.payment-results.{tag}",
        subject=f"test.payment-results.{tag}",
        nats_stream=f"TEST_RESULTS_{tag}",
        nats_durable=f"test-results-{tag}",
        dead_letters=f"test.dead-letters.{tag}",
        dead_letters_stream=f"TEST_DEAD_{tag}",
        prefetch=64,
    )
    harness = Harness(request.param, service, build, config)
    try:
        await harness.open()
        yield harness
    finally:
        await harness.close()
        await service.stop()


async def funded_hold(service: BalanceService, hold_id: str, amount: int = 500, **hold: Any) -> str:
    """An account on shard 0 credited 1,000 with a pending hold of ``amount``."""
    account_id = await account(service, 0)
    assert (await service.execute(c.Credit(account_id, "seed", 1_000))).status == 201
    reply = await service.execute(c.PlaceHold(account_id, hold_id, amount, 600, **hold))
    assert reply.status == 201, reply.body
    return account_id


async def hold_of(service: BalanceService, account_id: str, hold_id: str) -> dict[str, Any]:
    port = service.port_for(account_id)
    assert port is not None
    found = await port.hold_state(account_id, hold_id)
    assert found is not None
    return {"status": found[5], "amount": found[2], "captured_amount": found[3]}


async def all_events(service: BalanceService) -> list[dict[str, Any]]:
    feed = EventsFeed([source_of(engine.storage) for engine in service.engines])
    try:
        events, _ = await feed.read([0] * len(service.engines), 1000, lambda _: True)
    finally:
        await feed.close()
    return [json.loads(event.body) for event in events]


def result(account_id: str, hold_id: str, outcome: str, amount: int | None = None, id: str = "") -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": id or f"pr-{uuid.uuid4().hex[:8]}", "account_id": account_id, "hold_id": hold_id, "result": outcome,
    }  # fmt: skip
    if amount is not None:
        message["amount"] = amount
    return message


async def test_the_same_result_delivered_three_times_captures_once(harness: Harness) -> None:
    service = harness.service
    account_id = await funded_hold(service, "order-1")
    message = result(account_id, "order-1", "succeeded", id="pay-1")
    for _ in range(3):
        await harness.publish(message)
    await harness.until(lambda: harness.settled() >= 3, "three deliveries settled")
    assert state(service, account_id) == (500, 0, "active")  # 1,000 - one capture of 500
    assert await hold_of(service, account_id, "order-1") == {
        "status": "captured",
        "amount": 500,
        "captured_amount": 500,
    }
    assert harness.count("balance_payment_results_applied_total", result="succeeded", outcome="applied") == 1
    assert harness.count("balance_payment_results_applied_total", result="succeeded", outcome="replayed") == 2
    assert harness.count("balance_payment_results_dead_lettered_total", reason="malformed") == 0
    captures = [e for e in await all_events(service) if e["type"] == cat.TRANSACTION_CREATED]
    assert [e["data"]["transaction"]["kind"] for e in captures if e["account_id"] == account_id].count("capture") == 1
    check_books(service)


async def test_a_poisoned_message_is_dead_lettered_and_the_next_one_still_applies(harness: Harness) -> None:
    service = harness.service
    account_id = await funded_hold(service, "order-2")
    unknown_account = account_id[:-4] + ("0000" if not account_id.endswith("0000") else "1111")
    poisons: list[tuple[bytes | dict[str, Any], str]] = [
        (b"{not json", m.MALFORMED),
        (result(account_id, "order-2", "maybe"), m.MALFORMED),
        ({**result(account_id, "order-2", "succeeded"), "extra": 1}, m.MALFORMED),
        (result(account_id, "order-2", "succeeded", amount=0), m.MALFORMED),
        (result(account_id, "order-2", "failed", amount=5), m.MALFORMED),
        (result(account_id, "../x", "succeeded"), m.MALFORMED),
        (result(account_id, "no-such-hold", "succeeded"), "hold_not_found"),
        (result(unknown_account, "order-2", "succeeded"), "account_not_found"),
        (result("EU-9-00000000000000aa", "order-2", "succeeded"), "account_not_found"),
        (result(account_id, "order-2", "succeeded", amount=501), "amount_exceeds_hold"),
    ]
    for body, _ in poisons:
        await harness.publish(body, {"x-gateway": "gw-1", "Nats-Msg-Id": uuid.uuid4().hex})
    await harness.publish(result(account_id, "order-2", "failed", id="pay-after"))
    await harness.until(lambda: harness.settled() >= len(poisons) + 1, "every message settled")
    assert state(service, account_id) == (1_000, 0, "active")  # released, nothing captured
    assert (await hold_of(service, account_id, "order-2"))["status"] == "released"
    dead = await harness.dead_letters(len(poisons))
    by_body = {body: headers for body, headers in dead}
    for body, reason in poisons:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        assert by_body[raw][m.REASON_HEADER] == reason, (raw, by_body[raw])
        assert by_body[raw][m.DETAIL_HEADER]
        assert by_body[raw]["x-gateway"] == "gw-1"  # the gateway's headers go along
    assert harness.count("balance_payment_results_dead_lettered_total", reason=m.MALFORMED) == 6
    assert harness.count("balance_payment_results_applied_total", result="failed", outcome="applied") == 1
    assert harness.count("balance_payment_results_conflicts_total") == 0
    check_books(service)


async def test_succeeded_after_release_or_expiry_is_a_recorded_conflict(harness: Harness) -> None:
    service, clock = harness.service, harness.build.clock
    released = await funded_hold(service, "order-3", 300)
    assert (await service.execute(c.ReleaseHold(released, "order-3"))).status == 200
    expired = await funded_hold(service, "order-4", 200)
    clock.now += 601 * 1_000_000  # past the hold's expiry (the sweep or the capture expires it)
    await harness.publish(result(released, "order-3", "succeeded", id="pay-3"))
    await harness.publish(result(expired, "order-4", "succeeded", amount=100, id="pay-4"))
    await harness.until(lambda: harness.settled() >= 2, "both results settled")
    await harness.publish(result(released, "order-3", "succeeded", id="pay-3"))  # sent again: no second event
    await harness.until(lambda: harness.settled() >= 3, "the one sent again")
    assert state(service, released) == (1_000, 0, "active")  # the money did not move
    assert state(service, expired) == (1_000, 0, "active")
    assert (await hold_of(service, expired, "order-4"))["status"] == "expired"
    dead = await harness.dead_letters(3)
    assert sorted(headers[m.REASON_HEADER] for _, headers in dead) == [m.RESULT_CONFLICT] * 3
    assert sorted(headers[m.MESSAGE_ID_HEADER] for _, headers in dead) == ["pay-3", "pay-3", "pay-4"]
    assert harness.count("balance_payment_results_conflicts_total") == 3  # every delivery is counted
    assert harness.count("balance_payment_results_dead_lettered_total", reason=m.RESULT_CONFLICT) == 3
    conflicts = [e for e in await all_events(service) if e["type"] == cat.HOLD_RESULT_CONFLICT]
    assert len(conflicts) == 2  # one event per result
    assert {e["account_id"]: e["data"]["hold"]["status"] for e in conflicts} == {
        released: "released",
        expired: "expired",
    }
    mine = next(e for e in conflicts if e["account_id"] == expired)
    assert mine["data"]["result"] == {
        "id": "pay-4", "account_id": expired, "hold_id": "order-4", "result": "succeeded", "amount": 100,
    }  # fmt: skip
    assert mine["data"]["account"]["balance"] == 1_000
    assert mine["id"] == f"EU-0-e{mine['seq']}.{cat.HOLD_RESULT_CONFLICT}"
    check_books(service)


async def test_partial_capture_then_a_different_amount_is_refused(harness: Harness) -> None:
    service = harness.service
    account_id = await funded_hold(service, "order-5", 500)
    await harness.publish(result(account_id, "order-5", "succeeded", amount=200, id="pay-5"))
    await harness.until(lambda: harness.settled() >= 1, "the capture")
    assert state(service, account_id) == (800, 0, "active")
    assert await hold_of(service, account_id, "order-5") == {
        "status": "captured",
        "amount": 500,
        "captured_amount": 200,
    }
    await harness.publish(result(account_id, "order-5", "succeeded", amount=300, id="pay-5b"))  # another amount
    await harness.publish(result(account_id, "order-5", "failed", id="pay-5c"))  # captured, and failed?
    await harness.publish(result(account_id, "order-5", "succeeded", amount=200, id="pay-5d"))  # the same again
    await harness.until(lambda: harness.settled() >= 4, "three more settled")
    assert state(service, account_id) == (800, 0, "active")
    dead = await harness.dead_letters(2)
    assert {headers[m.MESSAGE_ID_HEADER]: headers[m.REASON_HEADER] for _, headers in dead} == {
        "pay-5b": "hold_not_pending",
        "pay-5c": "hold_not_pending",
    }
    assert harness.count("balance_payment_results_applied_total", result="succeeded", outcome="replayed") == 1
    check_books(service)


async def test_failed_releases_and_a_capture_to_another_shard_moves_the_money(harness: Harness) -> None:
    service = harness.service
    payer = await funded_hold(service, "order-6", 400)
    merchant = await account(service, 1)
    assert (await service.execute(c.PlaceHold(payer, "order-7", 250, 600, merchant))).status == 201
    await harness.publish(result(payer, "order-6", "failed", id="pay-6"))
    await harness.publish(result(payer, "order-7", "succeeded", id="pay-7"))
    await harness.publish(result(payer, "order-6", "failed", id="pay-6"))  # redelivered
    await harness.until(lambda: harness.settled() >= 3, "three settled")
    assert (await hold_of(service, payer, "order-6"))["status"] == "released"
    assert (await hold_of(service, payer, "order-7"))["status"] == "captured"
    assert state(service, payer) == (750, 0, "active")
    await harness.until(lambda: state(service, merchant)[0] == 250, "the leg on the other shard")
    check_books(service)


async def test_a_result_for_an_unavailable_shard_is_not_acknowledged_until_it_applies(harness: Harness) -> None:
    service = harness.service
    account_id = await funded_hold(service, "order-8", 500)
    storage = service.engine_for(account_id).storage  # type: ignore[union-attr]
    storage.down()  # the shard's database is away: its commits fail, the shard is not ready
    await harness.publish(result(account_id, "order-8", "succeeded", amount=120, id="pay-8"))
    await harness.until(lambda: harness.count("balance_payment_results_retries_total") >= 2, "retries")
    assert harness.settled() == 0  # neither acknowledged nor dead-lettered
    assert (await hold_of(service, account_id, "order-8"))["status"] == "pending"
    storage.up()
    await harness.until(lambda: harness.settled() >= 1, "applied once the shard is back", timeout_s=30)
    assert state(service, account_id) == (880, 0, "active")
    assert harness.count("balance_payment_results_applied_total", result="succeeded", outcome="applied") == 1
    assert await harness.dead_letters(1, timeout_s=1) == []
    check_books(service)


async def test_acknowledgements_out_of_order_keep_the_channel_open() -> None:
    """Tag 2 is acknowledged alone, then tag 1 alone, then 4 and 3. The coalesced ``multiple``
    acknowledgement must not name tag 2 again: the broker closes the channel on an unknown
    delivery tag, and every result after it waited for a reconnect (a test above timed out)."""
    from balance.results.amqp import Acks

    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"test-acks-{uuid.uuid4().hex[:8]}")
        for body in (b"1", b"2", b"3", b"4"):
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue.name)
        raw = await channel.get_underlay_channel()
        tags: list[int] = []
        got = asyncio.Event()

        async def on_message(message: Any) -> None:
            tags.append(message.delivery.delivery_tag)
            if len(tags) == 4:
                got.set()

        await raw.basic_consume(queue.name, on_message)
        await asyncio.wait_for(got.wait(), 10)
        acks = Acks(raw)
        for batch in ([tags[1]], [tags[0]], [tags[3], tags[2]]):
            for tag in batch:
                acks.ack(tag)
            await asyncio.sleep(0.05)  # the flush goes out in the loop's next turn
            assert acks._sending is not None
            await acks._sending
        await asyncio.sleep(0.2)  # a broker's channel.close would arrive by now
        assert not raw.is_closed, "the broker closed the channel"
        await channel.close()  # what it had not acknowledged goes back to the queue
        other = await connection.channel()
        declared = await other.declare_queue(queue.name, passive=True)
        assert declared.declaration_result.message_count == 0  # all four were acknowledged
        await declared.delete()
    finally:
        await connection.close()
