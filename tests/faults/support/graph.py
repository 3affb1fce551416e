"""The fault suite's LangGraph workflow (``REVIVE_LANGGRAPH_GRAPHS["faults-sends"]``): three protected sends."""

from __future__ import annotations

import operator
import os
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph

from revive_sdk import langgraph as revive_lg
from tests.runtimes.support.clients import revive

from . import steps


class Sends(TypedDict, total=False):
    run_id: str
    connection_id: str
    faults: dict
    log: Annotated[list, operator.add]


def _send(key: str):
    def node(state: Sends) -> dict:
        result = revive_lg.protect_action(
            revive(),
            **steps.action_kwargs(
                run_id=state["run_id"], conn=state["connection_id"], key=key, faults=state.get("faults") or {}
            ),
        )
        return {"log": [(key, result["id"])]}

    return node


def _finish(state: Sends) -> dict:
    steps.finished(state["run_id"], pid=os.getpid())
    return {"log": [("finish", os.getpid())]}


def sends() -> StateGraph:
    graph = StateGraph(Sends)
    previous = START
    for key in steps.SENDS:
        graph.add_node(key, _send(key))
        graph.add_edge(previous, key)
        previous = key
    graph.add_node("finish", _finish)
    graph.add_edge(previous, "finish")
    graph.add_edge("finish", END)
    return graph
