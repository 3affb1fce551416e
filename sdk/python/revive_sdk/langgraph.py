"""LangGraph helpers: a rejected credential pauses the node with ``interrupt``; Revive resumes the thread.

Inside a node::

    from revive_sdk import langgraph as revive_lg

    def send_brief(state, config):
        sent = revive_lg.protect_action(
            revive, run_id=state["run_id"], checkpoint_id="05", connection_id="conn_microsoft_ops",
            action_key="send_exec_05", credential=lambda: vault.lease("conn_microsoft_ops"),
            execute=lambda ctx: graph_api.send_mail(..., idempotency_key=ctx.idempotency_key))
        return {"sent": sent}

When the provider rejects the credential, ``protect_action`` calls ``interrupt``
with a payload naming the recovery case; LangGraph saves the thread at that
checkpoint and the invoke returns. After the owner reconnects, Revive resumes
the *same* ``thread_id`` with ``Command(resume={...})`` (never ``update_state``);
the node runs again from its start, committed actions replay their recorded
results, and the rejected action runs with the new generation.

If an operator abandons (or rejects) the case instead, Revive resumes the thread
with an ``{"revive": "abandoned"}`` value: ``protect_action`` (and
``wait_for_reauthorization``) raise ``RunAbandoned``. Catch it in the node to end
the graph your own way; uncaught, the invoke ends with it.

Register the run once, with the graph's name as Revive knows it
(``REVIVE_LANGGRAPH_GRAPHS`` on the server)::

    revive_lg.register_run(revive, run_id=run_id, thread_id=thread_id, graph="briefing", workflow_name="Nightly brief")

Only this module imports LangGraph.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langgraph.types import interrupt

from .client import Revive
from .errors import ActionInProgress, RunAbandoned, RunParked
from .flows import ActionContext
from .names import (  # noqa: F401  (re-exported)
    ABANDON_KIND,
    PARKED_KIND,
    RESUME_KIND,
    RUNTIME_LANGGRAPH,
    RUNTIME_LANGGRAPH_SERVER,
)

SETUP_LOCK_KEY = int.from_bytes(hashlib.sha256(b"revive-langgraph:__setup__").digest()[:8], "big", signed=True)
"""The PostgreSQL advisory lock under which checkpoint tables are set up (cases.runtimes.langgraph uses it too)."""
MAX_PARKS = 32
# An executing action's lock is short (``REVIVE_ACTION_LOCK_TIMEOUT``, default 60 s, extended by heartbeats), so
# waiting out ``ACTION_IN_PROGRESS`` ``retry_after`` a few times always outlasts a dead attempt's lock.
MAX_IN_PROGRESS_WAITS = 10
IN_PROGRESS_WAIT_MAX = 120.0
"""A node that parks this often on one action is looping: stop instead of waiting forever."""


def parked_payload(parked: Sequence[RunParked], *, run_id: str) -> dict[str, Any]:
    """What the interrupt shows: which cases hold the run, never a credential."""
    return {
        "revive": PARKED_KIND,
        "run_id": run_id,
        "cases": [p.case_id for p in parked],
        "connections": {p.connection_id: p.generation for p in parked if p.connection_id},
    }


def is_parked_interrupt(value: Any) -> bool:
    return isinstance(value, dict) and value.get("revive") == PARKED_KIND


def _covers(value: Any, case_ids: set[str]) -> bool:
    return isinstance(value, dict) and value.get("revive") == RESUME_KIND and case_ids <= set(value.get("cases") or ())


def _abandons(value: Any, case_ids: set[str]) -> bool:
    return (
        isinstance(value, dict)
        and value.get("revive") == ABANDON_KIND
        and bool(case_ids & set(value.get("cases") or ()))
    )


def _released_already(revive: Revive | None, run_id: str, case_ids: set[str]) -> bool:
    """True when none of ``case_ids`` still blocks the run: its resume came before the run reached its wait."""
    if revive is None:
        return False
    status = revive.recovery_status(run_id)
    blocking = {c["case_id"] for c in status.get("cases", []) if c.get("blocking")}
    return not (blocking & case_ids)


def wait_for_reauthorization(
    parked: RunParked | Sequence[RunParked], *, run_id: str, revive: Revive | None = None
) -> dict[str, Any]:
    """Pause the node until Revive resumes this run for every case in ``parked``; return the resume value.
    Raise ``RunAbandoned`` if Revive answers instead that one of those cases was abandoned.

    LangGraph matches ``interrupt`` calls of a re-executed node by position, so a resume value meant for an
    earlier park of this node can come back here; one that does not name our cases is not ours, and the
    node interrupts again instead of running on. With ``revive`` given, a resume that was sent before the
    run reached this point is not waited for: the cases are already released.
    """
    items = [parked] if isinstance(parked, RunParked) else list(parked)
    case_ids = {p.case_id for p in items}
    if _released_already(revive, run_id, case_ids):
        return {"revive": RESUME_KIND, "run_id": run_id, "cases": sorted(case_ids), "early": True}
    payload = parked_payload(items, run_id=run_id)
    for _ in range(MAX_PARKS):
        value = interrupt(payload)
        if _covers(value, case_ids):
            return value
        if _abandons(value, case_ids):
            raise RunAbandoned((value.get("cases") or [None])[0], reason=str(value.get("reason") or ""), run_id=run_id)
    raise RuntimeError(f"run {run_id} was resumed {MAX_PARKS} times without a resume for {sorted(case_ids)}")


def protect_action(
    revive: Revive,
    *,
    run_id: str,
    checkpoint_id: str,
    connection_id: str,
    action_key: str,
    execute: Callable[[ActionContext], Any],
    credential: Callable[[], Any] | None = None,
    reconcile: Callable[[ActionContext], Any] | None = None,
    params: dict[str, Any] | None = None,
) -> Any:
    """``Revive.protect_action`` for a LangGraph node: a parked run becomes an ``interrupt``, then retries.

    Each attempt leases the connection's current generation, so after the resume the action runs with the
    new one; a committed action replays its result instead of running again.
    """
    parks = 0
    for _ in range(MAX_PARKS + MAX_IN_PROGRESS_WAITS):
        try:
            return revive.protect_action(
                run_id=run_id,
                checkpoint_id=checkpoint_id,
                connection_id=connection_id,
                action_key=action_key,
                execute=execute,
                credential=credential,
                reconcile=reconcile,
                params=params,
            )
        except ActionInProgress as busy:
            # Another attempt (a worker that died mid-execute) holds the short lock: wait it out, then begin again
            # -- it has committed (replay) or its lock ran out (reconcile).
            time.sleep(min(busy.retry_after, IN_PROGRESS_WAIT_MAX))
        except RunParked as parked:
            parks += 1
            if parks > MAX_PARKS:
                break
            wait_for_reauthorization(parked, run_id=run_id, revive=revive)
    raise RuntimeError(f"action {action_key} of run {run_id} parked {MAX_PARKS} times or stayed in progress")


def register_run(revive: Revive, *, run_id: str, thread_id: str, graph: str, workflow_name: str) -> dict[str, Any]:
    """Tell Revive which thread holds the run and under which name its server knows the graph."""
    return revive.register_run(
        run_id=run_id,
        runtime=RUNTIME_LANGGRAPH,
        workflow_name=workflow_name,
        runtime_ref={"thread_id": thread_id, "graph": graph},
    )


def register_server_run(
    revive: Revive, *, run_id: str, thread_id: str, assistant_id: str, workflow_name: str
) -> dict[str, Any]:
    """For a graph deployed on a LangGraph Agent Server: tell Revive the run's thread and assistant there. Revive
    resumes the thread through the server's API (``POST /threads/{thread_id}/runs`` with ``command.resume``), at
    ``REVIVE_LANGGRAPH_SERVER_URL``; it never imports the graph. Inside the graph, ``protect_action`` is the same."""
    return revive.register_run(
        run_id=run_id,
        runtime=RUNTIME_LANGGRAPH_SERVER,
        workflow_name=workflow_name,
        runtime_ref={"thread_id": thread_id, "assistant_id": assistant_id},
    )


def run_config(thread_id: str, **configurable: Any) -> dict[str, Any]:
    """The invoke config of a run: its thread is its durable cursor, the same before and after the resume."""
    return {"configurable": {"thread_id": thread_id, **configurable}}


@contextlib.contextmanager
def checkpointer(url: str) -> Iterator[Any]:
    """The checkpointer Revive resumes from: PostgreSQL (``postgresql://...``) or SQLite (``sqlite:///path``).

    The tables are created on first use. Worker and Revive must point at the same store.
    """
    if url.startswith(("postgres://", "postgresql://")):
        import psycopg
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(url) as saver:
            conn = saver.conn
            assert isinstance(conn, psycopg.Connection)  # from_conn_string gives the saver one connection, not a pool
            # setup() is idempotent, but two processes running it at once race on its migrations table:
            # serialise it under the advisory lock Revive's own worker takes for the same purpose.
            conn.execute("SELECT pg_advisory_lock(%s)", (SETUP_LOCK_KEY,))
            try:
                saver.setup()
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK_KEY,))
            yield saver
        return
    if url.startswith("sqlite:///"):
        url = url[len("sqlite:///") :]
    from langgraph.checkpoint.sqlite import SqliteSaver

    with SqliteSaver.from_conn_string(url) as saver:
        saver.setup()
        yield saver
