"""Private Redis and PostgreSQL servers on free loopback ports, for tests that restart or kill them.

Never the machine's shared servers (127.0.0.1:6379 / :5432): those belong to every test run on the machine.
Each server is a child of this process that dies with it (``lab.processes``), its data in a directory of its own.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from bench.common import free_port
from lab.processes import spawn, stop


def _wait(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


class PrivateRedis:
    """``redis-server`` on a free port. ``restart(keep_data=True)`` is a graceful restart (SHUTDOWN SAVE, the data
    reloaded from its dump); ``restart(keep_data=False)`` loses everything (SHUTDOWN NOSAVE, dump removed)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> PrivateRedis:
        log = open(self.dir / "redis.log", "ab")
        self.process = spawn(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
                "--protected-mode",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        _wait(self.ping, f"redis on {self.port}")
        return self

    def ping(self) -> bool:
        try:
            return self.command("PING") == b"+PONG"
        except OSError:
            return False

    def command(self, *words: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            payload = f"*{len(words)}\r\n" + "".join(f"${len(w.encode())}\r\n{w}\r\n" for w in words)
            sock.sendall(payload.encode())
            return sock.recv(65536).strip()

    def shutdown(self, *, keep_data: bool) -> None:
        with contextlib.suppress(OSError):
            self.command("SHUTDOWN", "SAVE" if keep_data else "NOSAVE")
        if self.process is not None:
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                stop(self.process, sig=signal.SIGKILL)
        if not keep_data:
            (self.dir / "dump.rdb").unlink(missing_ok=True)

    def restart(self, *, keep_data: bool = True, down_for: float = 1.0) -> None:
        self.shutdown(keep_data=keep_data)
        time.sleep(down_for)
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, sig=signal.SIGKILL, grace=5)
            self.process = None


def postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"no PostgreSQL {name} under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    return found[-1]


class PrivatePostgres:
    """A PostgreSQL cluster of its own (``initdb`` into a temporary directory) on a free port, trust auth.

    The postmaster runs in the foreground as this process's child (as the ``postgres`` user when this process is
    root: PostgreSQL refuses to run as root). ``restart()`` is a fast shutdown and a start on the same data."""

    def __init__(self, port: int | None = None) -> None:
        # Under /tmp, not pytest's tmp_path: the postgres user must be able to reach it.
        self.dir = Path(tempfile.mkdtemp(prefix="revive-private-pg-"))
        self.data = self.dir / "data"
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.user: tuple[int, int] | None = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            self.user = (entry.pw_uid, entry.pw_gid)
        self.restarts = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> PrivatePostgres:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(self.dir, self.user[0], self.user[1])
        log = open(self.dir / "initdb.log", "ab")
        process = spawn(
            [postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            user=self.user,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        log.close()
        if process.wait(120) != 0:
            raise RuntimeError(f"initdb failed:\n{(self.dir / 'initdb.log').read_text()[-2000:]}")
        return self

    def start(self) -> PrivatePostgres:
        log = open(self.dir / "postgres.log", "ab")
        if self.user:
            os.fchown(log.fileno(), *self.user)
        self.process = spawn(
            [
                postgres_bin("postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.dir),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            user=self.user,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        log.close()
        _wait(self.ready, f"postgres on {self.port}", timeout=120)
        return self

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"postgres exited:\n{(self.dir / 'postgres.log').read_text()[-2000:]}")
        try:
            with psycopg.connect(self.url(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def shutdown(self) -> None:
        """A fast shutdown (SIGINT to the postmaster: sessions are ended, data is kept)."""
        if self.process is not None:
            stop(self.process, sig=signal.SIGINT, grace=60)

    def restart(self, *, down_for: float = 1.0) -> None:
        self.shutdown()
        time.sleep(down_for)
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, sig=signal.SIGINT, grace=30)
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)
