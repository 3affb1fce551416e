"""The LangGraph adapter on its own: PostgreSQL (the test database) and SQLite (the embedded default) checkpointers,
Command(resume=...) only for the released cases, one resume at a time per thread, and clear failures."""

from __future__ import annotations

import operator
import threading
import time
import uuid
from typing import Annotated, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from cases.runtimes import ResumeRequest, RunNotWaiting, RuntimeMisconfigured, adapter_for, reset_adapters
from cases.runtimes import langgraph as lg_adapter

RAN: list[tuple[str, object]] = []


class State(TypedDict, total=False):
    cases: list
    log: Annotated[list, operator.add]


def _parked(state: State) -> dict:
    value = interrupt({"revive": "parked", "cases": state["cases"]})
    RAN.append(("resumed", value))
    if value.get("slow"):
        time.sleep(1.0)
    return {"log": [value["cases"]]}


def graph() -> StateGraph:
    g = StateGraph(State)
    g.add_node("parked", _parked)
    g.add_edge(START, "parked")
    g.add_edge("parked", END)
    return g


class FakeRun:
    def __init__(self, thread_id: str, graph: str = "adapter-test") -> None:
        self.pk = f"run_{thread_id}"
        self.runtime_ref = {"thread_id": thread_id, "graph": graph}


class FakeCase:
    reference = "CASERV-0001"


def resume_request(run: FakeRun, *cases: str, **extra) -> ResumeRequest:
    req = ResumeRequest(run_id=run.pk, case_ids=cases, generations={"conn_a": 2}, rejected={"conn_a": 1})
    if extra:

        class Extra(ResumeRequest):
            def payload(self):
                return {**super().payload(), **extra}

        req = Extra(**req.__dict__)
    return req


def _adapter(settings, checkpoint_url: str = ""):
    settings.REVIVE_LANGGRAPH_GRAPHS = {"adapter-test": "tests.runtimes.test_langgraph_adapter:graph"}
    settings.REVIVE_LANGGRAPH_CHECKPOINT_URL = checkpoint_url
    reset_adapters()
    RAN.clear()
    return adapter_for("langgraph")


@pytest.fixture(params=["postgres", "sqlite"])
def adapter(request, settings, tmp_path, transactional_db):
    yield _adapter(settings, f"sqlite:///{tmp_path / 'langgraph.sqlite3'}" if request.param == "sqlite" else "")
    reset_adapters()


@pytest.fixture
def postgres_adapter(settings, transactional_db):
    yield _adapter(settings)
    reset_adapters()


def park(adapter, *cases: str) -> FakeRun:
    run = FakeRun(uuid.uuid4().hex[:10])
    out = adapter.graph("adapter-test").invoke(
        {"cases": list(cases)}, {"configurable": {"thread_id": run.runtime_ref["thread_id"]}}
    )
    assert out["__interrupt__"]
    return run


def test_the_embedded_default_keeps_checkpoints_in_sqlite_and_production_in_postgresql(settings):
    settings.REVIVE_LANGGRAPH_CHECKPOINT_URL = ""
    assert "dbname=test_revive_" in lg_adapter.checkpoint_url()
    embedded = {"ENGINE": "django.db.backends.sqlite3", "NAME": "var/revive.sqlite3"}
    assert lg_adapter.checkpoint_url(embedded) == f"sqlite:///{settings.VAR_DIR / 'langgraph.sqlite3'}"


def test_resumes_the_parked_thread_with_command_resume(adapter):
    run = park(adapter, "CASERV-0001")
    assert adapter.status(run).state == "waiting"
    assert adapter.park(run, FakeCase())["node"] == "parked"
    result = adapter.resume(FakeCase(), 2, run=run, request=resume_request(run, "CASERV-0001"))
    assert (result.already, result.detail["outcome"]) == (False, "completed")
    assert [("resumed", resume_request(run, "CASERV-0001").payload())] == RAN
    assert adapter.status(run).state == "completed"
    again = adapter.resume(FakeCase(), 2, run=run, request=resume_request(run, "CASERV-0001"))
    assert again.already and len(RAN) == 1  # past its wait: nothing is sent twice


def test_a_thread_waiting_on_another_case_is_not_resumed(adapter):
    run = park(adapter, "CASERV-0001", "CASERV-0002")
    with pytest.raises(RunNotWaiting):
        adapter.resume(FakeCase(), 2, run=run, request=resume_request(run, "CASERV-0001"))
    assert not RAN and adapter.status(run).state == "waiting"


