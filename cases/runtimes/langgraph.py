"""LangGraph: resume the run's own thread with ``Command(resume=...)`` at its latest checkpoint.

The graphs are in-process: Revive's worker imports the graph registered under
the run's ``runtime_ref["graph"]`` (``REVIVE_LANGGRAPH_GRAPHS``, name -> dotted
path), compiles it with the shared checkpointer (PostgreSQL; SQLite in the
embedded default) and invokes it on the run's ``thread_id``. It never calls
``update_state``: that writes a new checkpoint as if a node had run, dropping the
pending writes of the interrupted super-step and re-running siblings that had
already finished. ``Command(resume=...)`` answers exactly the pending
``interrupt`` and continues from the saved checkpoint.

A run whose case was abandoned is resumed the same way with an ``abandoned`` value (``AbandonRequest``): the
SDK's wait raises ``RunAbandoned`` in the node and the graph ends (the node may catch it and end cleanly).
A graph that lives in the worker (LangGraph.js) cannot be told: it stays parked.

Only one resume of a thread executes at a time: on PostgreSQL a session advisory
lock keyed by the thread (released by the server if the process dies); on
SQLite the run's delivery claim (``cases.resume``) is the only guard.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils.module_loading import import_string

from revive_sdk.names import PARKED_KIND

from .base import (
    AbandonNotSupported,
    AbandonRequest,
    ResumeRequest,
    ResumeResult,
    RunNotWaiting,
    RunStatus,
    RuntimeAdapter,
    RuntimeDeliveryError,
    RuntimeMisconfigured,
)

if TYPE_CHECKING:
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.checkpoint.sqlite import SqliteSaver
    from psycopg import Connection
    from psycopg.rows import DictRow
    from psycopg_pool import ConnectionPool

RESUMED_BY_WORKER = "worker"
"""``runtime_ref["resumed_by"]`` of a run whose graph lives in the worker, not in Revive (LangGraph.js, through the
TypeScript SDK's ``registerRun``): Revive cannot load that graph, so releasing the run is the delivery, and the worker
resumes its own thread with ``Command({ resume })`` once its cases no longer block it (``resumeWhenReleased``)."""


def _resumed_by_worker(run) -> bool:
    return (run.runtime_ref or {}).get("resumed_by") == RESUMED_BY_WORKER


def checkpoint_url(database: dict[str, Any] | None = None) -> str:
    """Where LangGraph checkpoints live: the setting, else the Django database if PostgreSQL, else var/."""
    if settings.REVIVE_LANGGRAPH_CHECKPOINT_URL:
        return settings.REVIVE_LANGGRAPH_CHECKPOINT_URL
    db = database or settings.DATABASES["default"]
    if db["ENGINE"].endswith("postgresql"):
        from psycopg.conninfo import make_conninfo

        params = {
            "dbname": db["NAME"],
            "user": db.get("USER") or None,
            "password": db.get("PASSWORD") or None,
            "host": db.get("HOST") or None,
            "port": str(db["PORT"]) if db.get("PORT") else None,
        }
        return make_conninfo(**{k: v for k, v in params.items() if v})
    return f"sqlite:///{Path(settings.VAR_DIR) / 'langgraph.sqlite3'}"


def _lock_key(thread_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"revive-langgraph:{thread_id}".encode()).digest()[:8], "big", signed=True)


def _is_parked(value: Any) -> bool:
    return isinstance(value, dict) and value.get("revive") == PARKED_KIND


class _Store:
    """The process's checkpointer and, on PostgreSQL, its connection pool."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pool: ConnectionPool[Connection[DictRow]] | None = None
        self.saver: PostgresSaver | SqliteSaver
        if url.startswith(("postgres://", "postgresql://")) or "dbname=" in url:
            from langgraph.checkpoint.postgres import PostgresSaver
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool

            self.pool = ConnectionPool(
                url,
                min_size=1,
                max_size=8,
                open=True,
                name="revive-langgraph",
                kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
            )
            self.saver = PostgresSaver(self.pool)
            # setup() is idempotent but two processes running it at once race on its migration table.
            with self.pool.connection() as conn:
                conn.execute("SELECT pg_advisory_lock(%s)", (_lock_key("__setup__"),))
                try:
                    self.saver.setup()
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key("__setup__"),))
        else:
            import sqlite3

            from langgraph.checkpoint.sqlite import SqliteSaver

            path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.saver = SqliteSaver(sqlite3.connect(path, check_same_thread=False))
            self.saver.setup()

    @contextlib.contextmanager
    def exclusive(self, thread_id: str) -> Iterator[None]:
        if self.pool is None:
            yield
            return
        with self.pool.connection() as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (_lock_key(thread_id),)).fetchone()
            assert row is not None  # a SELECT of one expression answers one row
            got = row["got"]
            if not got:
                raise RunNotWaiting(
                    f"thread {thread_id} is being resumed by another worker",
                    detail={"thread_id": thread_id, "busy": True},
                )
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(thread_id),))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        else:
            self.saver.conn.close()


