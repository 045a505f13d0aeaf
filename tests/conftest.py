"""Shared test helpers: where the test MariaDB is, and whether it is reachable.

``BALANCE_TEST_MYSQL_URL`` (default ``mysql://root:@127.0.0.1:3306/balance_test``) names the server;
tests derive uniquely named databases from the database name in it. When the server cannot be
reached, MariaDB tests are skipped locally and FAIL in CI (``CI`` set to any true value: 1, true,
yes, on): in CI a missing database is a broken pipeline, not a reason to go green.

``private_mariadb`` starts a mariadbd of the test's own (Debian's ``mariadbd`` and
``mariadb-install-db``): its own port and data directory under /tmp, started, SIGKILLed and
started again by the test, for tests of a database that goes away.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import asyncmy
import pytest

from balance.bench.mariadb_server import PrivateMariaDb, installed
from balance.storage.mariadb_url import connect_kwargs, redacted
from ci import skip_or_fail

MYSQL_URL_ENV = "BALANCE_TEST_MYSQL_URL"
DEFAULT_MYSQL_URL = "mysql://root:@127.0.0.1:3306/balance_test"

_reachability: dict[str, str | None] = {}  # url -> None (reachable) or why not, once per session


def mysql_url() -> str:
    return os.environ.get(MYSQL_URL_ENV) or DEFAULT_MYSQL_URL


def mysql_connect_kwargs(url: str) -> dict[str, object]:
    """asyncmy.connect() arguments for the server of ``url`` (no database selected)."""
    return {**connect_kwargs(url), "connect_timeout": 3}


async def mariadb_unreachable_reason(url: str) -> str | None:
    """None if a MariaDB server answers at ``url``, else why not (checked once per URL)."""
    if url not in _reachability:
        try:
            conn = await asyncmy.connect(**mysql_connect_kwargs(url))
            try:
                async with conn.cursor() as cur:
                    await cur.execute("SELECT 1")
            finally:
                await conn.ensure_closed()
            _reachability[url] = None
        except Exception as exc:  # anything: refused, timeout, bad credentials
            _reachability[url] = f"{type(exc).__name__}: {exc}"
    return _reachability[url]


async def require_mariadb(url: str | None = None) -> str:
    """The test MariaDB URL; skips the test if the server is unreachable, fails it when CI=true."""
    url = url or mysql_url()
    reason = await mariadb_unreachable_reason(url)
    if reason is not None:
        shown = redacted(url)
        message = f"MariaDB not reachable at {shown} ({reason}); start it or set {MYSQL_URL_ENV}"
        skip_or_fail(message)
    return url


@pytest.fixture(scope="session")
def mariadb_required() -> Callable[[], Awaitable[str]]:
    """``await mariadb_required()``: the test MariaDB URL; skips the test (fails it when CI=true)
    if the server is unreachable. Await it only where MariaDB is needed, so that tests of other
    backends run without a server."""
    return require_mariadb


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compiled modules (mypyc, setup.py) shadow their .py files: a .py edited after the last
    build would not be what the tests run. Stop and say so (``make test`` rebuilds)."""
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "src" / "balance"
    for compiled in package.rglob("*.so"):
        source = compiled.parent / (compiled.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > compiled.stat().st_mtime:
            raise pytest.UsageError(f"{compiled.name} is older than {source.name}: run `make` (pip install -e .) again")


# ---- a private mariadbd ------------------------------------------------------------------------


@pytest.fixture
def private_mariadb() -> Iterator[PrivateMariaDb]:
    """A private mariadbd, installed and started (skipped without the binaries; failed in CI)."""
    base = Path(tempfile.mkdtemp(prefix="balance-mdb-"))  # short: the socket path has a length limit
    server = PrivateMariaDb(base)
    try:
        if not installed():
            skip_or_fail("mariadbd / mariadb-install-db not installed (Debian: apt-get install mariadb-server)")
        server.install()
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(base, ignore_errors=True)
