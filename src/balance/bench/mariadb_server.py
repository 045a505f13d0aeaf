"""A private mariadbd: its own data directory and port, root without a password on 127.0.0.1.

For the tests of a database that goes away (started, SIGKILLed, started again) and for the
bench's ``--private-mariadb CNF``, which measures against a server configured with the
project's settings (``deploy/mariadb/balance.cnf``) instead of whatever the machine's server
has. Debian's ``mariadbd`` and ``mariadb-install-db`` binaries; nothing of the machine's own
server is touched."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

# The tests' server: small, durable (they kill it and check what survived).
TEST_OPTIONS = ("--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=1", "--max-connections=500")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(port: int) -> bool:
    """Does a server on ``port`` send its handshake?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            return len(sock.recv(64)) > 0
    except OSError:
        return False


def _mariadbd() -> str | None:
    return shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/local/sbin")


def _install_db() -> str | None:
    return shutil.which("mariadb-install-db")


def installed() -> bool:
    """Are Debian's binaries here (apt-get install mariadb-server)?"""
    return _mariadbd() is not None and _install_db() is not None


class PrivateMariaDb:
    """A mariadbd in ``base`` (keep the path short: the socket's has a length limit), with the
    settings of ``config`` (a my.cnf file, read alone) or the tests' small ones. ``kill()`` is
    SIGKILL (a crash: InnoDB recovers at the next start)."""

    def __init__(self, base: Path, config: Path | None = None) -> None:
        self.base = base
        self.config = config
        self.data = base / "data"
        self.port = free_port()
        self.log_path = base / "mariadbd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.mariadbd = _mariadbd()
        self.install_db = _install_db()

    def url(self, database: str = "balance_private") -> str:
        return f"mysql://root:@127.0.0.1:{self.port}/{database}"

    def _defaults(self) -> list[str]:
        return [f"--defaults-file={self.config}"] if self.config is not None else ["--no-defaults"]

    def install(self) -> None:
        assert self.install_db is not None
        user = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run(
            [self.install_db, *self._defaults(), f"--datadir={self.data}", "--auth-root-authentication-method=normal",
             "--skip-test-db", *user],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip

    def start(self, timeout_s: float = 60.0) -> None:
        """Start it (the same data and port every time) and wait until it answers."""
        assert self.mariadbd is not None and not self.alive
        user = ["--user=root"] if os.geteuid() == 0 else []
        options = [] if self.config is not None else list(TEST_OPTIONS)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.mariadbd, *self._defaults(), f"--datadir={self.data}", f"--port={self.port}",
                 "--bind-address=127.0.0.1", f"--socket={self.base / 'sock'}", f"--pid-file={self.base / 'pid'}",
                 "--skip-name-resolve", *options, *user],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"mariadbd exited at start:\n{self.log_tail()}")
            if answers(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"mariadbd did not answer within {timeout_s}s:\n{self.log_tail()}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, and wait until it is gone."""
        if self.proc is not None:
            if self.alive:
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), and wait until it is gone."""
        if self.proc is not None:
            if self.alive:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no mariadbd log)"
