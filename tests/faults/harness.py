"""The fault harness: real processes, one fault per trial, the recovery contract checked after each.

A ``Stack`` is started once: a private PostgreSQL cluster and a private ``redis-server`` on free ports (the
machine's shared servers are never touched), Revive's web (gunicorn), a Celery worker and Celery beat on them,
and each runtime asked for -- LangGraph (a runner process per run, the checkpointer in PostgreSQL), the Temporal
test server with a worker process, ``restate-server`` with the suite's service under hypercorn. Every process is a
child that dies with the harness (``lab.processes``), also when the harness is killed.

A trial runs one workflow of three protected sends (``support/steps.py``) on a fresh connection: the credential
dies before ``send_2``, the run parks, the owner is e-mailed, reconnects through Revive's verified-reconnect
service (``reauth.services.reconnect_request_complete`` with the recorded identity), the run resumes and sends
``send_2`` and ``send_3``. One fault of the trial's kind is injected at its point. Then the invariants:

* each send's effect observed exactly once at the counting service (``World.effects``: duplicates counted);
* the run finished, or is in an operator-visible state (a case ``resume_failed`` / ``awaiting_approval``), by
  the deadline -- otherwise it is *stuck*, with the state the harness saw;
* one case per (connection, generation); one generation advance per reconnect.

Trials run several at a time (each on its own connection and run); faults that hit shared servers are injected
one at a time, and what they do to the other trials in flight is part of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import httpx

from lab.processes import spawn, stop
from tests.runtimes.support.world import World

from .servers import PrivatePostgres, PrivateRedis, free_port
from .support.steps import SENDS

ROOT = Path(__file__).resolve().parents[2]
RUNTIMES = ("langgraph", "temporal", "restate")
KINDS = (
    "kill_before_execute",  # SIGKILL of the workflow process between begin and the provider call (send_1)
    "kill_after_accept",  # SIGKILL after the provider accepted send_1, before the commit
    "kill_parked",  # SIGKILL of the workflow process while the run is parked
    "pool_kill_resume",  # SIGKILL of a Celery pool process during the resume
    "worker_kill_resume",  # SIGKILL of the whole Celery worker during the resume, then a restart
    "redis_restart_parked",  # Redis restarted (data kept) while the run is parked
    "redis_loss_parked",  # Redis restarted with its data lost while the run is parked
    "redis_restart_reconnect",  # Redis restarted (data kept) right as the owner reconnects
    "redis_loss_reconnect",  # ... with data loss
    "redis_restart_resume",  # Redis restarted (data kept) while the resumed run sends
    "redis_loss_resume",  # ... with data loss
    "postgres_restart",  # PostgreSQL restarted while the resumed run sends
    "timeout_before_death",  # send_1 times out after the provider accepted it (ambiguous), before the credential dies
    "timeout_after_death",  # the resumed send_2 times out after the provider accepted it
    "runtime_worker_down",  # the runtime's worker is down, across the resume retries, then back
)
GLOBAL_FAULTS = {k for k in KINDS if k.startswith(("redis_", "postgres_", "worker_kill", "runtime_worker"))} | {
    "pool_kill_resume"
}
OPERATOR_VISIBLE = ("resume_failed", "awaiting_approval")

# "default" is Revive's configuration as shipped; "short" shortens the locks, sweeps and retries for quick runs.
PROFILES: dict[str, dict[str, str]] = {
    "default": {},
    "short": {
        "REVIVE_ACTION_LOCK_TIMEOUT": "20",
        "REVIVE_RESUME_SWEEP_INTERVAL": "5",
        "REVIVE_RESUME_SWEEP_AFTER": "15",
        "REVIVE_RESUME_MAX_RETRIES": "4",
        "REVIVE_RESUME_BACKOFF_MAX": "4",
        "REVIVE_RUN_STALL_SECONDS": "20",
        "REVIVE_RESUME_MAX_ATTEMPTS": "3",
    },
}
# How long a whole trial may take, from its start to the run finished (or in an operator-visible state). The
# default profile allows for Revive's 300 s action lock, the reaper behind it and the 120 s sweep; the runtime
# worker's downtime comes on top. The short profile keeps the outbox claim (the task time limit + 30 s, what a
# whole killed worker leaves behind) and leaves room for a loaded two-core CI machine. A run not done by then is stuck.
DEADLINES = {"default": 600.0, "short": 480.0}
# The runtime worker stays down this long in ``runtime_worker_down``: past the resume retries of the profile.
DOWN_FOR = {"default": 420.0, "short": 40.0}
_LINK = re.compile(r"/reconnect/l/(rvr_[A-Za-z0-9_-]+)")


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:  # a server of the stack may be restarting: ask again
            value = None
            _db_reset()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


def db_retry(fn: Callable[[], Any], timeout: float = 180.0) -> Any:
    """Call ``fn`` (harness reads and writes), again while PostgreSQL restarts under it (a fault of a trial)."""
    from django.db import InterfaceError, OperationalError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (OperationalError, InterfaceError):
            _db_reset()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _db_reset() -> None:
    with contextlib.suppress(Exception):
        from django.db import close_old_connections, connection

        close_old_connections()
        connection.close()


class Managed:
    """One long-lived child of the stack (a server or worker) that faults may kill and the harness restarts."""

    def __init__(
        self,
        name: str,
        args: list[str],
        *,
        env: dict[str, str],
        log_dir: Path,
        ready: Callable[[Managed], bool],
        sig: int = signal.SIGTERM,
    ) -> None:
        self.name, self.args, self.env, self.log_path, self.ready, self.sig = (
            name,
            args,
            env,
            log_dir / f"{name}.log",
            ready,
            sig,
        )
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.lock = threading.Lock()

    def start(self, timeout: float = 180.0) -> None:
        with self.lock:
            self.starts += 1
            self.mark = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.log_path, "ab") as log:
                self.process = spawn(self.args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        if not wait_until(lambda: self._ready(), timeout, 0.2):
            raise RuntimeError(f"{self.name} did not become ready:\n{_log_tail(self.log_path)}")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited {self.process.returncode}:\n{_log_tail(self.log_path)}")
        return self.ready(self)

    def log_since_start(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self.mark)
            return f.read().decode(errors="replace")

    @property
    def pids(self) -> set[int]:
        if self.process is None:
            return set()
        out = subprocess.run(["ps", "-o", "pid=", "-g", str(self.process.pid)], capture_output=True, text=True).stdout
        return {int(p) for p in out.split()}

    def kill(self) -> None:
        if self.process is not None:
            stop(self.process, sig=signal.SIGKILL, grace=10)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, sig=self.sig, grace=20)

    def ensure(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.start()


@dataclasses.dataclass
class TrialResult:
    runtime: str
    kind: str
    run_id: str
    connection_id: str
    outcome: str  # finished | operator_visible | stuck | error
    duplicates: int = 0
    lost: int = 0
    recovery_seconds: float | None = None
    violations: list[str] = dataclasses.field(default_factory=list)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.outcome in ("finished", "operator_visible")
            and not self.duplicates
            and not self.lost
            and not self.violations
        )


class Stack:
    def __init__(
        self,
        *,
        runtimes: Iterable[str] = RUNTIMES,
        profile: str = "default",
        root: Path | None = None,
        sign_in: str = "idp",
        say: Callable[[str], None] = print,
    ) -> None:
        self.runtimes = tuple(runtimes)
        self.profile = profile
        self.sign_in = sign_in  # "idp": the owner signs in at the lab identity provider; "service": the service call
        self.idp = None
        self.root = root or Path(tempfile.mkdtemp(prefix="revive-faults-"))
        self.say = say
        self.fault_lock = threading.Lock()
        self.procs: dict[str, Managed] = {}
        self.runners: dict[str, subprocess.Popen] = {}
        self.pg: PrivatePostgres | None = None
        self.redis: PrivateRedis | None = None
        self.restate_server: subprocess.Popen | None = None
        self.temporal_server: subprocess.Popen | None = None
        self.crashes: list[str] = []
        """Unexpected exits of the stack's processes (not caused by a fault), each restarted."""

    # ------------------------------------------------------------------ start and stop

    def start(self) -> Stack:
        started = time.monotonic()
        for sub in ("logs", "world", "mail", "var"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.pg = PrivatePostgres().init().start()
        database = self.pg.create_database("revive_faults")
        self.redis = PrivateRedis(self.root / "redis").start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "REVIVE_", "DJANGO_", "CELERY_"))}
        env.update(PROFILES[self.profile])
        env.update(
            DJANGO_SETTINGS_MODULE="tests.faults.support.settings",
            DATABASE_URL=database,
            DATABASE_CONN_MAX_AGE="0",
            REDIS_URL=f"{self.redis.url}/0",
            REVIVE_CELERY_QUEUE="revive-faults",
            SECRET_KEY="revive-faults-only-not-a-secret",
            REVIVE_VAR_DIR=str(self.root / "var"),
            REVIVE_TEST_WORLD=str(self.root / "world"),
            REVIVE_FAULTS_MAILBOX=str(self.root / "mail"),
            PYTHONUNBUFFERED="1",
            LOG_LEVEL="INFO",
            PYTHONPATH=os.pathsep.join([str(ROOT / "sdk" / "python"), str(ROOT)]),
        )
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        # The LangGraph checkpoint tables, once: runners that set them up at the same moment on a fresh database
        # deadlock (CREATE INDEX CONCURRENTLY waits for the session that waits for the setup lock).
        from revive_sdk import langgraph as revive_lg

        with revive_lg.checkpointer(database):
            pass
        os.environ.update(env)
        import django

        django.setup()
        from cases import services

        _, self.api_key = services.api_key_create(name=f"faults-{uuid.uuid4().hex[:6]}", actor="faults")
        web_port = free_port()
        env.update(
            REVIVE_URL=f"http://127.0.0.1:{web_port}",
            REVIVE_API_KEY=self.api_key,
            REVIVE_PUBLIC_URL=f"http://127.0.0.1:{web_port}",
        )
        logs = self.root / "logs"
        if self.sign_in == "idp":
            from lab.idp.driver import LabIdp
            from reauth.provider_settings import LAB_PROVIDER_ID

            # Started from this (the main) thread: it dies with the harness (lab.processes).
            self.idp = LabIdp.start(
                var_dir=self.root / "idp",
                redirect_uris=[f"{env['REVIVE_URL']}/accounts/oidc/{LAB_PROVIDER_ID}/login/callback/"],
            )
            env.update(
                REVIVE_LAB_IDP_URL=self.idp.url,
                REVIVE_LAB_IDP_CLIENT_ID=self.idp.client_id,
                REVIVE_LAB_IDP_CLIENT_SECRET=self.idp.client_secret,
            )
        if "temporal" in self.runtimes:
            port = free_port()
            from tests.runtimes.conftest import temporal_test_server_path

            with open(logs / "temporal-server.log", "ab") as log:
                self.temporal_server = spawn(
                    [temporal_test_server_path(), str(port)], stdout=log, stderr=subprocess.STDOUT
                )
            env["TEMPORAL_ADDRESS"] = self.temporal_address = f"127.0.0.1:{port}"
            if not wait_until(lambda: asyncio.run(self._temporal_ping()), 120, 0.5):
                raise RuntimeError(
                    f"the Temporal test server did not answer:\n{_log_tail(logs / 'temporal-server.log')}"
                )
        if "restate" in self.runtimes:
            self._start_restate_server(env, logs)
        self.env = env
        runtime_env = {k: v for k, v in env.items() if k != "DJANGO_SETTINGS_MODULE"}

        def log_says(text: str) -> Callable[[Managed], bool]:
            return lambda m: text in m.log_since_start()

        def web_ready(m: Managed) -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{env['REVIVE_URL']}/api/v1/docs", timeout=3).status_code == 200
            return False

        self.procs["web"] = Managed(
            "web",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "revive_site.wsgi",
                "--bind",
                f"127.0.0.1:{web_port}",
                "--workers",
                "3",
                "--timeout",
                "120",
            ],
            env=env,
            log_dir=logs,
            ready=web_ready,
        )
        self.procs["celery"] = Managed(
            "celery",
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
                "3",
                "-n",
                f"faults-{os.getpid()}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
            env=env,
            log_dir=logs,
            ready=log_says(" ready."),
        )
        self.procs["beat"] = Managed(
            "beat",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "revive_site",
                "beat",
                "-l",
                "INFO",
                "-s",
                str(self.root / "var" / "beat-schedule"),
            ],
            env=env,
            log_dir=logs,
            ready=log_says("beat: Starting"),
        )
        if "temporal" in self.runtimes:
            self.task_queue = f"faults-{uuid.uuid4().hex[:6]}"
            self.procs["temporal_worker"] = Managed(
                "temporal_worker",
                [
                    sys.executable,
                    "-m",
                    "tests.faults.support.temporal_app",
                    "--address",
                    self.temporal_address,
                    "--task-queue",
                    self.task_queue,
                ],
                env=runtime_env,
                log_dir=logs,
                ready=log_says("worker ready"),
            )
        if "restate" in self.runtimes:
            self.restate_service_port = free_port()

            def service_ready(m: Managed) -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (
                        httpx.get(f"http://127.0.0.1:{self.restate_service_port}/health", timeout=2).status_code == 200
                    )
                return False

            self.procs["restate_service"] = Managed(
                "restate_service",
                [
                    sys.executable,
                    "-m",
                    "hypercorn",
                    "tests.faults.support.restate_app:app",
                    "--bind",
                    f"127.0.0.1:{self.restate_service_port}",
                ],
                env=runtime_env,
                log_dir=logs,
                ready=service_ready,
            )
        self.runtime_env = runtime_env
        for proc in self.procs.values():
            proc.start()
        if "restate" in self.runtimes:
            httpx.post(
                f"{self.restate_admin}/deployments",
                timeout=60,
                json={"uri": f"http://127.0.0.1:{self.restate_service_port}/", "force": True},
            ).raise_for_status()
        self.say(
            f"stack up in {time.monotonic() - started:.0f}s ({', '.join(self.runtimes)}; profile {self.profile}; "
            f"logs in {logs})"
        )
        return self

    def _start_restate_server(self, env: dict[str, str], logs: Path) -> None:
        from tests.restate.conftest import restate_server_binary

        admin, ingress, fabric = free_port(), free_port(), free_port()
        data = self.root / "restate"
        data.mkdir(exist_ok=True)
        renv = {
            **os.environ,
            "RESTATE_ADMIN__BIND_PORT": str(admin),
            "RESTATE_INGRESS__BIND_PORT": str(ingress),
            "RESTATE_DISABLE_TELEMETRY": "true",
            "RESTATE_LOG_DISABLE_ANSI_CODES": "true",
        }
        renv.pop("RESTATE_CONFIG", None)
        with open(logs / "restate-server.log", "ab") as log:
            self.restate_server = spawn(
                [
                    str(restate_server_binary()),
                    "--no-logo",
                    "--listen-mode=tcp",
                    "--bind-ip=127.0.0.1",
                    f"--bind-port={fabric}",
                    f"--base-dir={data}",
                    f"--node-name=faults-{admin}",
                    "--cluster-name=revive-faults",
                ],
                cwd=data,
                env=renv,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.restate_admin, self.restate_ingress = f"http://127.0.0.1:{admin}", f"http://127.0.0.1:{ingress}"
        env.update(RESTATE_ADMIN_URL=self.restate_admin, RESTATE_INGRESS_URL=self.restate_ingress)

        def ready() -> bool:
            return (
                httpx.get(f"{self.restate_admin}/health", timeout=2).status_code == 200
                and httpx.get(f"{self.restate_ingress}/restate/health", timeout=2).status_code == 200
            )

        if not wait_until(ready, 120, 0.3):
            raise RuntimeError(f"restate-server did not answer:\n{_log_tail(logs / 'restate-server.log')}")

    async def _temporal_ping(self) -> bool:
        from temporalio.client import Client

        await asyncio.wait_for(Client.connect(self.temporal_address), 10)
        return True

    def stop(self) -> None:
        """Stop everything this stack started; safe to call twice, and from a signal handler's clean-up."""
        for runner in list(self.runners.values()):
            stop(runner, sig=signal.SIGKILL, grace=5)
        self.runners.clear()
        for proc in reversed(list(self.procs.values())):
            with contextlib.suppress(Exception):
                proc.stop()
        for server in (self.restate_server, self.temporal_server):
            if server is not None:
                stop(server, grace=10)
        if self.idp is not None:
            self.idp.stop()
        _db_reset()
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.stop()

    # ------------------------------------------------------------------ the pieces a trial drives

    def world(self, run_id: str) -> World:
        return World(self.root / "world" / run_id)

    def start_run(self, runtime: str, run_id: str, conn: str, faults: dict) -> None:
        payload = {"run_id": run_id, "connection_id": conn, "faults": faults}
        if runtime == "langgraph":
            self.start_runner(run_id, payload)
        elif runtime == "temporal":
            asyncio.run(self._temporal_start(run_id, payload))
        else:
            httpx.post(
                f"{self.restate_ingress}/FaultSends/{run_id}/run/send", json=payload, timeout=30
            ).raise_for_status()

    def start_runner(self, run_id: str, payload: dict | None = None) -> None:
        args = [sys.executable, "-m", "tests.faults.support.lg_runner", "--run-id", run_id, "--thread-id", run_id]
        args += ["--input", json.dumps(payload)] if payload else ["--continue"]
        with open(self.root / "logs" / f"runner-{run_id}.log", "ab") as log:
            self.runners[run_id] = spawn(args, cwd=ROOT, env=self.runtime_env, stdout=log, stderr=subprocess.STDOUT)

    def stop_runner(self, run_id: str) -> None:
        runner = self.runners.pop(run_id, None)
        if runner is not None:
            stop(runner, sig=signal.SIGKILL, grace=5)

    async def _temporal_start(self, run_id: str, payload: dict) -> None:
        from temporalio.client import Client

        client = await Client.connect(self.temporal_address)
        await client.start_workflow("FaultSendsWorkflow", payload, id=run_id, task_queue=self.task_queue)

    def runtime_worker(self, runtime: str) -> Managed:
        return self.procs[{"langgraph": "celery", "temporal": "temporal_worker", "restate": "restate_service"}[runtime]]

    def restart(self, name: str, *, kill: bool = True) -> None:
        proc = self.procs[name]
        proc.kill() if kill else proc.stop()
        proc.start()


# ---------------------------------------------------------------------- one trial


class Trial:
    def __init__(self, stack: Stack, runtime: str, kind: str) -> None:
        from cases import services

        self.stack, self.runtime, self.kind = stack, runtime, kind
        self.profile = stack.profile
        suffix = uuid.uuid4().hex[:10]
        self.run_id = f"run_{runtime[:2]}_{suffix}"
        self.conn = f"conn_{suffix}"
        # With the real sign-in, the connection belongs to the lab provider's user who signs in (any number of
        # connections may); the owner's mailbox is still the connection's own.
        owner = stack.idp.users["right"] if stack.idp else {"oid": f"oid-{self.conn}", "tid": "tid-faults"}
        db_retry(
            lambda: services.connection_create(
                connection_id=self.conn,
                provider="entra",
                owner_email=f"{self.conn}@example.com",
                provider_subject=owner["oid"],
                provider_tenant=owner["tid"],
            )
        )
        self.world = stack.world(self.run_id)
        (self.world.root / "gates" / "revoke").touch()
        self.faults = {"revoke_at": "send_2"}
        self.reconnects = 0
        self.notes: list[str] = []

    # -- helpers -------------------------------------------------------------------------

    def note(self, text: str) -> None:
        self.notes.append(text)

    def held(self, point: str, timeout: float = 240.0) -> dict | None:
        found = wait_until(lambda: self.world.marks(f"held.{point}", run_id=self.run_id), timeout, 0.05)
        return found[-1] if found else None

    def release(self, point: str) -> None:
        (self.world.root / "gates" / f"hold.{point}.{self.run_id}").unlink(missing_ok=True)
        self.world.open_gate(f"{point}.{self.run_id}")

    def disarm(self, point: str) -> None:
        (self.world.root / "gates" / f"hold.{point}.{self.run_id}").unlink(missing_ok=True)

    def cases(self):
        from cases.models import RecoveryCase

        return list(RecoveryCase.objects.filter(case_runs__run_id=self.run_id).order_by("pk"))

    def parked_case(self, timeout: float = 240.0):
        from cases.models import Run

        def parked():
            run = Run.objects.filter(pk=self.run_id).first()
            cases = self.cases()
            return cases[-1] if run is not None and run.state == "parked" and cases else None

        return wait_until(parked, timeout, 0.1)

    def owner_link(self, timeout: float) -> str | None:
        """The reconnect link from the owner's mailbox, as soon as Revive's e-mail arrives."""
        address = f"{self.conn}@example.com"

        def find() -> str | None:
            """The newest link: a re-sent e-mail (its first send lost with Redis) revokes the older link."""
            links = []
            for path in sorted((self.stack.root / "mail").glob("*.log"), key=lambda f: f.stat().st_mtime):
                text = path.read_text(errors="replace")
                if address in text:
                    links += [m.group(1) for m in _LINK.finditer(text)]
            return links[-1] if links else None

        return wait_until(find, timeout, 0.2)

    def reconnect(self, token: str) -> None:
        """The owner's verified reconnect: the recorded identity signs in and hands over a new grant -- through
        Revive's pages and the lab identity provider's real sign-in, or (``sign_in="service"``) through the
        service the sign-in's callback calls."""
        from cases.models import Connection
        from reauth.custody import Grant
        from reauth.identity import expected_identity
        from reauth.models import ReconnectRequest
        from reauth.services import reconnect_link_open, reconnect_request_complete

        self.world.restore(self.conn)
        if self.stack.idp is not None:
            from types import SimpleNamespace

            from lab.owner import Owner

            owner = Owner(SimpleNamespace(idp=self.stack.idp))
            try:
                owner.open_link(f"{self.stack.env['REVIVE_URL']}/reconnect/l/{token}")
                outcome = owner.sign_in(self.stack.idp.users["right"]["username"])
            finally:
                owner.close()
            _db_reset()
            consumed = db_retry(
                lambda: ReconnectRequest.objects.filter(connection_id=self.conn, state="consumed").exists()
            )
            if not consumed:
                raise RuntimeError(f"the owner's sign-in did not reconnect: {outcome}")
            if not outcome["consumed"]:
                self.note(f"the owner's callback answered {outcome} after the reconnect committed")
            self.reconnects += 1
            self.reconnected_at = time.time()
            return
        try:
            request = db_retry(lambda: reconnect_link_open(token=token, actor="owner:faults"))
        except Exception as exc:
            # A link already used: the owner's earlier attempt (or a re-sent e-mail's) reconnected -- nothing to redo.
            if type(exc).__name__ == "ReconnectLinkUsed" and db_retry(
                lambda: ReconnectRequest.objects.filter(connection_id=self.conn, state="consumed").exists()
            ):
                self.note("the owner's link was already used by a reconnect that committed")
                self.reconnects += 1
                self.reconnected_at = time.time()
                return
            raise
        identity = db_retry(lambda: expected_identity(Connection.objects.get(pk=self.conn)))

        def complete() -> bool:
            """The owner's callback; a database error (another trial restarts PostgreSQL) is an error page the
            owner answers by trying again -- unless the reconnect committed before it failed."""
            request.refresh_from_db()
            if request.state == request.State.CONSUMED:
                self.note("the owner's callback failed after the reconnect committed")
                return True
            completion = reconnect_request_complete(
                public_id=request.public_id,
                presented=identity,
                actor="owner:faults",
                grant=Grant(access_token=f"at-{uuid.uuid4().hex}", refresh_token=f"rt-{uuid.uuid4().hex}"),
            )
            if not completion.consumed:
                refusal.append(f"{completion}; expected {identity.evidence()}")
            return completion.consumed

        refusal: list[str] = []
        consumed = db_retry(complete)
        if not consumed:
            newer = self.owner_link(5.0)
            if newer is not None and newer != token:  # a re-sent e-mail revoked this link: the owner opens the newer
                self.note("the owner used the newer link of a re-sent e-mail")
                return self.reconnect(newer)
            raise RuntimeError(f"the reconnect was refused: {refusal}")
        self.reconnects += 1
        self.reconnected_at = time.time()

    def kill_pid(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def workflow_process_killed(self, pid: int) -> None:
        """SIGKILL the process running the workflow; the runtime's host brings it back."""
        if self.runtime == "langgraph":
            runner = self.stack.runners.get(self.run_id)
            if runner is not None and runner.pid == pid:
                self.stack.stop_runner(self.run_id)
                self.stack.start_runner(self.run_id)  # the host continues the thread from its checkpoint
            else:  # the run executes in a Celery pool process (after the resume)
                self.kill_pid(pid)
            return
        name = "temporal_worker" if self.runtime == "temporal" else "restate_service"
        with self.stack.fault_lock:
            self.stack.restart(name)

    # -- the trial -------------------------------------------------------------------------

    def left(self) -> float:
        return max(self.deadline_at - time.monotonic(), 0.0)

    def run(self) -> TrialResult:
        started = time.monotonic()
        self.deadline_at = (
            started + DEADLINES[self.profile] + (DOWN_FOR[self.profile] if self.kind == "runtime_worker_down" else 0)
        )
        kind = self.kind
        try:
            pre_hold = {"kill_before_execute": "before_execute.send_1", "kill_after_accept": "after_accept.send_1"}.get(
                kind
            )
            # In LangGraph the resumed run executes in a Celery pool process: the kill hits it mid-send. Elsewhere
            # Celery only delivers the resume (a signal, a promise): the kill hits the delivery (see below).
            celery_runs_it = self.runtime == "langgraph"
            resume_hold = {
                "pool_kill_resume": "after_accept.send_2" if celery_runs_it else None,
                "worker_kill_resume": "after_accept.send_2" if celery_runs_it else None,
                "redis_restart_resume": "before_execute.send_2",
                "redis_loss_resume": "before_execute.send_2",
                "postgres_restart": "before_execute.send_2",
            }.get(kind)
            for point in (pre_hold, resume_hold):
                if point:
                    self.world.hold(point, self.run_id)
            if kind == "timeout_before_death":
                self.world.open_gate("timeout.send_1")
            self.stack.start_run(self.runtime, self.run_id, self.conn, self.faults)

            if pre_hold:
                mark = self.held(pre_hold, self.left())
                if mark is None:
                    return self.finish(started, "stuck", f"never reached {pre_hold}")
                self.disarm(pre_hold)
                self.workflow_process_killed(mark["pid"])
                self.note(f"killed pid {mark['pid']} at {pre_hold}")

            case = self.parked_case(self.left())
            if case is None:
                return self.finish(started, "stuck", "the run never parked after the credential died")

            if kind == "kill_parked":
                if self.runtime == "langgraph":
                    wait_until(lambda: self.world.marks("runner_done", run_id=self.run_id), 120)
                    self.stack.stop_runner(self.run_id)  # nobody restarts it: Revive's worker resumes the thread
                else:
                    time.sleep(3)  # let the runtime reach its wait
                    self.workflow_process_killed(-1)
            elif kind in ("redis_restart_parked", "redis_loss_parked"):
                with self.stack.fault_lock:
                    self.stack.redis.restart(keep_data=kind == "redis_restart_parked")
            if kind == "timeout_after_death":
                self.world.open_gate("timeout.send_2")

            token = self.owner_link(self.left())
            if token is None:
                return self.finish(started, "stuck", f"no reconnect e-mail reached the owner (case {case.state})")
            if kind == "runtime_worker_down":
                with self.stack.fault_lock:
                    worker = self.stack.runtime_worker(self.runtime)
                    worker.kill()
                    self.reconnect(token)
                    time.sleep(DOWN_FOR[self.profile])
                    worker.start()
            elif kind in ("redis_restart_reconnect", "redis_loss_reconnect"):
                with self.stack.fault_lock:
                    self.reconnect(token)
                    self.stack.redis.restart(keep_data=kind == "redis_restart_reconnect", down_for=0.2)
            elif kind in ("pool_kill_resume", "worker_kill_resume") and not celery_runs_it:
                with self.stack.fault_lock:
                    celery = self.stack.procs["celery"]
                    before = celery.log_path.stat().st_size
                    self.reconnect(token)

                    def delivery_started() -> bool:
                        with open(celery.log_path, "rb") as f:
                            f.seek(before)
                            return b"received" in f.read()

                    wait_until(delivery_started, 60, 0.01)
                    if kind == "pool_kill_resume":
                        self.kill_celery_pool()
                    else:
                        self.stack.restart("celery")
                    self.note(f"{kind} as the resume task was received")
            else:
                self.reconnect(token)

            if resume_hold:
                mark = self.held(resume_hold, self.left())
                if mark is None:
                    return self.finish(started, "stuck", f"the resumed run never reached {resume_hold}")
                self.disarm(resume_hold)
                with self.stack.fault_lock:
                    if kind == "pool_kill_resume":
                        self.kill_pid(mark["pid"])
                    elif kind == "worker_kill_resume":
                        self.stack.restart("celery")
                    elif kind.startswith("redis_"):
                        self.stack.redis.restart(keep_data=kind == "redis_restart_resume")
                    elif kind == "postgres_restart":
                        self.stack.pg.restart()
                        _db_reset()
                self.world.open_gate(f"{resume_hold}.{self.run_id}")
                self.note(f"{kind} at {resume_hold} (pid {mark['pid']})")

            outcome = wait_until(self.outcome, self.left(), 0.25)
            return self.finish(started, outcome or "stuck")
        except Exception as exc:
            return self.finish(started, "error", f"{exc!r}\n{traceback.format_exc()[-1500:]}")
        finally:
            for point in (
                "before_execute.send_1",
                "after_accept.send_1",
                "before_execute.send_2",
                "after_accept.send_2",
            ):
                self.world.open_gate(f"{point}.{self.run_id}")
            if self.runtime == "langgraph":
                self.stack.stop_runner(self.run_id)

    def kill_celery_pool(self) -> None:
        celery = self.stack.procs["celery"]
        for pid in celery.pids - {celery.process.pid}:
            self.kill_pid(pid)

    def outcome(self) -> str | None:
        if self.world.marks("finished", run_id=self.run_id):
            return "finished"
        if any(c.state in OPERATOR_VISIBLE for c in self.cases()):
            return "operator_visible"
        return None

    def finish(self, started: float, outcome: str, detail: str = "") -> TrialResult:
        result = TrialResult(
            self.runtime,
            self.kind,
            self.run_id,
            self.conn,
            outcome,
            detail="; ".join([*self.notes, detail]).strip("; "),
        )
        try:
            db_retry(lambda: self._check(result))
        except Exception as exc:  # the report must still come out
            result.violations.append(f"could not check: {exc!r}")
        return result

    def _check(self, result: TrialResult) -> None:
        """The invariants, read from the counting service and Revive's database (repeatable: it only assigns)."""
        from django.db.models import Count

        from cases.models import Action, Connection, RecoveryCase, Run

        _db_reset()
        counts: dict[str, int] = {}
        sent: set[str] = set()
        for e in self.world.effects(run_id=self.run_id):
            counts[e["idempotency_key"]] = counts.get(e["idempotency_key"], 0) + 1
            sent.add(e["effect"])
        result.duplicates = sum(n - 1 for n in counts.values())
        if result.outcome == "finished":
            result.lost = sum(1 for key in SENDS if key not in sent)
            if self.reconnects:
                result.recovery_seconds = self.world.marks("finished", run_id=self.run_id)[0]["t"] - self.reconnected_at
        violations = [
            f"{row['n']} cases for generation {row['rejected_generation']}"
            for row in RecoveryCase.objects.filter(connection_id=self.conn)
            .values("rejected_generation")
            .annotate(n=Count("pk"))
            .filter(n__gt=1)
        ]
        generation = Connection.objects.get(pk=self.conn).current_generation
        if generation != 1 + self.reconnects:
            violations.append(f"generation {generation} after {self.reconnects} reconnect(s)")
        result.violations = violations
        if result.outcome in ("stuck", "error", "operator_visible"):  # what was left, and for whom
            run = Run.objects.filter(pk=self.run_id).first()
            actions = {a.action_key: a.state for a in Action.objects.filter(run_id=self.run_id)}
            cases = [(c.reference, c.state) for c in self.cases()]
            result.detail = "; ".join(
                filter(
                    None,
                    [
                        result.detail,
                        f"run {run.state if run else 'unregistered'}",
                        f"cases {cases}",
                        f"actions {actions}",
                        f"effects {sorted(counts.values())}",
                    ],
                )
            )


# ---------------------------------------------------------------------- many trials


def plan(runtimes: Iterable[str], kinds: Iterable[str], trials: int, seed: int) -> list[tuple[str, str]]:
    """``trials`` (runtime, kind) pairs: every pair once first (while there are trials), then random ones."""
    pairs = [(r, k) for r in runtimes for k in kinds]
    rng = random.Random(seed)
    rng.shuffle(pairs)
    chosen = pairs[:trials]
    while len(chosen) < trials:
        chosen.append(rng.choice(pairs))
    return chosen


def run_trials(
    stack: Stack,
    pairs: list[tuple[str, str]],
    *,
    concurrency: int = 4,
    on_result: Callable[[TrialResult, int, int], None] = lambda r, i, n: None,
) -> list[TrialResult]:
    """Run the trials, ``concurrency`` at a time. Between trials the stack's processes are brought back up if a
    fault left one down (the job of a supervisor such as ``scripts/serve``)."""
    results: list[TrialResult] = []
    done = threading.Event()

    def supervise() -> None:
        """Like ``scripts/serve``: a process of the stack that exits when no fault is being injected is an
        unexpected exit -- recorded (``stack.crashes``) and restarted."""
        while not done.wait(1.0):
            if stack.fault_lock.acquire(blocking=False):
                try:
                    for proc in stack.procs.values():
                        if proc.process is not None and proc.process.poll() is not None:
                            stack.crashes.append(
                                f"{proc.name} exited {proc.process.returncode}: "
                                + _log_tail(proc.log_path, 3).replace("\n", " | ")[-400:]
                            )
                            stack.say(f"!! {stack.crashes[-1]}")
                            with contextlib.suppress(Exception):
                                proc.start()
                finally:
                    stack.fault_lock.release()

    def one(pair: tuple[str, str]) -> TrialResult:
        try:
            return Trial(stack, *pair).run()
        except Exception as exc:  # a trial that could not even start is reported, not raised
            return TrialResult(pair[0], pair[1], "", "", "error", detail=f"{exc!r}"[:500])
        finally:
            _db_reset()

    watcher = threading.Thread(target=supervise, name="faults-supervisor", daemon=True)
    watcher.start()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="trial")
    try:
        futures = [pool.submit(one, pair) for pair in pairs]
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            on_result(result, len(results), len(pairs))
        pool.shutdown()
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM): trials not started are dropped and the ones in flight are not waited for
        # (each may wait minutes on its deadline); the caller stops the stack, which ends them.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        done.set()
        watcher.join(5)
    return results


