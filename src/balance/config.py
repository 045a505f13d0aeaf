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
        )
