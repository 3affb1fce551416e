"""LangGraph Agent Server: resume the run's thread over the server's HTTP API; Revive never imports the graph.

Teams that deploy their graphs on LangGraph's Agent Server (``langgraph-api``; ``langgraph dev`` locally, a LangSmith
deployment in production) register runs as ``runtime="langgraph-server"`` with ``runtime_ref`` ``{"thread_id": ...,
"assistant_id": ...}`` (``revive_sdk.langgraph.register_server_run``). The graph parks exactly as it does in-process:
the SDK's ``protect_action`` calls ``interrupt`` with a ``{"revive": "parked", ...}`` value, and the server saves the
thread with that interrupt pending. Revive then works only through the server's API at
``REVIVE_LANGGRAPH_SERVER_URL`` (``x-api-key: REVIVE_LANGGRAPH_SERVER_API_KEY`` when set):

* ``park`` / ``status``: ``GET /threads/{thread_id}`` (the thread's status: idle, busy, interrupted, error) and
  ``GET /threads/{thread_id}/state`` (its tasks, their pending interrupts and errors, ``next``).
* ``resume``: ``POST /threads/{thread_id}/runs`` -- a background run on the *same* thread, by the run's assistant,
  with ``command: {"resume": {interrupt_id: value}}`` answering exactly the parked interrupts (never an update of the
  state), ``multitask_strategy: "reject"`` (the server refuses it while another run of the thread is pending or
  running) and ``if_not_exists: "reject"``. The server executes the run; Revive does not wait for it (``hosts`` is
  false): the ledger shows when the run goes past its parked action, and the watchdog re-drives one that stalls.
* ``abandon``: the same, with the ``abandoned`` value, on every parked interrupt.

Idempotent: each run Revive creates carries ``metadata.revive_delivery`` (the resume's key without its attempt
number); before sending, the adapter lists the thread's runs and does not send again a resume the server already
accepted (pending, running or done), so a retry after a lost answer never resumes twice. It sends only while the
thread is not busy and the interrupts it answers are still pending.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from django.conf import settings

from revive_sdk.names import PARKED_KIND

from .base import (
    AbandonRequest,
    ResumeRequest,
    ResumeResult,
    RunGone,
    RunNotWaiting,
    RunStatus,
    RuntimeAdapter,
    RuntimeDeliveryError,
    RuntimeMisconfigured,
    RuntimeUnavailable,
)

DELIVERY_KEY = "revive_delivery"
"""``metadata`` key of the runs Revive creates: which resume (or abandon notice) the run delivers."""
TAKEN = ("pending", "running", "success")
"""Statuses of a server run that took its delivery: it is not sent again (``error``: the node it resumed failed;
``interrupted`` and ``timeout``: cancelled by the server)."""
RUN_PAGE = 100


def _is_parked(value: Any) -> bool:
    return isinstance(value, dict) and value.get("revive") == PARKED_KIND


def _interrupts(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The thread's pending interrupts as ``{"id", "value", "node"}``: from its tasks (with the node's name), else
    from the state's top-level list (servers that have it)."""
    found: dict[str, dict[str, Any]] = {}
    for task in state.get("tasks") or ():
        for intr in task.get("interrupts") or ():
            iid = intr.get("id") or intr.get("interrupt_id")
            if iid:
                found.setdefault(iid, {"id": iid, "value": intr.get("value"), "node": task.get("name")})
    for intr in state.get("interrupts") or ():
        iid = intr.get("id") or intr.get("interrupt_id")
        if iid:
            found.setdefault(iid, {"id": iid, "value": intr.get("value"), "node": None})
    return list(found.values())


def _failed_tasks(state: dict[str, Any]) -> list[str]:
    """The errors of the thread's tasks: a node raised in the last run (the run ended ``error``)."""
    return [str(t.get("error"))[:200] for t in state.get("tasks") or () if t.get("error")]


