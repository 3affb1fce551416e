"""The LangGraph graph the recovery benchmark parks and resumes (registered as ``bench-briefing``).

``prepare`` commits an effect, ``send`` needs a provider credential the benchmark
revokes per connection, ``done`` ends the run. Every ``send`` start is stamped
(time, pid) in ``$BENCH_DIR/marks.jsonl``: the stamp written by Revive's Celery
worker is the moment the run received its resume. Effects go to
``effects.jsonl`` and are never de-duplicated, so a repeated action would show.
"""

from __future__ import annotations

import fcntl
import json
import operator
import os
import threading
import time
from pathlib import Path
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph

from revive_sdk import ProviderError, Revive
from revive_sdk import langgraph as revive_lg

DEAD = {
    "error": "invalid_grant",
    "error_description": "AADSTS700082: The refresh token has expired due to inactivity.",
    "error_codes": [700082],
}
_local = threading.local()


def root() -> Path:
    return Path(os.environ["BENCH_DIR"])


def append(name: str, record: dict) -> None:
    line = (json.dumps({**record, "pid": os.getpid(), "t": time.time()}) + "\n").encode()
    fd = os.open(root() / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
    finally:
        os.close(fd)


def read(name: str) -> list[dict]:
    path = root() / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def lease(connection_id: str) -> str:
    if (root() / "revoked" / connection_id).exists():
        raise ProviderError(400, DEAD, {"Content-Type": "application/json"})
    return "token"


def revive() -> Revive:
    client = getattr(_local, "client", None)
    if client is None:
        client = _local.client = Revive(os.environ["REVIVE_URL"], os.environ["REVIVE_API_KEY"])
    return client


class State(TypedDict, total=False):
    run_id: str
    connection_id: str
    log: Annotated[list, operator.add]


def _prepare(state: State) -> dict:
    run_id, conn = state["run_id"], state["connection_id"]
    revive_lg.protect_action(
        revive(),
        run_id=run_id,
        checkpoint_id="04",
        connection_id=conn,
        action_key="prepare",
        execute=lambda ctx: append("effects.jsonl", {"effect": "prepare", "run_id": run_id}) or "ok",
    )
    return {"log": ["prepare"]}


def _send(state: State) -> dict:
    run_id, conn = state["run_id"], state["connection_id"]
    append("marks.jsonl", {"what": "send_start", "run_id": run_id})
    revive_lg.protect_action(
        revive(),
        run_id=run_id,
        checkpoint_id="05",
        connection_id=conn,
        action_key="send",
        credential=lambda: lease(conn),
        execute=lambda ctx: append("effects.jsonl", {"effect": "send", "run_id": run_id}) or "ok",
    )
    return {"log": ["send"]}


def _done(state: State) -> dict:
    append("marks.jsonl", {"what": "done", "run_id": state["run_id"]})
    return {"log": ["done"]}


def briefing() -> StateGraph:
    graph = StateGraph(State)
    graph.add_node("prepare", _prepare)
    graph.add_node("send", _send)
    graph.add_node("done", _done)
    graph.add_edge(START, "prepare")
    graph.add_edge("prepare", "send")
    graph.add_edge("send", "done")
    graph.add_edge("done", END)
    return graph
