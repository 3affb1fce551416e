"""What the benchmarks share: percentiles, free loopback ports, a throw-away database and a gunicorn server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")


def cpu_seconds(pids) -> float:
    """CPU time (user + system) the processes ``pids`` have used so far; a process gone counts 0 (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    return total / os.sysconf("SC_CLK_TCK")


class CpuSplit:
    """Where an operation's CPU goes, by process: this (client) process, the server's processes, PostgreSQL's backends
    of the benchmark's database. CPU time, unlike wall time, barely moves with the machine's load."""

    def __init__(self, database_url: str, server_pids=()) -> None:
        self.server_pids = list(server_pids)
        self.database = database_url.rsplit("/", 1)[1]
        self._admin = psycopg.connect(f"{PG}/postgres", autocommit=True)
        self.totals: dict[str, dict[str, float]] = {}
        self.counts: dict[str, int] = {}

    def _backends(self) -> list[int]:
        rows = self._admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,))
        return [row[0] for row in rows]

    @contextmanager
    def measure(self, side: str, operations: int) -> Iterator[None]:
        backends = self._backends()
        start = time.process_time(), cpu_seconds(self.server_pids), cpu_seconds(backends)
        yield
        end = time.process_time(), cpu_seconds(self.server_pids), cpu_seconds(backends)
        totals = self.totals.setdefault(side, {"client": 0.0, "server": 0.0, "postgres": 0.0})
        for part, before, after in zip(("client", "server", "postgres"), start, end, strict=True):
            totals[part] += after - before
        self.counts[side] = self.counts.get(side, 0) + operations

    def per_operation_ms(self, side: str) -> dict[str, float]:
        return {part: seconds / self.counts[side] * 1000 for part, seconds in self.totals[side].items()}

    def close(self) -> None:
        self._admin.close()


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that ``finally`` blocks (servers, databases) run as on Ctrl-C."""

    def raise_exit(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, raise_exit)


@contextmanager
def bench_database(*, migrate: bool = True, settings_module: str = "revive_site.settings") -> Iterator[str]:
    """A fresh PostgreSQL database for one benchmark run, migrated, and always dropped afterwards
    (also on failure and Ctrl-C). Yields its URL; Django in this process is set up on it."""
    dbname = f"revive_bench_{os.getpid()}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{dbname}"')
    url = f"{PG}/{dbname}"
    try:
        os.environ.update(
            DATABASE_URL=url,
            DATABASE_CONN_MAX_AGE="600",
            SECRET_KEY=os.environ.get("SECRET_KEY", "bench-only"),
            DJANGO_SETTINGS_MODULE=settings_module,
            LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
        )
        if settings_module == "revive_site.settings":
            os.environ.pop("REDIS_URL", None)  # Celery eager: nothing to queue in these benchmarks
        if migrate:
            print(f"bench: database {dbname}; migrating…", flush=True)
            subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=dict(os.environ), check=True)
        import django

        django.setup()
        yield url
    finally:
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: BLE001 -- Django may not be set up yet; the drop below is what matters
            pass
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        print(f"bench: database {dbname} dropped", flush=True)


def process_group(pgid: int) -> list[int]:
    """The processes of the process group ``pgid`` (Linux /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[2]) == pgid:
                        members.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    return members


class Served(str):
    """The URL of a server this benchmark started, with the id of its process group."""

    pgid: int


@contextmanager
def gunicorn(
    *, workers: int = 2, threads: int = 4, worker_class: str = "gthread", start_timeout: float = 120.0
) -> Iterator[Served]:
    """Revive under gunicorn on a free loopback port, with this process's environment; yields its URL.

    Its processes (master and workers) are one process group; ``process_group(served.pgid)`` lists them.

    Waits (up to ``start_timeout``: a loaded 2-core machine can take a while to import Django in every
    worker) until every worker answers, and always stops it, its workers included.
    """
    import httpx

    port = free_port()
    server = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/gunicorn"),
            "revive_site.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--worker-class",
            worker_class,
            "--threads",
            str(threads),
            "--log-level",
            "warning",
            "--keep-alive",
            "30",
        ],
        cwd=ROOT,
        env=dict(os.environ),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        answered = 0
        while answered < workers * 4:  # several answers in a row: the workers have imported the project
            try:
                httpx.get(f"{url}/api/v1/openapi.json", timeout=5)
                answered += 1
            except httpx.TransportError:
                if server.poll() is not None:
                    raise SystemExit(f"bench: gunicorn exited with {server.returncode} while starting") from None
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench: gunicorn did not answer within {start_timeout:.0f}s") from None
                time.sleep(0.2)
        served = Served(url)
        served.pgid = server.pid  # start_new_session: the master leads the group
        yield served
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(5)
