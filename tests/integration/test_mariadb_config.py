"""``deploy/mariadb/balance.cnf`` (docs/mariadb.md) on a real mariadbd: the bench's
``--private-mariadb`` starts a private server with it, and every setting in the file is what
that server runs with (a misspelt or refused setting fails here, not in a user's restart)."""

from __future__ import annotations

import asyncio
import configparser
import os
from pathlib import Path

from balance.bench import ours
from balance.bench.command import SERVER_SETTINGS, mariadb_server
from balance.bench.mariadb_server import installed
from ci import skip_or_fail

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "mariadb" / "balance.cnf"
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _expected(value: str) -> str:
    """The server's spelling of a my.cnf value: sizes in bytes, switches as ON/OFF."""
    if value[-1:] in UNITS and value[:-1].isdigit():
        return str(int(value[:-1]) * UNITS[value[-1]])
    return value


def test_a_private_server_runs_with_every_setting_of_the_project_s_configuration() -> None:
    if not installed():
        skip_or_fail("mariadbd / mariadb-install-db not installed (Debian: apt-get install mariadb-server)")
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    wanted = {name.replace("-", "_"): _expected(value) for name, value in parser["mysqld"].items()}
    assert wanted["innodb_flush_log_at_trx_commit"] == "1"  # durability is not a tuning knob
    saved = os.environ.get("BALANCE_TEST_MYSQL_URL")
    with mariadb_server(str(CONFIG), wanted=True):
        url = os.environ["BALANCE_TEST_MYSQL_URL"]
        assert url != saved and url.startswith("mysql://root:@127.0.0.1:")
        running = asyncio.run(ours.mariadb_variables(tuple(wanted)))
        reported = asyncio.run(ours.mariadb_variables(SERVER_SETTINGS))
    assert running == wanted
    assert int(reported["innodb_log_file_size"]) >= 1 << 30
    assert os.environ.get("BALANCE_TEST_MYSQL_URL") == saved  # the machine's server again afterwards
