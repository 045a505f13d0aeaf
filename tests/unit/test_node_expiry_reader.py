"""A fleet node's expiry job reads the database its engine writes (as the directory names it),
as the job's own SELECT-only user when ``BALANCE_EXPIRY_DB_URL`` is set."""

from __future__ import annotations

from pathlib import Path

from balance.expiry.config import ExpiryConfig
from balance.expiry.node import reader_of
from balance.expiry.reader import MariaDbReader, SqliteReader
from balance.storage.mariadb import MariaDbShardStorage
from balance.storage.sqlite import SqliteShardStorage


def test_a_sqlite_shard_is_read_from_its_own_file(tmp_path: Path) -> None:
    reader = reader_of(SqliteShardStorage(tmp_path / "fleet-shard-7.db"), ExpiryConfig())
    assert isinstance(reader, SqliteReader) and reader.path == (tmp_path / "fleet-shard-7.db").resolve()


def test_a_mariadb_shard_is_read_as_the_jobs_user_when_one_is_given() -> None:
    storage = MariaDbShardStorage("db.internal", 3307, "writer", "w-secret", "fleet_s3")
    own = reader_of(storage, ExpiryConfig())
    assert isinstance(own, MariaDbReader)
    assert own._connect_kwargs == {  # noqa: SLF001
        "host": "db.internal", "port": 3307, "user": "writer", "password": "w-secret", "database": "fleet_s3",
    }  # fmt: skip
    job = reader_of(storage, ExpiryConfig(db_url="mysql://expiry:r-secret@elsewhere:3306/ignored"))
    assert isinstance(job, MariaDbReader)
    assert job._connect_kwargs == {  # noqa: SLF001
        "host": "db.internal", "port": 3307, "user": "expiry", "password": "r-secret", "database": "fleet_s3",
    }  # fmt: skip