def _checkpoint_id(state: dict[str, Any]) -> str | None:
    return (state.get("checkpoint") or {}).get("checkpoint_id") or (
        (state.get("config") or {}).get("configurable") or {}
    ).get("checkpoint_id")


class LangGraphServerAdapter(RuntimeAdapter):
    runtime = "langgraph-server"

    # -- plumbing ---------------------------------------------------------------

    @staticmethod
    def _address(run) -> tuple[str, str]:
        ref = run.runtime_ref or {}
        thread_id, assistant_id = ref.get("thread_id"), ref.get("assistant_id")
        if not thread_id or not assistant_id:
            raise RuntimeMisconfigured(
                f"run {run.pk} has no Agent Server thread_id and assistant_id in its runtime reference",
                detail={"runtime_ref": ref},
            )
        return str(thread_id), str(assistant_id)

    @staticmethod
    def _base() -> str:
        url = str(settings.REVIVE_LANGGRAPH_SERVER_URL or "").rstrip("/")
        if not url:
            raise RuntimeMisconfigured("REVIVE_LANGGRAPH_SERVER_URL is not set: Revive cannot reach the Agent Server")
        return url

    def _call(
        self,
        method: str,
        path: str,
        *,
        thread_id: str,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        missing: type[RuntimeDeliveryError] = RunGone,
    ) -> Any:
        """One API call; a failure becomes the delivery error that says whether retrying helps. ``missing``: what a
        404 means for this call (an unknown thread: the run is gone)."""
        headers = (
            {"x-api-key": settings.REVIVE_LANGGRAPH_SERVER_API_KEY} if settings.REVIVE_LANGGRAPH_SERVER_API_KEY else {}
        )
        where = {"thread_id": thread_id}
        try:
            response = httpx.request(
                method,
                f"{self._base()}{path}",
                json=json,
                params=params,
                headers=headers,
                timeout=settings.REVIVE_LANGGRAPH_SERVER_TIMEOUT,
            )
        except httpx.HTTPError as exc:
            raise RuntimeUnavailable(
                f"the LangGraph Agent Server is unreachable: {type(exc).__name__}", detail=where
            ) from exc
        status = response.status_code
        if status >= 500 or status in (408, 429):
            raise RuntimeUnavailable(f"the LangGraph Agent Server answered {status}", detail=where)
        if status in (401, 403):
            raise RuntimeMisconfigured(
                f"the LangGraph Agent Server refused Revive's key ({status}): check REVIVE_LANGGRAPH_SERVER_API_KEY",
                detail=where,
            )
        if status == 404:
            raise missing(
                f"the LangGraph Agent Server has no {path.split('?')[0]} ({response.text[:200]})", detail=where
            )
        if status == 409:
            raise RunNotWaiting(
                f"thread {thread_id} has a run pending or running on the Agent Server", detail={**where, "busy": True}
            )
        if status >= 400:
            raise RuntimeMisconfigured(
                f"the LangGraph Agent Server refused {method} {path.split('?')[0]}: "
                f"HTTP {status} {response.text[:300]}",
                detail=where,
            )
        try:
            return response.json()
        except ValueError as exc:
            raise RuntimeUnavailable(
                f"the LangGraph Agent Server answered {status} without JSON", detail=where
            ) from exc

    def _thread(self, thread_id: str) -> dict[str, Any]:
        return self._call("GET", f"/threads/{quote(thread_id, safe='')}", thread_id=thread_id)

    def _state(self, thread_id: str) -> dict[str, Any]:
        return self._call("GET", f"/threads/{quote(thread_id, safe='')}/state", thread_id=thread_id)

    def _earlier(self, thread_id: str, key: str) -> dict[str, Any] | None:
        """The newest of the server's runs on the thread that carries delivery ``key``, if any."""
        runs = self._call(
            "GET", f"/threads/{quote(thread_id, safe='')}/runs", thread_id=thread_id, params={"limit": RUN_PAGE}
        )
        mine = [r for r in runs or () if (r.get("metadata") or {}).get(DELIVERY_KEY) == key]
        return max(mine, key=lambda r: str(r.get("created_at") or ""), default=None)

    def _send(self, thread_id: str, assistant_id: str, *, key: str, command: dict[str, Any] | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "assistant_id": assistant_id,
            "metadata": {DELIVERY_KEY: key},
            "multitask_strategy": "reject",
            "if_not_exists": "reject",
        }
        if command is not None:
            body["command"] = command
        # A 404 here, after the thread answered: the assistant is unknown to the server.
        return self._call(
            "POST",
            f"/threads/{quote(thread_id, safe='')}/runs",
            thread_id=thread_id,
            json=body,
            missing=RuntimeMisconfigured,
        )

    @staticmethod
    def _finished(thread: dict[str, Any], state: dict[str, Any]) -> bool:
        return thread.get("status") == "idle" and not state.get("next") and bool(_checkpoint_id(state))

    # -- the interface ----------------------------------------------------------

    def park(self, run, case) -> dict[str, Any]:
        thread_id, assistant_id = self._address(run)
        state = self._state(thread_id)
        for intr in [] if _failed_tasks(state) else _interrupts(state):
            if _is_parked(intr["value"]) and case.reference in (intr["value"].get("cases") or ()):
                return {
                    "thread_id": thread_id,
                    "assistant_id": assistant_id,
                    "checkpoint_id": _checkpoint_id(state),
                    "node": intr["node"],
                    "interrupt_id": intr["id"],
                }
        raise RunNotWaiting(f"thread {thread_id} is not waiting on {case.reference}", detail={"thread_id": thread_id})

    def resume(self, case, new_generation: int, *, run, request: ResumeRequest) -> ResumeResult:
        thread_id, assistant_id = self._address(run)
        key = request.delivery_key
        thread = self._thread(thread_id)
        earlier = self._earlier(thread_id, key)
        if earlier is not None and earlier.get("status") in TAKEN:
            # An earlier attempt reached the server (its answer was lost, or it was recorded nowhere): never twice.
            return ResumeResult(
                detail={
                    "thread_id": thread_id,
                    "assistant_id": assistant_id,
                    "outcome": "accepted",
                    "server_run_id": earlier.get("run_id"),
                    "server_run_status": earlier.get("status"),
                    "earlier_attempt": True,
                }
            )
        if earlier is not None and earlier.get("status") == "error":
            # The resumed node failed on the server (a bug, a crash): retried with backoff, then ``resume_failed``
            # for an operator; a watchdog re-drive (a new key) continues the thread from its latest checkpoint.
            raise RuntimeDeliveryError(
                f"the resumed run {earlier.get('run_id')} failed on the Agent Server",
                detail={"thread_id": thread_id, "server_run_id": earlier.get("run_id")},
            )
        if thread.get("status") == "busy":
            raise RunNotWaiting(
                f"thread {thread_id} is running on the Agent Server", detail={"thread_id": thread_id, "busy": True}
            )
        state = self._state(thread_id)
        released = set(request.case_ids)
        failed = _failed_tasks(state)
        parked = [] if failed else [i for i in _interrupts(state) if _is_parked(i["value"])]
        from_checkpoint = _checkpoint_id(state)
        targets: dict[str, Any] = {}
        if failed and not request.redrive:
            # The thread's last run failed in a node (its interrupts stay listed, but nothing waits on them): only a
            # re-drive continues it; until then the delivery is retried, then ``resume_failed`` for an operator.
            raise RuntimeDeliveryError(
                f"the last run of thread {thread_id} failed on the Agent Server: {failed[0]}",
                detail={"thread_id": thread_id, "errors": failed},
            )
        if not parked:
            if self._finished(thread, state):
                # Finished: it went on by itself (its resume came before it reached the wait).
                return ResumeResult(already=True, detail={"thread_id": thread_id, "outcome": "completed"})
            if not (request.redrive and state.get("next")):
                raise RunNotWaiting(f"thread {thread_id} has not reached its wait", detail={"thread_id": thread_id})
            # A re-drive: the resumed run stalled or failed on the server. A run without input continues the thread
            # from its latest checkpoint (with the resume values it already has); the nodes re-run and their
            # protected actions replay what had committed.
            command = None
        else:
            targets = {i["id"]: request.payload() for i in parked if set(i["value"].get("cases") or ()) <= released}
            if not targets:
                raise RunNotWaiting(
                    f"thread {thread_id} waits on other cases",
                    detail={"thread_id": thread_id, "waiting_on": [i["value"].get("cases") for i in parked]},
                )
            command = {"resume": targets}
        created = self._send(thread_id, assistant_id, key=key, command=command)
        return ResumeResult(
            detail={
                "thread_id": thread_id,
                "assistant_id": assistant_id,
                "outcome": "accepted",
                "from_checkpoint": from_checkpoint,
                "interrupts": sorted(targets),
                "server_run_id": created.get("run_id"),
                "server_run_status": created.get("status"),
            }
        )

    def can_abandon(self, run) -> bool:
        return True

    def abandon(self, *, run, request: AbandonRequest) -> ResumeResult:
        """Answer every parked interrupt of the thread with the ``abandoned`` value (the run is blocked by no other
        case). The SDK raises ``RunAbandoned`` in the node: the server's run ends with that error unless the node
        handles it."""
        thread_id, assistant_id = self._address(run)
        key = request.idempotency_key
        thread = self._thread(thread_id)
        earlier = self._earlier(thread_id, key)
        if earlier is not None and earlier.get("status") in (*TAKEN, "error"):  # error: the node raised RunAbandoned
            return ResumeResult(
                detail={
                    "thread_id": thread_id,
                    "outcome": "told",
                    "server_run_id": earlier.get("run_id"),
                    "earlier_attempt": True,
                }
            )
        if thread.get("status") == "busy":
            raise RunNotWaiting(
                f"thread {thread_id} is running on the Agent Server", detail={"thread_id": thread_id, "busy": True}
            )
        state = self._state(thread_id)
        parked = [i for i in _interrupts(state) if _is_parked(i["value"])]
        if _failed_tasks(state):  # it ended with an error already: nothing waits any more
            return ResumeResult(
                already=True, detail={"thread_id": thread_id, "outcome": "failed", "errors": _failed_tasks(state)}
            )
        if not parked:
            if self._finished(thread, state):
                return ResumeResult(already=True, detail={"thread_id": thread_id, "outcome": "completed"})
            raise RunNotWaiting(f"thread {thread_id} has not reached its wait", detail={"thread_id": thread_id})
        targets = {i["id"]: request.payload() for i in parked}
        created = self._send(thread_id, assistant_id, key=key, command={"resume": targets})
        return ResumeResult(
            detail={
                "thread_id": thread_id,
                "interrupts": sorted(targets),
                "outcome": "told",
                "server_run_id": created.get("run_id"),
            }
        )

    def status(self, run) -> RunStatus:
        thread_id, _ = self._address(run)
        try:
            thread = self._thread(thread_id)
        except RunGone:
            return RunStatus("unknown", {"thread_id": thread_id})
        state = self._state(thread_id)
        detail = {
            "thread_id": thread_id,
            "thread_status": thread.get("status"),
            "checkpoint_id": _checkpoint_id(state),
            "next": list(state.get("next") or ()),
        }
        if thread.get("status") == "busy":
            return RunStatus("running", detail)
        errors = _failed_tasks(state)
        if errors or thread.get("status") == "error":
            return RunStatus("failed", {**detail, "errors": errors})
        parked = [i["value"] for i in _interrupts(state) if _is_parked(i["value"])]
        if parked:
            return RunStatus("waiting", {**detail, "parked": parked})
        if not _checkpoint_id(state):
            return RunStatus("unknown", detail)
        if not state.get("next"):
            return RunStatus("completed", detail)
        return RunStatus("running", detail)