def test_a_thread_that_never_reached_its_wait_is_not_waiting_and_an_unknown_graph_is_misconfigured(adapter):
    run = FakeRun(uuid.uuid4().hex[:10])
    with pytest.raises(RunNotWaiting):
        adapter.resume(FakeCase(), 2, run=run, request=resume_request(run, "CASERV-0001"))
    assert adapter.status(run).state == "unknown"
    with pytest.raises(RuntimeMisconfigured):
        adapter.resume(FakeCase(), 2, run=FakeRun("x", graph="nope"), request=resume_request(run, "CASERV-0001"))


def test_two_resumes_of_one_thread_at_once_run_it_once(postgres_adapter):
    """On PostgreSQL an advisory lock per thread; on SQLite the run's delivery claim is the guard (test_resume)."""
    adapter = postgres_adapter
    run = park(adapter, "CASERV-0001")
    outcomes = []

    def resume():
        try:
            outcomes.append(
                adapter.resume(FakeCase(), 2, run=run, request=resume_request(run, "CASERV-0001", slow=True))
            )
        except RunNotWaiting as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(RAN) == 1
    assert (
        sum(isinstance(o, RunNotWaiting) for o in outcomes) + sum(getattr(o, "already", False) for o in outcomes) == 1
    )


def test_worker_and_revive_serialise_checkpoint_setup_under_one_lock():
    from revive_sdk.langgraph import PARKED_KIND, SETUP_LOCK_KEY

    assert lg_adapter._lock_key("__setup__") == SETUP_LOCK_KEY
    assert PARKED_KIND == lg_adapter.PARKED_KIND


def test_a_graph_that_lives_in_the_worker_is_released_not_loaded(settings):
    """LangGraph.js runs (``resumed_by: worker``): Revive cannot load their graph, so the delivery releases the run
    and never looks the graph up; the worker resumes its own thread (sdk/typescript/test/langgraph.test.ts)."""
    from types import SimpleNamespace

    settings.REVIVE_LANGGRAPH_GRAPHS = {}
    run = SimpleNamespace(pk="run_js", runtime_ref={"thread_id": "t-js", "graph": "briefing", "resumed_by": "worker"})
    adapter = lg_adapter.LangGraphAdapter()
    request = ResumeRequest(run_id="run_js", case_ids=("CASERV-0001",), generations={"conn": 2}, rejected={"conn": 1})
    result = adapter.resume(None, 2, run=run, request=request)
    assert (result.already, result.detail) == (
        False,
        {"thread_id": "t-js", "resumed_by": "worker", "outcome": "released"},
    )
    assert adapter.status(run).state == "unknown"
    assert adapter.park(run, None) == {"thread_id": "t-js", "resumed_by": "worker"}
    with pytest.raises(RuntimeMisconfigured):  # without the mark, an unregistered graph is still a clear failure
        adapter.resume(
            None,
            2,
            run=SimpleNamespace(pk="run_py", runtime_ref={"thread_id": "t", "graph": "briefing"}),
            request=request,
        )


CRASH: list[bool] = []


def _next_step_crashes_once(state: State) -> dict:
    RAN.append(("next", None))
    if CRASH:
        CRASH.pop()
        raise RuntimeError("the worker running the resumed run died")
    return {"log": ["next"]}


def crashing_graph() -> StateGraph:
    g = StateGraph(State)
    g.add_node("parked", _parked)
    g.add_node("next", _next_step_crashes_once)
    g.add_edge(START, "parked")
    g.add_edge("parked", "next")
    g.add_edge("next", END)
    return g


def test_a_redrive_continues_a_stalled_thread_from_its_latest_checkpoint(postgres_adapter, settings):
    """The watchdog's re-drive: the resume was delivered and the parked node finished, then the run died in its
    next node. Nothing waits any more, so a plain resume is refused; a re-drive continues the thread from its
    latest checkpoint (the parked node is not run again)."""
    settings.REVIVE_LANGGRAPH_GRAPHS = {"crashing": "tests.runtimes.test_langgraph_adapter:crashing_graph"}
    adapter = postgres_adapter
    run = FakeRun(uuid.uuid4().hex[:10], graph="crashing")
    config = {"configurable": {"thread_id": run.runtime_ref["thread_id"]}}
    assert adapter.graph("crashing").invoke({"cases": ["CASERV-0001"]}, config)["__interrupt__"]
    CRASH.append(True)
    request = resume_request(run, "CASERV-0001")
    with pytest.raises(Exception, match="died"):
        adapter.resume(FakeCase(), 2, run=run, request=request)
    with pytest.raises(RunNotWaiting):  # not waiting any more, and not a re-drive
        adapter.resume(FakeCase(), 2, run=run, request=request)
    redrive = ResumeRequest(**{**request.__dict__, "redrive": 1})
    result = adapter.resume(FakeCase(), 2, run=run, request=redrive)
    assert result.detail["outcome"] == "completed" and adapter.status(run).state == "completed"
    assert [name for name, _ in RAN] == ["resumed", "next", "next"]
