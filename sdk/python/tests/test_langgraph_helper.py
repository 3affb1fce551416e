"""revive_sdk.langgraph against the real worker API: a rejected credential becomes an interrupt, and only a resume
naming the run's case lets the node go on."""

import uuid

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command
from typing_extensions import TypedDict

from cases import services
from revive_sdk import ProviderError, Revive, RunParked
from revive_sdk import langgraph as revive_lg

pytestmark = pytest.mark.django_db(transaction=True)

DEAD = ProviderError(
    400, {"error": "invalid_grant", "error_description": "AADSTS700082: expired.", "error_codes": [700082]}
)


class State(TypedDict, total=False):
    sent: dict


@pytest.fixture
def client(worker_key, revive_url):
    c = Revive(revive_url, worker_key)
    yield c
    c.close()


def build(client, sink, vault, *, run_id="run_7f2"):
    def send(state):
        sent = revive_lg.protect_action(
            client,
            run_id=run_id,
            checkpoint_id="05",
            connection_id="conn_microsoft_ops",
            action_key="send_exec_05",
            credential=vault,
            execute=lambda ctx: sink.send("ceo@example.com", ctx.idempotency_key),
        )
        return {"sent": sent}

    graph = StateGraph(State)
    graph.add_node("send", send)
    graph.add_edge(START, "send")
    graph.add_edge("send", END)
    return graph


def release(case_id):
    services.case_reauthorize(case_id=case_id, actor="owner")
    services.case_resume_begin(case_id=case_id, actor="system")


def test_a_parked_node_interrupts_and_resumes_on_command_with_its_case(make_connection, make_run, client, sink):
    make_connection("conn_microsoft_ops")
    make_run("run_7f2")
    dead = {"on": True}

    def vault():
        if dead["on"]:
            raise DEAD
        return "token"

    app = build(client, sink, vault).compile(checkpointer=InMemorySaver())
    config = revive_lg.run_config("thread-1")
    first = app.invoke({}, config)
    (intr,) = first["__interrupt__"]
    assert revive_lg.is_parked_interrupt(intr.value)
    case_id = intr.value["cases"][0]
    assert intr.value["connections"] == {"conn_microsoft_ops": 1} and not sink.accepted

    # A resume for some other case is not ours: the node waits again instead of running on.
    again = app.invoke(Command(resume={"revive": "resume", "cases": ["CASERV-9999"]}), config)
    assert again["__interrupt__"] and not sink.accepted

    dead["on"] = False
    release(case_id)
    done = app.invoke(
        Command(resume={"revive": "resume", "cases": [case_id], "generations": {"conn_microsoft_ops": 2}}), config
    )
    assert "__interrupt__" not in done and len(sink.accepted) == 1
    assert done["sent"] == sink.accepted[0]


def test_a_case_released_before_the_wait_is_not_waited_for(make_connection, make_run, client, sink):
    make_connection("conn_microsoft_ops")
    make_run("run_7f2")
    answer = client.report_credential_failure(
        run_id="run_7f2", connection_id="conn_microsoft_ops", generation=1, error=DEAD, raise_signal=False
    )
    release(answer["case_id"])  # the resume came first
    seen = []

    def node(state):
        seen.append(
            revive_lg.wait_for_reauthorization(
                RunParked(answer["case_id"], connection_id="conn_microsoft_ops", generation=1),
                run_id="run_7f2",
                revive=client,
            )
        )
        return {"sent": {"early": True}}

    graph = StateGraph(State)
    graph.add_node("wait", node)
    graph.add_edge(START, "wait")
    graph.add_edge("wait", END)
    result = graph.compile(checkpointer=InMemorySaver()).invoke({}, revive_lg.run_config("thread-2"))
    assert "__interrupt__" not in result and seen[0]["early"] is True


def test_the_checkpointer_factory_gives_a_durable_sqlite_saver(tmp_path, make_connection, make_run, client, sink):
    make_connection("conn_microsoft_ops")
    make_run("run_7f2")
    url = f"sqlite:///{tmp_path / 'checkpoints.sqlite3'}"

    def vault():
        raise DEAD

    with revive_lg.checkpointer(url) as saver:
        first = build(client, sink, vault).compile(checkpointer=saver).invoke({}, revive_lg.run_config("t-3"))
    assert first["__interrupt__"]
    with revive_lg.checkpointer(url) as saver:  # another process, later: the thread is still parked there
        state = build(client, sink, vault).compile(checkpointer=saver).get_state(revive_lg.run_config("t-3"))
    assert state.next == ("send",) and revive_lg.is_parked_interrupt(state.interrupts[0].value)


def test_a_reconcile_lookup_with_a_rejected_credential_parks_the_run(make_connection, make_run, client, sink):
    make_connection("conn_microsoft_ops")
    make_run("run_7f2")
    services.action_begin(
        run_id="run_7f2",
        checkpoint_id="05",
        connection_id="conn_microsoft_ops",
        action_key="send_exec_05",
        generation=1,
        actor="worker",
    )
    services.action_mark_ambiguous(
        run_id="run_7f2", action_key="send_exec_05", generation=1, reason="killed", actor="worker"
    )

    def lookup(ctx):
        raise DEAD  # asking the provider needs the dead credential too

    with pytest.raises(RunParked) as parked:
        client.protect_action(
            run_id="run_7f2",
            checkpoint_id="05",
            connection_id="conn_microsoft_ops",
            action_key="send_exec_05",
            execute=lambda ctx: pytest.fail("must not execute"),
            reconcile=lookup,
        )
    status = client.recovery_status("run_7f2")
    assert [c["case_id"] for c in status["cases"]] == [parked.value.case_id]
    assert status["cases"][0]["action_key"] == "send_exec_05"
    assert {a["action_key"]: a["state"] for a in status["actions"]} == {"send_exec_05": "ambiguous"}
    assert not sink.accepted


def test_register_run_records_the_thread_and_graph(make_connection, client):
    run_id = f"run_{uuid.uuid4().hex[:8]}"
    out = revive_lg.register_run(client, run_id=run_id, thread_id="thread-9", graph="briefing", workflow_name="brief")
    assert (out["runtime"], out["runtime_ref"]) == ("langgraph", {"thread_id": "thread-9", "graph": "briefing"})


def test_an_abandoned_value_raises_run_abandoned_in_the_node_and_another_cases_does_not():
    from revive_sdk import RunAbandoned

    seen = []

    def wait(state):
        try:
            revive_lg.wait_for_reauthorization(RunParked("CASERV-0001", connection_id="c", generation=1), run_id="r1")
        except RunAbandoned as abandoned:
            seen.append((abandoned.case_id, abandoned.reason))
            return {"sent": {"abandoned": abandoned.case_id}}
        return {"sent": {"resumed": True}}

    graph = StateGraph(State)
    graph.add_node("wait", wait)
    graph.add_edge(START, "wait")
    graph.add_edge("wait", END)
    app = graph.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    assert app.invoke({}, config)["__interrupt__"]
    other = app.invoke(Command(resume={"revive": "abandoned", "cases": ["OTHER"], "reason": "x"}), config)
    assert other["__interrupt__"] and not seen  # not ours: it waits again
    out = app.invoke(Command(resume={"revive": "abandoned", "cases": ["CASERV-0001"], "reason": "owner left"}), config)
    assert out["sent"] == {"abandoned": "CASERV-0001"} and seen == [("CASERV-0001", "owner left")]
    assert not app.get_state(config).next  # the graph ended
