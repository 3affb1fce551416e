"""The lab's briefing on a LangGraph Agent Server (``recovery_lab --runtime langgraph-server``).

The lab starts ``langgraph dev`` (the in-memory Agent Server of ``langgraph-cli[inmem]``, from ``.venv-lgserver``,
which ``scripts/setup --test`` makes) on a free loopback port, serving ``lab/agent_server/langgraph.json``. The
server *is* the worker: it executes the graph's nodes, so each scenario starts it as ``worker:lab-A`` with an API
key of its own, and Revive resumes the parked thread over the server's HTTP API (``cases.runtimes.langgraph_server``),
never importing the graph. The server's process has no Django: its graph asks this process for the access token
(``CredentialDesk``, a loopback endpoint with a per-session secret), as the TypeScript worker asks on its stdin.

``worker-lost`` stops the server while the run is parked and starts ``worker:lab-B`` on the same port and
directory: another process resumes the same thread. It stops it with SIGTERM, not SIGKILL, and says so. A deployment
keeps its threads in PostgreSQL, where a killed server loses nothing. The dev server keeps them in memory: it writes
them to ``.langgraph_api/`` on a clean shutdown, and every 10 seconds only in part -- once a thread's state has been
read (``GET /threads/{id}/state``, which Revive's adapter calls), the periodic write no longer includes the
checkpoints (langgraph-runtime-inmem 0.36.7), so after a SIGKILL the thread comes back without them and cannot be
resumed. On the dev server the lab's kill is therefore a clean shutdown.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import httpx
from django.db import close_old_connections

from cases.models import Run
from cases.runtimes import adapter_for
from revive_sdk import ProviderError
from revive_sdk import langgraph as revive_lg

from . import briefing
from .processes import Pidfile, spawn
from .runtimes import RuntimeScenario, _started, _tail, free_port, stop_process
from .waiting import ScenarioFailed, wait_for
from .world import ROOT

VENV = ROOT / ".venv-lgserver"
LANGGRAPH = VENV / "bin" / "langgraph"
CONFIG = ROOT / "lab" / "agent_server" / "langgraph.json"
GRAPH_ID = "lab-briefing-server"
# What the server's process must not inherit: Django's settings and the lab's own secrets.
_NOT_INHERITED = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "SECRET_KEY")


def server_missing() -> str | None:
    """Why the lab cannot start the Agent Server here, or None."""
    if not LANGGRAPH.exists():
        return (
            f"the LangGraph Agent Server's venv is missing ({LANGGRAPH} not found): run scripts/setup --test "
            "to create .venv-lgserver (requirements-lgserver.txt)"
        )
    return None


class CredentialDesk:
    """A loopback endpoint of the lab process: ``POST /credential {"connection_id"}`` with the session's bearer
    secret answers the connection's access token (``lab.briefing.credential``: custody, refreshed at the provider) or
    the provider's refusal, for the connections of the scenario that runs. Tokens never appear in a log."""

    def __init__(self) -> None:
        self.secret = secrets.token_urlsafe(32)
        self.states: dict[str, briefing.BriefingState] = {}
        desk = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                status, answer = desk.answer(
                    self.path,
                    self.headers.get("Authorization", ""),
                    self.rfile.read(int(self.headers.get("Content-Length") or 0)),
                )
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="lab-credential-desk", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/credential"

    def serve(self, state: dict) -> None:
        """Answer for ``state``'s connection (its token URL, broker, vault: what ``briefing.credential`` needs)."""
        self.states[state["connection_id"]] = cast(briefing.BriefingState, state)

    def answer(self, path: str, authorization: str, raw: bytes) -> tuple[int, dict]:
        if path != "/credential":
            return 404, {"error": {"status": None, "body": {"error": "not_found"}}}
        if not hmac.compare_digest(authorization.encode(), f"Bearer {self.secret}".encode()):
            return 401, {"error": {"status": None, "body": {"error": "unauthorized"}}}
        try:
            state = self.states[json.loads(raw)["connection_id"]]
        except (ValueError, KeyError, TypeError):
            return 404, {"error": {"status": None, "body": {"error": "unknown_connection"}}}
        close_old_connections()
        try:
            return 200, {"token": briefing.credential(state)}
        except ProviderError as exc:
            return 200, {"error": exc.as_payload()}
        except httpx.HTTPError as exc:
            return 200, {"error": {"status": None, "body": {"error": type(exc).__name__}}}
        finally:
            close_old_connections()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class AgentServer:
    """``langgraph dev`` on one loopback port and one working directory, started (and restarted) as a worker."""

    workdir: Path
    desk: CredentialDesk
    children: Pidfile | None = field(default=None, repr=False)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    label = "agent server"

    @classmethod
    def start(cls, var_dir: Path, children: Pidfile | None = None) -> AgentServer:
        """The server's place and the lab's credential desk; the server process starts with each scenario's worker."""
        if missing := server_missing():
            raise RuntimeError(missing)
        workdir = var_dir / "agent-server"
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(workdir, CredentialDesk(), children)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self) -> dict:
        return {"REVIVE_LANGGRAPH_SERVER_URL": self.url, "REVIVE_LANGGRAPH_SERVER_API_KEY": ""}

    def describe(self) -> str:
        return (
            f"{self.url}  (langgraph dev from .venv-lgserver, in memory; started by each scenario as its worker; "
            f"credentials over loopback from this process)"
        )

    def start_worker(self, name: str, env: dict[str, str], var_dir: Path, timeout: float = 180.0) -> subprocess.Popen:
        """``langgraph dev`` as ``name``: the worker's Revive key, no Django, the credential desk's address."""
        log_path = var_dir / f"{name.replace(':', '-')}.log"
        child_env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED and not k.startswith("REVIVE_")}
        child_env.update(
            REVIVE_LAB_URL=env["REVIVE_LAB_URL"],
            REVIVE_LAB_API_KEY=env["REVIVE_LAB_API_KEY"],
            REVIVE_LAB_WORKER_NAME=name,
            REVIVE_LAB_MAIL_TIMEOUT=str(briefing.MAIL_TIMEOUT),
            REVIVE_LAB_CREDENTIAL_URL=self.desk.url,
            REVIVE_LAB_CREDENTIAL_TOKEN=self.desk.secret,
            # The graph is lab.agent_server.graph of this checkout, with this checkout's SDK.
            PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "sdk" / "python")]),
            PYTHONUNBUFFERED="1",
            LANGSMITH_TRACING="false",
            LANGCHAIN_TRACING_V2="false",
            LANGGRAPH_CLI_NO_ANALYTICS="1",
            VIRTUAL_ENV=str(VENV),
            PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        with open(log_path, "ab") as log:
            process = _started(
                spawn(
                    [
                        str(LANGGRAPH),
                        "dev",
                        "--no-browser",
                        "--no-reload",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(self.port),
                        "--config",
                        str(CONFIG),
                    ],
                    cwd=self.workdir,
                    env=child_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                name,
                self.children,
            )
        self.process = process

        def ready() -> bool:
            if process.poll() is not None:
                raise ScenarioFailed(f"{name} (langgraph dev) exited {process.returncode}:\n{_tail(log_path)}")
            try:
                return httpx.get(f"{self.url}/ok", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, f"{name} (langgraph dev) to answer", timeout=timeout, interval=0.2)
        return process

    # -- the server's API, as a client of the deployment uses it ------------------------------------------------

    def _call(self, method: str, path: str, **kwargs) -> Any:
        response = httpx.request(method, f"{self.url}{path}", timeout=30, **kwargs)
        if response.status_code >= 400:
            raise ScenarioFailed(
                f"the Agent Server answered {method} {path} with {response.status_code}: {response.text[:200]}"
            )
        return response.json()

    def assistant(self) -> str:
        """The assistant the server made for the lab's graph (the same id after a restart: derived from the graph)."""
        found = self._call("POST", "/assistants/search", json={"graph_id": GRAPH_ID, "limit": 1})
        if not found:
            raise ScenarioFailed(f"the Agent Server has no assistant for graph {GRAPH_ID}")
        return found[0]["assistant_id"]

    def new_thread(self, run_id: str) -> str:
        return self._call("POST", "/threads", json={"metadata": {"revive_run": run_id}})["thread_id"]

    def start_run(self, thread_id: str, assistant_id: str, state: dict) -> None:
        self._call("POST", f"/threads/{thread_id}/runs", json={"assistant_id": assistant_id, "input": state})

    def state(self, thread_id: str) -> dict:
        return self._call("GET", f"/threads/{thread_id}/state")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, children=self.children)
        self.desk.stop()


