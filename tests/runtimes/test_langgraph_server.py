"""LangGraph Agent Server: a graph served by a real ``langgraph dev`` parks on a dead credential, and Revive's Celery
worker resumes the same thread over the server's HTTP API after the reconnect -- without importing the graph.

The server runs from its own venv (``.venv-lgserver``, pinned in ``requirements-lgserver.txt``, made by
``scripts/setup --test``: ``langgraph-cli[inmem]`` pins versions the main venv must not take), in memory, on a free
loopback port; the graph is ``support/lgserver/graph.py``, which protects its actions against this test's live
Revive with the SDK's LangGraph helper.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cases.models import CaseState, Run
from cases.runtimes import (
    AbandonRequest,
    ResumeRequest,
    RunGone,
    RuntimeMisconfigured,
    RuntimeUnavailable,
    adapter_for,
    reset_adapters,
)
from revive_sdk import Revive
from revive_sdk import langgraph as revive_lg
from tests.restate.conftest import free_port

from .conftest import REPO_ROOT, _tail, spawn, stop_process, wait_for, without_django
from .helpers import case_of, connection, deliveries, new_id, owner_reconnects

VENV = REPO_ROOT / ".venv-lgserver"
LANGGRAPH = VENV / "bin" / "langgraph"
CONFIG = REPO_ROOT / "tests" / "runtimes" / "support" / "lgserver" / "langgraph.json"
GRAPH = "test-briefing"
RUNTIME = "langgraph-server"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not LANGGRAPH.exists(),
        reason=f"the Agent Server's venv is absent ({LANGGRAPH} not found): "
        "run scripts/setup --test to create .venv-lgserver",
    ),
]


class AgentServer:
    def __init__(self, url: str, process, log_path: Path) -> None:
        self.url, self.process, self.log_path = url, process, log_path
        self.http = httpx.Client(base_url=url, timeout=30)

    def assistant(self, graph: str) -> str:
        """The assistant the server made for ``graph`` (what a deployment's runs name)."""
        found = self.http.post("/assistants/search", json={"graph_id": graph, "limit": 10}).raise_for_status().json()
        return found[0]["assistant_id"]

    def new_thread(self) -> str:
        return self.http.post("/threads", json={}).raise_for_status().json()["thread_id"]

    def start(self, thread_id: str, assistant_id: str, payload: dict) -> dict:
        return (
            self.http.post(f"/threads/{thread_id}/runs", json={"assistant_id": assistant_id, "input": payload})
            .raise_for_status()
            .json()
        )

    def thread(self, thread_id: str) -> dict:
        return self.http.get(f"/threads/{thread_id}").raise_for_status().json()

    def state(self, thread_id: str) -> dict:
        return self.http.get(f"/threads/{thread_id}/state").raise_for_status().json()

    def runs(self, thread_id: str) -> list[dict]:
        return self.http.get(f"/threads/{thread_id}/runs", params={"limit": 100}).raise_for_status().json()

    def settled(self, thread_id: str) -> bool:
        """No run of the thread is pending or running."""
        return all(r["status"] not in ("pending", "running") for r in self.runs(thread_id))


@pytest.fixture(scope="session")
def langgraph_server(worker_env_base, tmp_path_factory) -> Iterator[AgentServer]:
    """``langgraph dev`` in memory on a free loopback port, serving ``support/lgserver/langgraph.json``."""
    workdir = tmp_path_factory.mktemp("lgserver")
    port = free_port()
    log_path = workdir / "langgraph-dev.log"
    env = without_django(worker_env_base)
    env.update(
        # The graph module imports the suite's support code and this tree's SDK.
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "sdk" / "python")]),
        LANGSMITH_TRACING="false",
        LANGCHAIN_TRACING_V2="false",
        LANGGRAPH_CLI_NO_ANALYTICS="1",
        VIRTUAL_ENV=str(VENV),
        PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    process = spawn(
        [
            str(LANGGRAPH),
            "dev",
            "--no-browser",
            "--no-reload",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--config",
            str(CONFIG),
        ],
        env=env,
        log_path=log_path,
        cwd=workdir,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"langgraph dev exited {process.returncode}:\n{_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/ok", timeout=2).status_code == 200
        return False

    wait_for(ready, "the LangGraph Agent Server to answer", timeout=180, interval=0.25)
    server = AgentServer(url, process, log_path)
    try:
        yield server
    finally:
        server.http.close()
        stop_process(process)


@pytest.fixture
def lg_server(langgraph_server, settings) -> AgentServer:
    settings.REVIVE_LANGGRAPH_SERVER_URL = langgraph_server.url
    reset_adapters()
    yield langgraph_server
    reset_adapters()


