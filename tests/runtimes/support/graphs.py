"""LangGraph graphs of the runtime tests, registered in ``REVIVE_LANGGRAPH_GRAPHS`` (see ``config.py``).

``briefing``: ``prepare`` commits a side effect (a draft in the workspace, no
provider credential), ``send`` uses the provider credential the test can revoke
(so the run parks there), ``finish`` closes the run. Every node
records where and when it ran.

``two_connections``: ``check`` needs two connections' credentials before anything
is sent; when both are rejected the run is parked on two cases at once.
"""

from __future__ import annotations

import operator
import os
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph

from revive_sdk import ProviderError, RunParked
from revive_sdk import langgraph as revive_lg

from .clients import revive
from .world import World


class Briefing(TypedDict, total=False):
    run_id: str
    connection_id: str
    send_key: str
    log: Annotated[list, operator.add]


def _prepare(state: Briefing) -> dict:
    world, run_id, conn = World(), state["run_id"], state["connection_id"]
    world.mark("prepare", run_id=run_id)
    result = revive_lg.protect_action(
        revive(),
        run_id=run_id,
        checkpoint_id="04",
        connection_id=conn,
        action_key="prepare_brief_04",
        execute=lambda ctx: world.effect("prepare", run_id=run_id, idempotency_key=ctx.idempotency_key),
        reconcile=lambda ctx: world.find(ctx.idempotency_key),
    )
    return {"log": [("prepare", result["id"])]}


def _send(state: Briefing) -> dict:
    world, run_id, conn = World(), state["run_id"], state["connection_id"]
    world.mark("send", run_id=run_id)

    def reconcile(ctx):
        world.lease(conn)  # asking the provider needs the credential too
        return world.find(ctx.idempotency_key)

    result = revive_lg.protect_action(
        revive(),
        run_id=run_id,
        checkpoint_id="05",
        connection_id=conn,
        action_key=state.get("send_key", "send_exec_05"),
        credential=lambda: world.lease(conn),
        execute=lambda ctx: world.effect(
            "send", run_id=run_id, idempotency_key=ctx.idempotency_key, credential=ctx.credential
        ),
        reconcile=reconcile,
    )
    world.mark("sent", run_id=run_id, generation=revive().lease(conn)["generation"])
    return {"log": [("send", result["id"])]}


def _finish(state: Briefing) -> dict:
    World().mark("finished", run_id=state["run_id"])
    return {"log": [("finish", os.getpid())]}


def briefing() -> StateGraph:
    graph = StateGraph(Briefing)
    graph.add_node("prepare", _prepare)
    graph.add_node("send", _send)
    graph.add_node("finish", _finish)
    graph.add_edge(START, "prepare")
    graph.add_edge("prepare", "send")
    graph.add_edge("send", "finish")
    graph.add_edge("finish", END)
    return graph


class TwoConnections(TypedDict, total=False):
    run_id: str
    connections: list
    log: Annotated[list, operator.add]


def _check(state: TwoConnections) -> dict:
    """Both credentials must work before anything is sent: every rejected one parks the run on its case."""
    world, run_id, client = World(), state["run_id"], revive()
    world.mark("check", run_id=run_id)
    parked = []
    for conn in state["connections"]:
        generation = client.lease(conn)["generation"]
        try:
            world.lease(conn)
        except ProviderError as exc:
            answer = client.report_credential_failure(
                run_id=run_id,
                connection_id=conn,
                generation=generation,
                error=exc,
                checkpoint_id="02",
                raise_signal=False,
            )
            if answer["outcome"] != "parked":
                raise
            parked.append(RunParked(answer["case_id"], connection_id=conn, generation=generation))
    if parked:
        revive_lg.wait_for_reauthorization(parked, run_id=run_id, revive=client)
        world.mark("check_resumed", run_id=run_id)
    return {"log": [("check", len(parked))]}


def _send_both(state: TwoConnections) -> dict:
    world, run_id = World(), state["run_id"]
    sent = []
    for conn in state["connections"]:
        result = revive_lg.protect_action(
            revive(),
            run_id=run_id,
            checkpoint_id="03",
            connection_id=conn,
            action_key=f"send_{conn}",
            credential=lambda conn=conn: world.lease(conn),
            execute=lambda ctx: world.effect("send", run_id=run_id, idempotency_key=ctx.idempotency_key),
        )
        sent.append(result["id"])
    world.mark("finished", run_id=run_id)
    return {"log": [("send", sent)]}


def two_connections() -> StateGraph:
    graph = StateGraph(TwoConnections)
    graph.add_node("check", _check)
    graph.add_node("send", _send_both)
    graph.add_edge(START, "check")
    graph.add_edge("check", "send")
    graph.add_edge("send", END)
    return graph