class LangGraphAdapter(RuntimeAdapter):
    runtime = "langgraph"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._store: _Store | None = None
        self._graphs: dict[str, Any] = {}
        self._pid = os.getpid()

    # -- plumbing ---------------------------------------------------------------

    def store(self) -> _Store:
        with self._lock:
            if self._store is None:
                self._store = _Store(checkpoint_url())
            return self._store

    def graph(self, name: str) -> Any:
        """The compiled graph registered under ``name``, with Revive's checkpointer."""
        with self._lock:
            compiled = self._graphs.get(name)
        if compiled is not None:
            return compiled
        path = settings.REVIVE_LANGGRAPH_GRAPHS.get(name)
        if not path:
            raise RuntimeMisconfigured(
                f"no LangGraph graph is registered as '{name}' (REVIVE_LANGGRAPH_GRAPHS)", detail={"graph": name}
            )
        target = import_string(path.replace(":", "."))
        builder = target if hasattr(target, "compile") else target()
        compiled = builder.compile(checkpointer=self.store().saver)
        with self._lock:
            self._graphs.setdefault(name, compiled)
            return self._graphs[name]

    @staticmethod
    def _address(run) -> tuple[str, str]:
        ref = run.runtime_ref or {}
        thread_id, graph = ref.get("thread_id"), ref.get("graph")
        if not thread_id or not graph:
            raise RuntimeMisconfigured(
                f"run {run.pk} has no LangGraph thread_id and graph in its runtime reference",
                detail={"runtime_ref": ref},
            )
        return str(thread_id), str(graph)

    @staticmethod
    def _config(thread_id: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": thread_id}}

    # -- the interface ----------------------------------------------------------

    def park(self, run, case) -> dict[str, Any]:
        thread_id, graph_name = self._address(run)
        if _resumed_by_worker(run):
            return {"thread_id": thread_id, "resumed_by": RESUMED_BY_WORKER}
        snapshot = self.graph(graph_name).get_state(self._config(thread_id))
        for task in snapshot.tasks:
            for intr in task.interrupts:
                if _is_parked(intr.value) and case.reference in (intr.value.get("cases") or ()):
                    return {
                        "thread_id": thread_id,
                        "checkpoint_id": snapshot.config["configurable"].get("checkpoint_id"),
                        "node": task.name,
                        "interrupt_id": intr.id,
                    }
        raise RunNotWaiting(f"thread {thread_id} is not waiting on {case.reference}", detail={"thread_id": thread_id})

    def resume(self, case, new_generation: int, *, run, request: ResumeRequest) -> ResumeResult:
        from langgraph.types import Command

        thread_id, graph_name = self._address(run)
        if _resumed_by_worker(run):
            return ResumeResult(detail={"thread_id": thread_id, "resumed_by": RESUMED_BY_WORKER, "outcome": "released"})
        graph = self.graph(graph_name)
        config = self._config(thread_id)
        released = set(request.case_ids)
        with self.store().exclusive(thread_id):
            snapshot = graph.get_state(config)
            parked = [i for i in snapshot.interrupts if _is_parked(i.value)]
            from_checkpoint = snapshot.config["configurable"].get("checkpoint_id")
            targets: dict[str, Any] = {}
            if not parked:
                if snapshot.created_at is not None and not snapshot.next:
                    # Finished: it went on by itself (its resume came before it reached the wait).
                    return ResumeResult(already=True, detail={"thread_id": thread_id, "outcome": "completed"})
                if not (request.redrive and snapshot.next):
                    raise RunNotWaiting(f"thread {thread_id} has not reached its wait", detail={"thread_id": thread_id})
                # A re-drive: the run was resumed and stalled (the worker running it died mid-node; we hold the
                # thread's lock, so nobody runs it now). Continue from its latest checkpoint: the nodes re-run, and
                # their protected actions replay what had committed.
                command: Any = None
            else:
                targets = {i.id: request.payload() for i in parked if set(i.value.get("cases") or ()) <= released}
                if not targets:
                    raise RunNotWaiting(
                        f"thread {thread_id} waits on other cases",
                        detail={"thread_id": thread_id, "waiting_on": [i.value.get("cases") for i in parked]},
                    )
                command = Command(resume=targets)
            if request.executing is not None:
                request.executing()
            try:
                graph.invoke(command, config)
            except Exception as exc:
                if type(exc).__name__ in ("SoftTimeLimitExceeded", "TimeLimitExceeded"):
                    raise
                raise RuntimeDeliveryError(
                    f"the resumed graph failed: {type(exc).__name__}: {exc}"[:500],
                    detail={"thread_id": thread_id, "from_checkpoint": from_checkpoint},
                ) from exc
            after = graph.get_state(config)
        if not after.next:
            outcome = "completed"
        elif any(_is_parked(i.value) for i in after.interrupts):
            outcome = "parked"
        else:
            outcome = "interrupted"
        return ResumeResult(
            detail={
                "thread_id": thread_id,
                "from_checkpoint": from_checkpoint,
                "interrupts": sorted(targets),
                "outcome": outcome,
                "checkpoint_id": after.config["configurable"].get("checkpoint_id"),
            }
        )

    def hosts(self, run) -> bool:
        return not _resumed_by_worker(run)

    def can_abandon(self, run) -> bool:
        return not _resumed_by_worker(run)

    def abandon(self, *, run, request: AbandonRequest) -> ResumeResult:
        """Answer every parked interrupt of the thread with the ``abandoned`` value (the run is blocked by no other
        case, so each of them waits on the abandoned one or on cases already settled). The SDK raises
        ``RunAbandoned`` from it: the graph ending with that error, or handling it, both end the run."""
        from langgraph.types import Command

        thread_id, graph_name = self._address(run)
        if _resumed_by_worker(run):
            raise AbandonNotSupported(
                f"thread {thread_id} is resumed by its worker; Revive cannot reach it", detail={"thread_id": thread_id}
            )
        graph = self.graph(graph_name)
        config = self._config(thread_id)
        with self.store().exclusive(thread_id):
            snapshot = graph.get_state(config)
            parked = [i for i in snapshot.interrupts if _is_parked(i.value)]
            if not parked:
                if snapshot.created_at is not None and not snapshot.next:
                    return ResumeResult(already=True, detail={"thread_id": thread_id, "outcome": "completed"})
                raise RunNotWaiting(f"thread {thread_id} has not reached its wait", detail={"thread_id": thread_id})
            targets = {i.id: request.payload() for i in parked}
            raised = ""
            try:
                graph.invoke(Command(resume=targets), config)
            except Exception as exc:
                if type(exc).__name__ != "RunAbandoned":
                    if type(exc).__name__ in ("SoftTimeLimitExceeded", "TimeLimitExceeded"):
                        raise
                    raise RuntimeDeliveryError(
                        f"the abandoned graph failed: {type(exc).__name__}: {exc}"[:500],
                        detail={"thread_id": thread_id},
                    ) from exc
                raised = "RunAbandoned"
            after = graph.get_state(config)
        outcome = "ended" if raised or not after.next else "running"
        return ResumeResult(
            detail={"thread_id": thread_id, "interrupts": sorted(targets), "outcome": outcome, "raised": raised}
        )

    def status(self, run) -> RunStatus:
        thread_id, graph_name = self._address(run)
        if _resumed_by_worker(run):
            return RunStatus("unknown", {"thread_id": thread_id, "resumed_by": RESUMED_BY_WORKER})
        snapshot = self.graph(graph_name).get_state(self._config(thread_id))
        detail = {
            "thread_id": thread_id,
            "checkpoint_id": snapshot.config["configurable"].get("checkpoint_id"),
            "next": list(snapshot.next),
        }
        if snapshot.created_at is None:
            return RunStatus("unknown", detail)
        errors = [t.error for t in snapshot.tasks if t.error]
        if errors:  # a node that raised after its resume (``RunAbandoned``, a bug): its old interrupt waits no more
            return RunStatus("failed", {**detail, "errors": [repr(e)[:200] for e in errors]})
        parked = [i.value for i in snapshot.interrupts if _is_parked(i.value)]
        if parked:
            return RunStatus("waiting", {**detail, "parked": parked})
        if not snapshot.next:
            return RunStatus("completed", detail)
        return RunStatus("running", {**detail, "errors": []})

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
            self._store = None
            self._graphs.clear()