def start_parked(server: AgentServer, revive_url: str, api_key: str, world) -> tuple[str, str, str, str]:
    """A run on a revoked connection, started on the server; returns when the thread waits on its case."""
    conn = connection()
    world.revoke(conn)
    run_id, thread_id, assistant_id = new_id("lgs"), server.new_thread(), server.assistant(GRAPH)
    with Revive(revive_url, api_key) as client:
        revive_lg.register_server_run(
            client, run_id=run_id, thread_id=thread_id, assistant_id=assistant_id, workflow_name="Server briefing"
        )
    server.start(thread_id, assistant_id, {"run_id": run_id, "connection_id": conn})
    wait_for(lambda: Run.objects.filter(pk=run_id, state="parked").exists(), f"{run_id} to be parked")
    wait_for(
        lambda: adapter_for(RUNTIME).status(Run.objects.get(pk=run_id)).state == "waiting",
        f"thread {thread_id} to wait on its interrupt",
        timeout=180,
        interval=0.2,
    )
    return run_id, thread_id, assistant_id, conn


def test_a_parked_thread_is_resumed_over_the_servers_api_and_each_effect_happens_once(
    lg_server, revive_http, raw_worker_key, world, celery_worker
):
    run_id, thread_id, assistant_id, conn = start_parked(lg_server, revive_http, raw_worker_key, world)
    run = Run.objects.get(pk=run_id)
    assert run.runtime == RUNTIME and run.runtime_ref == {"thread_id": thread_id, "assistant_id": assistant_id}
    case = case_of(run_id)
    where = adapter_for(RUNTIME).park(run, case)
    assert where["thread_id"] == thread_id and where["node"] == "send" and where["interrupt_id"]
    assert lg_server.thread(thread_id)["status"] == "interrupted"
    assert len(world.effects("prepare", run_id=run_id)) == 1 and not world.effects("send", run_id=run_id)
    assert not adapter_for(RUNTIME).hosts(run)  # the server executes the run, not Revive

    owner_reconnects(world, case)  # Revive's Celery worker delivers the resume to the server
    wait_for(lambda: world.marks("finished", run_id=run_id), f"{run_id} to finish on the server", interval=0.2)
    wait_for(
        lambda: lg_server.settled(thread_id) and lg_server.thread(thread_id)["status"] == "idle",
        f"thread {thread_id} to be idle",
        interval=0.2,
    )

    assert len(world.effects("prepare", run_id=run_id)) == 1
    sends = world.effects("send", run_id=run_id)
    assert len(sends) == 1 and sends[0]["credential"] == f"access-token-for-{conn}"
    assert len(world.marks("send", run_id=run_id)) == 2  # the rejected attempt, then one after the resume
    assert len(world.marks("finished", run_id=run_id)) == 1
    assert [m["generation"] for m in world.marks("sent", run_id=run_id)] == [2]
    wait_for(lambda: deliveries(run_id) == 1, "the delivery to be recorded")
    wait_for(lambda: case.__class__.objects.get(pk=case.pk).state == CaseState.RESUMED, "the case to be resumed")
    assert adapter_for(RUNTIME).status(Run.objects.get(pk=run_id)).state == "completed"
    state = lg_server.state(thread_id)
    assert state["next"] == [] and [step[0] for step in state["values"]["log"]] == ["prepare", "send", "finish"]
    runs = lg_server.runs(thread_id)
    resumes = [r for r in runs if (r.get("metadata") or {}).get("revive_delivery")]
    assert len(runs) == 2 and len(resumes) == 1 and resumes[0]["status"] == "success"

    # The same resume delivered again (a retry whose first answer was lost): the server already took it, nothing is
    # sent; the thread has the same two runs and the action still happened once.
    request = ResumeRequest(
        run_id=run_id, case_ids=(case.reference,), generations={conn: 2}, rejected={conn: 1}, attempt=1
    )
    assert request.delivery_key == resumes[0]["metadata"]["revive_delivery"]
    again = adapter_for(RUNTIME).resume(case, 2, run=Run.objects.get(pk=run_id), request=request)
    assert again.detail["earlier_attempt"] and again.detail["server_run_id"] == resumes[0]["run_id"]
    assert len(lg_server.runs(thread_id)) == 2 and len(world.effects("send", run_id=run_id)) == 1


