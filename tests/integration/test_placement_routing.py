"""A single process routes by placement overrides too (a fleet node's service reads them from
the directory; here they are set by hand on two real shards, SQLite and MariaDB): commands for
an overridden account go to its shard, and a creation under a client id whose account has an
override is made, and replayed, where the override says, never again on the shard its id names."""

from __future__ import annotations

import json

from two_shards import Build

from balance.domain import commands as c
from balance.domain.ids import client_account_suffix
from balance.domain.model import ACCOUNT_BALANCE


async def test_a_creation_under_a_client_id_goes_where_its_account_lives(build: Build) -> None:
    service = build()
    await service.start()
    create = c.CreateAccount("", None, "partner", "EU", "EUR", "p", 0, b"{}", client_id="moved-1")
    suffix = client_account_suffix(None, "moved-1")
    home = int(suffix, 16) % 2
    account_id = f"EU-{home}-{suffix}"
    service.placement.override([(account_id, 1 - home)])
    first = await service.create_account(create)
    assert first.status == 201 and json.loads(first.body)["id"] == account_id
    assert service.shards[1 - home].account_state(account_id) is not None
    assert service.shards[home].account_state(account_id) is None  # never made on the shard its id names
    again = await service.create_account(create)
    assert again.status == 201 and again.replayed and json.loads(again.body)["id"] == account_id
    credited = await service.execute(c.Credit(account_id, "cr-1", 25))
    assert credited.status == 201, credited.body
    state = service.shards[1 - home].account_state(account_id)
    assert state is not None and state[ACCOUNT_BALANCE] == 25
    service.placement.override([(account_id, None)])  # the override gone: the id's shard, which has nothing
    assert (await service.execute(c.Credit(account_id, "cr-2", 5))).status == 404