def table(results: list[TrialResult]) -> str:
    """One row per runtime × kind: trials, duplicates, lost, stuck, operator-visible, errors, median recovery."""
    rows = [("runtime", "kind", "trials", "dup", "lost", "stuck", "visible", "errors", "violations", "median s")]
    groups: dict[tuple[str, str], list[TrialResult]] = {}
    for r in results:
        groups.setdefault((r.runtime, r.kind), []).append(r)
    for runtime, kind in sorted(groups, key=lambda rk: (RUNTIMES.index(rk[0]), KINDS.index(rk[1]))):
        rs = groups[(runtime, kind)]
        times = [r.recovery_seconds for r in rs if r.recovery_seconds is not None]
        rows.append(
            (
                runtime,
                kind,
                str(len(rs)),
                str(sum(r.duplicates for r in rs)),
                str(sum(r.lost for r in rs)),
                str(sum(r.outcome == "stuck" for r in rs)),
                str(sum(r.outcome == "operator_visible" for r in rs)),
                str(sum(r.outcome == "error" for r in rs)),
                str(sum(len(r.violations) for r in rs)),
                f"{statistics.median(times):.1f}" if times else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cleanup_root(stack: Stack, keep: bool) -> None:
    if not keep:
        shutil.rmtree(stack.root, ignore_errors=True)
