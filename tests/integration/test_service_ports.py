"""The service reaches its shards through ``ShardPort`` alone (``balance.shards``): with its
engines out of its reach, as a shard in another process would be, API keys are created,
stamped by the shard's clock, checked against the account's status, revoked, and loaded again
at the next start, all through the ports. Real SQLite shards; only time is a double."""

from __future__ import annotations

import json
from pathlib import Path

from balance import bootstrap
from balance.config import Settings
from balance.domain import authority as a
from balance.domain import commands as c
from balance.engine.clock import ManualClock
from balance.service import BalanceService


def service_over_ports(tmp_path: Path, clock: ManualClock) -> BalanceService:
    settings = Settings.from_env(
        {"BALANCE_DATA_DIR": str(tmp_path), "BALANCE_ADMIN_KEY": "admin", "BALANCE_SHARDS": "2"}
    )
    service = bootstrap.build_service(settings, clock=clock, on_fatal=lambda exc: None)
    service.engines = []  # what the service still reached of an engine directly now fails
    return service


async def test_keys_are_created_checked_revoked_and_loaded_through_the_ports(tmp_path: Path) -> None:
    clock = ManualClock()
    service = service_over_ports(tmp_path, clock)
    await service.start()
    created = await service.create_account(c.CreateAccount("", None, "partner", "US", "USD", "P", 0, b"{}"))
    assert created.status == 201, created.body
    account_id = json.loads(created.body)["id"]
    clock.advance(5)
    reply, key = await service.create_key(account_id, a.READ | a.MOVE)
    assert reply.status == 201 and key is not None, reply.body
    record = service.keys.by_id[json.loads(reply.body)["key_id"]]
    assert record.created_at == clock()  # stamped by the shard's clock, through its port
    actor = service.actor(key)
    assert actor is not None and (actor.principal, actor.scopes) == (account_id, a.READ | a.MOVE)
    assert service.chain(account_id) == (account_id,)

    frozen = await service.execute(c.UpdateAccount(account_id, status="frozen"))
    assert frozen.status == 200, frozen.body
    actor = service.actor(key)
    assert actor is not None and actor.scopes == a.READ  # the account's status, read through the port
    assert (await service.execute(c.UpdateAccount(account_id, status="active"))).status == 200
    await service.stop()

    clock.advance(5)
    service = service_over_ports(tmp_path, clock)
    await service.start()  # the keys are loaded through the ports
    assert service.ready
    assert service.principal(key) == account_id
    revoked = await service.revoke_key(account_id, record.key_id)
    assert revoked.status == 200, revoked.body
    assert service.keys.by_id[record.key_id].revoked_at == clock()
    assert service.actor(key) is None
    await service.stop()

    service = service_over_ports(tmp_path, clock)
    await service.start()
    assert service.actor(key) is None  # the revocation was stored
    assert [view["key_id"] for view in service.list_keys(account_id)] == [record.key_id]
    await service.stop()