@dataclass
class LangGraphServerScenario(RuntimeScenario):
    """The four faults with the briefing as a thread of the Agent Server: started by the lab as a client of the
    deployment would (a thread, a background run), parked by the graph's ``interrupt``, resumed by Revive over HTTP."""

    runtime = "langgraph-server"
    assistant_id: str = ""

    def register(self) -> None:
        """A thread on the server for the run; the run registered as the server's (``register_server_run``)."""
        self.thread_id = self.server.new_thread(self.run_id)
        self.assistant_id = self.server.assistant()
        self.server.desk.serve(self.state())
        revive_lg.register_server_run(
            briefing.revive(),
            run_id=self.run_id,
            thread_id=self.thread_id,
            assistant_id=self.assistant_id,
            workflow_name=briefing.WORKFLOW,
        )
        briefing.record_checkpoints(self.run_id)

    def start_run(self) -> None:
        self.server.start_run(self.thread_id, self.assistant_id, self.state())

    def parked_case(self) -> str:
        """The case, once the server holds the thread on its interrupt (Revive resumes only a waiting thread)."""
        reference = super().parked_case()
        wait_for(
            lambda: adapter_for(self.runtime).status(Run.objects.get(pk=self.run_id)).state == "waiting",
            f"thread {self.thread_id} to wait on its interrupt",
            interval=0.2,
        )
        return reference

    def _worker_lost(self) -> None:
        ((name, process),) = self.workers
        self._park_on_revoked_grant()
        self.notes["killed_pid"] = process.pid
        self.notes["stop_signal"] = "SIGTERM"
        self.say(
            f"  ⚡ injected fault: {name} (the Agent Server, pid {process.pid}) is stopped while the run is parked "
            "-- with SIGTERM: the in-memory dev server saves its threads only on a clean shutdown (a deployment on "
            "PostgreSQL loses nothing to a SIGKILL)"
        )
        stop_process(process, children=self.world.children)
        self.notes["stop_exit"] = process.returncode
        self.start_worker("worker:lab-B")
        status = adapter_for(self.runtime).status(Run.objects.get(pk=self.run_id))
        if status.state != "waiting":
            raise ScenarioFailed(
                f"after the restart the Agent Server's thread {self.thread_id} is {status.state}, "
                "not waiting on its interrupt"
            )
        self.notes["sign_in"] = self.owner_reconnects(self.owner_user["username"])

    def checkpoints_completed(self) -> list[str]:
        try:
            log = (self.server.state(self.thread_id).get("values") or {}).get("log") or []
        except Exception as exc:
            raise ScenarioFailed(f"the thread's state could not be read: {exc}") from exc
        self.notes["workers"] = sorted({entry.get("worker", "") for entry in log})
        return [entry["checkpoint"] for entry in log]