def test_a_retried_delivery_while_the_resume_runs_does_not_resume_twice(
    lg_server, revive_http, raw_worker_key, world, held_outbox
):
    """Two deliveries of one resume back to back (no Celery worker: the test is the deliverer). The second finds the
    run the first created, in whatever state it is, and sends nothing."""
    run_id, thread_id, _, conn = start_parked(lg_server, revive_http, raw_worker_key, world)
    case = owner_reconnects_without_delivery(world, case_of(run_id))
    run = Run.objects.get(pk=run_id)
    request = ResumeRequest(run_id=run_id, case_ids=(case.reference,), generations={conn: 2}, rejected={conn: 1})
    first = adapter_for(RUNTIME).resume(case, 2, run=run, request=request)
    assert first.detail["outcome"] == "accepted" and first.detail["interrupts"]
    second = adapter_for(RUNTIME).resume(case, 2, run=run, request=dataclasses.replace(request, attempt=1))
    assert second.detail["earlier_attempt"] and second.detail["server_run_id"] == first.detail["server_run_id"]
    wait_for(lambda: world.marks("finished", run_id=run_id), f"{run_id} to finish on the server", interval=0.2)
    wait_for(lambda: lg_server.settled(thread_id), f"thread {thread_id} to settle", interval=0.2)
    assert len(world.effects("send", run_id=run_id)) == 1 and len(world.marks("finished", run_id=run_id)) == 1
    assert len(lg_server.runs(thread_id)) == 2
    # Past its wait: a resume for a later re-drive finds the thread finished and sends nothing either.
    later = adapter_for(RUNTIME).resume(case, 2, run=run, request=dataclasses.replace(request, redrive=1))
    assert later.already and len(lg_server.runs(thread_id)) == 2


def test_an_abandoned_case_ends_the_thread_and_nothing_is_sent(lg_server, revive_http, raw_worker_key, world):
    run_id, thread_id, _, conn = start_parked(lg_server, revive_http, raw_worker_key, world)
    case = case_of(run_id)
    run = Run.objects.get(pk=run_id)
    request = AbandonRequest(run_id=run_id, case_id=case.reference, reason="operator gave up", rejected={conn: 1})
    told = adapter_for(RUNTIME).abandon(run=run, request=request)
    assert told.detail["outcome"] == "told" and told.detail["interrupts"]
    wait_for(lambda: lg_server.settled(thread_id), f"thread {thread_id} to settle", interval=0.2)
    status = adapter_for(RUNTIME).status(run)
    assert status.state == "failed", status  # the node raised RunAbandoned and nothing caught it
    assert not world.effects("send", run_id=run_id) and not world.marks("finished", run_id=run_id)
    again = adapter_for(RUNTIME).abandon(run=run, request=request)  # told once: a retry sends nothing
    assert again.detail["earlier_attempt"] and len(lg_server.runs(thread_id)) == 2


def test_delivery_failures_say_whether_a_retry_can_help(lg_server, settings):
    class _Run:
        def __init__(self, **ref) -> None:
            self.pk, self.runtime_ref = "lgs_x", ref

    request = ResumeRequest(run_id="lgs_x", case_ids=("CASERV-0001",), generations={"c": 2}, rejected={"c": 1})
    adapter = adapter_for(RUNTIME)
    assistant = lg_server.assistant(GRAPH)
    with pytest.raises(RunGone):  # the server knows no such thread: retrying cannot help
        adapter.resume(
            None, 2, run=_Run(thread_id="6f0c1f8e-0000-4000-8000-000000000000", assistant_id=assistant), request=request
        )
    with pytest.raises(RuntimeMisconfigured):  # no address in the run's reference: an operator must fix it
        adapter.resume(None, 2, run=_Run(thread_id=lg_server.new_thread()), request=request)
    settings.REVIVE_LANGGRAPH_SERVER_URL = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RuntimeUnavailable):  # nothing listens: retry with backoff
        adapter.resume(None, 2, run=_Run(thread_id="t", assistant_id=assistant), request=request)


def owner_reconnects_without_delivery(world, case):
    """The owner's reconnect and the case's release, with the owed delivery held (``held_outbox``): the test delivers."""
    from django.db import transaction

    from cases import services

    world.restore(case.connection_id)
    with transaction.atomic():
        services.case_reauthorize(case_id=case.pk, actor="owner:test")
        services.case_resume_begin(case_id=case.pk, actor="system:test")
    return case.__class__.objects.get(pk=case.pk)


def test_the_doctor_probes_the_agent_server(lg_server, settings):
    from operations.doctor import revive_doctor

    def item() -> dict:
        readout = revive_doctor(probe_timeout=3.0)
        return next(i for i in readout["runtimes"]["items"] if i["name"] == RUNTIME)

    settings.REVIVE_RUNTIMES = [RUNTIME]
    up = item()
    assert (up["status"], up["target"], up["error"]) == ("ok", lg_server.url, None)
    assert up["version"] == lg_server.http.get("/info").json()["version"]
    settings.REVIVE_LANGGRAPH_SERVER_URL = f"http://127.0.0.1:{free_port()}"
    down = item()
    assert down["status"] == "unreachable" and "cannot be reached" in down["error"], down
