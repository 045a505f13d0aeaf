"""Fault injection shared by the integration tests (real storage, one step made to fail)."""

from __future__ import annotations

from typing import Any

import asyncmy

from balance.storage.mariadb import MariaDbShardStorage


class LosesTheConnectionAtXaCommit(MariaDbShardStorage):
    """The server drops the writer connection just before ``XA COMMIT`` (when armed): the branch
    is prepared, and whether it commits is for the storage to settle."""

    armed = False

    @classmethod
    def like(cls, storage: MariaDbShardStorage) -> LosesTheConnectionAtXaCommit:
        return cls(storage.host, storage.port, storage.user, storage._password, storage.database)

    async def _xa_commit(self, cur: Any, xid: str) -> None:
        if self.armed:
            self.armed = False
            admin = await asyncmy.connect(host=self.host, port=self.port, user=self.user, password=self._password)
            try:
                async with admin.cursor() as admin_cur:
                    await admin_cur.execute(f"KILL CONNECTION {int(cur.connection.server_thread_id[0])}")
            finally:
                await admin.ensure_closed()
        await super()._xa_commit(cur, xid)
