"""Configuration from the environment (the same variables for `make run` and production)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Settings:
    host: str
    port: int
    data_dir: Path
    admin_key: str
    admin_key_generated: bool
    shards: int
    db_url: str | None
    checkpoint_interval_s: float = 2.0  # how often the holds and accounts tables are brought up to date
    http_server: str = "builtin"  # the built-in HTTP/1.1 server (balance.api.http1), or "uvicorn"
    # The fleet (docs/fleet.md): the shard directory (None: SQLite in the data directory), and
    # this node's id and advertised URL (no node id: one process serving every shard, as before).
    directory_url: str | None = None
    node_id: str | None = None
    node_url: str | None = None
    region: str = "US"
    lease_s: float = 5.0  # an owner that has not renewed its lease for this long loses its shards
    fleet_secret: str | None = None  # nodes authenticate forwarded requests with it (none: no forwarding)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        admin_key = env.get("BALANCE_ADMIN_KEY", "")
        shards = int(env.get("BALANCE_SHARDS", "1"))
        if not 1 <= shards <= 1024:
            raise ValueError("BALANCE_SHARDS must be between 1 and 1024")
        checkpoint_interval_s = float(env.get("BALANCE_CHECKPOINT_INTERVAL_S", "2"))
        if not 0 <= checkpoint_interval_s <= 3600:
            raise ValueError("BALANCE_CHECKPOINT_INTERVAL_S must be between 0 and 3600 seconds")
        http_server = env.get("BALANCE_HTTP_SERVER") or "builtin"
        if http_server not in ("builtin", "uvicorn"):
            raise ValueError("BALANCE_HTTP_SERVER must be builtin or uvicorn")
        lease_s = float(env.get("BALANCE_LEASE_S", "5"))
        if not 0.5 <= lease_s <= 600:
            raise ValueError("BALANCE_LEASE_S must be between 0.5 and 600 seconds")
        node_id = env.get("BALANCE_NODE_ID") or None
        if node_id is not None and not (node_id.replace("-", "").replace("_", "").isalnum() and len(node_id) <= 64):
            raise ValueError("BALANCE_NODE_ID: letters, digits, - and _ (at most 64)")
        return cls(
            host=env.get("BALANCE_HOST", "127.0.0.1"),
            port=int(env.get("BALANCE_PORT", "8080")),
            data_dir=Path(env.get("BALANCE_DATA_DIR", "./data")),
            admin_key=admin_key or "adm_" + secrets.token_urlsafe(32),
            admin_key_generated=not admin_key,
            shards=shards,
            db_url=env.get("BALANCE_DB_URL") or None,
            checkpoint_interval_s=checkpoint_interval_s,
            http_server=http_server,
            directory_url=env.get("BALANCE_DIRECTORY_URL") or None,
            node_id=node_id,
            node_url=env.get("BALANCE_NODE_URL") or None,
            region=env.get("BALANCE_REGION") or "US",
            lease_s=lease_s,
            fleet_secret=env.get("BALANCE_FLEET_SECRET") or None,
        )
