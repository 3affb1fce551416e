"""A real Restate for the operator-route tests.

Once per test session this starts ``restate-server`` from the npm package
(``node_modules``, installed by ``scripts/setup``) and one hypercorn process
serving ``restate_probe_service.py``, both on free loopback ports, waits until
both answer, and registers the service: ``restate_env`` is that engine for
suites that only add deployments, ``operator_restate_env`` a second one that
only the operator-route tests use, since they delete deployments.
Operator tests get the ``restate`` fixture: it
points Django's ``RESTATE_*`` settings at that server, can start further
service deployments (each its own hypercorn process, so it can be stopped to
make a deployment unreachable), and on teardown puts the server back to one
deployment (the primary) with no invocation of the test left running.

Nothing here is skipped: a missing ``restate-server`` fails the test with the
command that installs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cases.runtimes.restate_admin import RestateAdminClient, RestateAdminError

REPO_ROOT = Path(__file__).resolve().parents[2]
PROBE_APP = f"{Path(__file__).with_name('restate_probe_service.py')}:app"
WORKFLOW = "RecoveryProbeWorkflow"
OBJECT = "RecoveryProbeObject"

# Generous bounds for start-up and for waiting on the engine: a slow machine
# makes the suite slower, never red.
READY_TIMEOUT = 120.0
WAIT_TIMEOUT = 60.0
POLL_INTERVAL = 0.1
TERMINAL_STATUSES = {"completed", "killed", "cancelled"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT_TIMEOUT) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
        except (httpx.HTTPError, RestateAdminError) as exc:
            result, last_error = None, exc
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})")
        time.sleep(POLL_INTERVAL)


def restate_server_binary() -> Path:
    wrapper = REPO_ROOT / "node_modules" / ".bin" / "restate-server"
    if not wrapper.exists():
        pytest.fail(
            f"{wrapper} is missing: run scripts/setup (it runs `npm ci` at the repository root) "
            "to install the pinned @restatedev/restate-server",
            pytrace=False,
        )
    # The wrapper is a node script that spawns the platform binary; start that
    # binary directly so that our signals reach the server itself.
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), "")
    native = (
        REPO_ROOT / "node_modules" / "@restatedev" / f"restate-server-{sys.platform}-{arch}" / "bin" / "restate-server"
    )
    return native if native.exists() else wrapper


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_process(process: subprocess.Popen, grace: float = 20.0, sig: int = signal.SIGTERM) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace)


@dataclasses.dataclass
class RestateServer:
    admin_url: str
    ingress_url: str
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        _stop_process(self.process)


def start_restate_server(base_dir: Path) -> RestateServer:
    """Start restate-server bound to 127.0.0.1 on free ports, data under ``base_dir``; wait until it serves."""
    binary = restate_server_binary()
    admin_port, ingress_port, fabric_port = free_port(), free_port(), free_port()
    data_dir = base_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = base_dir / "restate-server.log"
    env = {
        **os.environ,
        "RESTATE_ADMIN__BIND_PORT": str(admin_port),
        "RESTATE_INGRESS__BIND_PORT": str(ingress_port),
        "RESTATE_DISABLE_TELEMETRY": "true",
        "RESTATE_LOG_DISABLE_ANSI_CODES": "true",
    }
    env.pop("RESTATE_CONFIG", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(binary),
                "--no-logo",
                "--listen-mode=tcp",
                "--bind-ip=127.0.0.1",
                f"--bind-port={fabric_port}",
                f"--base-dir={data_dir}",
                f"--node-name=revive-test-{admin_port}",
                "--cluster-name=revive-test",
            ],
            cwd=base_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = RestateServer(
        admin_url=f"http://127.0.0.1:{admin_port}",
        ingress_url=f"http://127.0.0.1:{ingress_port}",
        process=process,
        log_path=log_path,
    )

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"restate-server exited with {process.returncode}:\n{_log_tail(log_path)}")
        admin = httpx.get(server.admin_url + "/health", timeout=2)
        ingress = httpx.get(server.ingress_url + "/restate/health", timeout=2)
        return admin.status_code == 200 and ingress.status_code == 200

    try:
        wait_for(ready, "restate-server to answer on its admin and ingress ports", READY_TIMEOUT)
    except BaseException:
        server.stop()
        raise
    return server


@dataclasses.dataclass
class ProbeService:
    """One hypercorn process serving the probe service: one Restate deployment."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        # SIGINT: the Restate SDK takes over SIGTERM for its own shutdown hooks, hypercorn keeps SIGINT.
        _stop_process(self.process, grace=5.0, sig=signal.SIGINT)

    def kill(self) -> None:
        """Make the deployment unreachable at once, as a crashed service would be."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)


def start_probe_service(log_dir: Path) -> ProbeService:
    port = free_port()
    log_path = log_dir / f"probe-service-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            # --workers 0 serves in this very process (no spawned worker that could outlive a kill).
            [
                sys.executable,
                "-m",
                "hypercorn",
                PROBE_APP,
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "0",
                "--graceful-timeout",
                "2",
            ],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = ProbeService(url=f"http://127.0.0.1:{port}/", process=process, log_path=log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"probe service exited with {process.returncode}:\n{_log_tail(log_path)}")
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200

    try:
        wait_for(ready, "the probe service to answer", READY_TIMEOUT)
    except BaseException:
        service.stop()
        raise
    return service


@dataclasses.dataclass
class RestateEnv:
    server: RestateServer
    primary: ProbeService
    base_dir: Path


@contextlib.contextmanager
def launch_restate_env(base_dir: Path) -> Iterator[RestateEnv]:
    """restate-server plus the probe service, registered and warmed up; both stopped on exit."""
    with contextlib.ExitStack() as stack:
        server = start_restate_server(base_dir)
        stack.callback(server.stop)
        primary = start_probe_service(base_dir)
        stack.callback(primary.stop)
        with RestateAdminClient(server.admin_url, timeout=30) as admin:
            admin.register_deployment(primary.url, force=True)
        # The first invocation waits for partition leadership; do it here, not in a test.
        wait_for(
            lambda: httpx.post(f"{server.ingress_url}/{OBJECT}/warm-up/recall", timeout=10).status_code == 200,
            "the first invocation through the ingress",
            READY_TIMEOUT,
        )
        yield RestateEnv(server=server, primary=primary, base_dir=base_dir)


@pytest.fixture(scope="session")
def restate_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateEnv]:
    """The engine shared by suites that only add deployments of their own (e.g. ``tests/runtimes``)."""
    with launch_restate_env(tmp_path_factory.mktemp("restate")) as env:
        yield env


@pytest.fixture(scope="session")
def operator_restate_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateEnv]:
    """An engine of the operator-route tests alone: they delete deployments, which no other suite expects."""
    with launch_restate_env(tmp_path_factory.mktemp("restate-operator")) as env:
        yield env


class RestateHarness:
    """What a test uses to drive the real engine around the operator routes."""

    def __init__(self, env: RestateEnv) -> None:
        self.env = env
        self.admin_url = env.server.admin_url
        self.ingress_url = env.server.ingress_url
        self.primary = env.primary
        self.admin = RestateAdminClient(self.admin_url, timeout=30)
        self.extra_services: list[ProbeService] = []
        self.started_invocations: list[str] = []

    # -- deployments ----------------------------------------------------

    def start_service(self) -> ProbeService:
        service = start_probe_service(self.env.base_dir)
        self.extra_services.append(service)
        return service

    def register(self, service: ProbeService) -> str:
        return self.admin.register_deployment(service.url, force=True).id

    def deployment_urls(self) -> dict[str, str | None]:
        return {d.id: d.service_url for d in self.admin.list_deployments()}

    def wait_deployments(self, expected_ids: set[str]) -> None:
        wait_for(lambda: set(self.deployment_urls()) == expected_ids, f"deployments to become {sorted(expected_ids)}")

    # -- invocations ----------------------------------------------------

    @staticmethod
    def new_key(prefix: str = "wf") -> str:
        return f"{prefix}_{uuid.uuid4().hex[:16]}"

    def submit(self, key: str, mode: str, service: str = WORKFLOW, handler: str = "run") -> str:
        """Send a workflow run (or object call) without waiting; return its invocation id."""
        response = httpx.post(
            f"{self.ingress_url}/{service}/{key}/{handler}/send",
            content=json.dumps({"mode": mode}),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        response.raise_for_status()
        invocation_id = response.json()["invocationId"]
        self.started_invocations.append(invocation_id)
        return invocation_id

    def call(self, service: str, key: str, handler: str, body: Any = None) -> httpx.Response:
        kwargs: dict[str, Any] = {"timeout": 60}
        if body is not None:
            kwargs.update(content=json.dumps(body), headers={"content-type": "application/json"})
        return httpx.post(f"{self.ingress_url}/{service}/{key}/{handler}", **kwargs)

    def invocation(self, invocation_id: str) -> dict[str, Any] | None:
        rows = self.admin.query(
            "SELECT id, status, completion_result, completion_failure, pinned_deployment_id "
            f"FROM sys_invocation WHERE id = '{invocation_id}'"
        )
        return rows[0] if rows else None

    def wait_status(self, invocation_id: str, *statuses: str) -> dict[str, Any]:
        return wait_for(
            lambda: (row := self.invocation(invocation_id)) and row["status"] in statuses and row,
            f"invocation {invocation_id} to reach {statuses}",
        )

    def wait_pinned(self, invocation_id: str) -> dict[str, Any]:
        return wait_for(
            lambda: (row := self.invocation(invocation_id)) and row.get("pinned_deployment_id") and row,
            f"invocation {invocation_id} to be pinned to a deployment",
        )

    # -- teardown -------------------------------------------------------

    def restore_baseline(self) -> None:
        """Leave the shared server as the next test expects: nothing running, only the primary deployment."""
        killed = []
        for invocation_id in self.started_invocations:
            row = self.invocation(invocation_id)
            if row and row["status"] not in TERMINAL_STATUSES:
                with contextlib.suppress(RestateAdminError):
                    self.admin.kill_invocation(invocation_id)
                    killed.append(invocation_id)
        for invocation_id in killed:
            wait_for(
                lambda: (row := self.invocation(invocation_id)) is None or row["status"] in TERMINAL_STATUSES,
                f"killed invocation {invocation_id} to end",
            )
        primary_id = self.admin.register_deployment(self.primary.url, force=False).id
        for deployment in self.admin.list_deployments():
            if deployment.id != primary_id:
                with contextlib.suppress(RestateAdminError):
                    self.admin.delete_deployment(deployment.id, force=True)
        self.wait_deployments({primary_id})
        for service in self.extra_services:
            service.stop()
        self.admin.close()


@pytest.fixture
def restate(operator_restate_env: RestateEnv, settings) -> Iterator[RestateHarness]:
    """The operator tests' engine, with Django's settings pointed at it for this test."""
    settings.RESTATE_ADMIN_URL = operator_restate_env.server.admin_url
    settings.RESTATE_INGRESS_URL = operator_restate_env.server.ingress_url
    settings.RESTATE_PROBE_TIMEOUT = 10.0
    settings.RESTATE_DRAIN_TIMEOUT = 60.0
    harness = RestateHarness(operator_restate_env)
    try:
        yield harness
    finally:
        harness.restore_baseline()


@pytest.fixture
def dedicated_restate_server(tmp_path: Path) -> Iterator[RestateServer]:
    """A restate-server of the test's own, for tests that stop it."""
    server = start_restate_server(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def silent_listener() -> Iterator[str]:
    """A loopback port that accepts connections and never answers: a hung engine."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.fixture
def hung_endpoint() -> Iterator[str]:
    with silent_listener() as url:
        yield url
