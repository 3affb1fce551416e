"""Temporal: signal ``revive_reauthorized`` to the run's workflow (by workflow id and run id); ``describe()`` for status.

A run whose case was abandoned is signalled ``revive_abandoned`` instead: the SDK's wait raises ``RunAbandoned``
in the workflow, which handles it (or fails with it, non-retryable) and ends.

The workflow waits durably in ``revive_sdk.temporal.ReviveRecovery`` for a
signal whose generation is newer than the rejected one. Temporal records a
signal in the workflow's history whether or not the workflow has reached its
wait yet, and the SDK's handler keeps the highest generation per connection, so
a signal that comes early is not lost and a duplicate changes nothing.

The Temporal client is asyncio; Celery tasks are not. Each process keeps one
event loop on a daemon thread and one client on it (a forked child makes its own).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings

from revive_sdk.names import TEMPORAL_ABANDON_SIGNAL as ABANDON_SIGNAL
from revive_sdk.names import TEMPORAL_QUERY as QUERY
from revive_sdk.names import TEMPORAL_SIGNAL as SIGNAL

from .base import (
    AbandonRequest,
    ResumeRequest,
    ResumeResult,
    RunGone,
    RunStatus,
    RuntimeAdapter,
    RuntimeDeliveryError,
    RuntimeMisconfigured,
    RuntimeUnavailable,
)

if TYPE_CHECKING:
    from temporalio.client import Client


class _Loop:
    """An event loop on a daemon thread, to run coroutines from synchronous code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="revive-temporal-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        future: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class TemporalAdapter(RuntimeAdapter):
    runtime = "temporal"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: _Loop | None = None
        self._client: Client | None = None
        self._client_key: tuple[str, str] | None = None
        self._pid = os.getpid()

    # -- plumbing ---------------------------------------------------------------

    def _run(self, coro_fn, *, timeout: float | None = None) -> Any:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                self._loop, self._client, self._pid = _Loop(), None, os.getpid()
            loop = self._loop
        budget = timeout or settings.TEMPORAL_RPC_TIMEOUT * 3
        try:
            return loop.run(self._with_client(coro_fn), timeout=budget)
        except TimeoutError as exc:
            raise RuntimeUnavailable(f"Temporal did not answer within {budget:g}s") from exc

    async def _with_client(self, coro_fn) -> Any:
        from temporalio.client import Client

        key = (settings.TEMPORAL_ADDRESS, settings.TEMPORAL_NAMESPACE)
        if self._client is None or self._client_key != key:
            try:
                self._client = await Client.connect(key[0], namespace=key[1])
            except Exception as exc:  # the SDK raises RuntimeError for a failed connect
                raise RuntimeUnavailable(f"cannot connect to Temporal at {key[0]}: {exc}"[:300]) from exc
            self._client_key = key
        return await coro_fn(self._client)

    @staticmethod
    def _address(run) -> tuple[str, str | None]:
        ref = run.runtime_ref or {}
        workflow_id = ref.get("workflow_id")
        if not workflow_id:
            raise RuntimeMisconfigured(
                f"run {run.pk} has no Temporal workflow_id in its runtime reference", detail={"runtime_ref": ref}
            )
        return str(workflow_id), (str(ref["run_id"]) if ref.get("run_id") else None)

    @staticmethod
    def _rpc_error(exc: Exception, workflow_id: str) -> RuntimeDeliveryError:
        from temporalio.service import RPCError, RPCStatusCode

        if isinstance(exc, RPCError):
            detail = {"workflow_id": workflow_id, "status": exc.status.name}
            if exc.status == RPCStatusCode.NOT_FOUND:
                return RunGone(f"workflow {workflow_id} is not running: {exc.message}"[:300], detail=detail)
            if exc.status in (
                RPCStatusCode.INVALID_ARGUMENT,
                RPCStatusCode.PERMISSION_DENIED,
                RPCStatusCode.UNAUTHENTICATED,
                RPCStatusCode.FAILED_PRECONDITION,
            ):
                return RuntimeMisconfigured(f"Temporal refused: {exc.message}"[:300], detail=detail)
            return RuntimeUnavailable(f"Temporal answered {exc.status.name}: {exc.message}"[:300], detail=detail)
        if isinstance(exc, RuntimeDeliveryError):
            return exc
        return RuntimeUnavailable(f"Temporal call failed: {type(exc).__name__}: {exc}"[:300])

    # -- the interface ----------------------------------------------------------

    def _describe(self, run) -> Any:
        workflow_id, run_id = self._address(run)
        timeout = timedelta(seconds=settings.TEMPORAL_RPC_TIMEOUT)

        async def call(client):
            return await client.get_workflow_handle(workflow_id, run_id=run_id).describe(rpc_timeout=timeout)

        try:
            return self._run(call)
        except Exception as exc:
            raise self._rpc_error(exc, workflow_id) from exc

    def park(self, run, case) -> dict[str, Any]:
        desc = self._describe(run)
        if desc.status is None or desc.status.name != "RUNNING":
            raise RunGone(
                f"workflow {desc.id} is {desc.status.name if desc.status else 'unknown'}",
                detail={"workflow_id": desc.id},
            )
        return {"workflow_id": desc.id, "run_id": desc.run_id, "history_length": desc.history_length}

    def _signal(self, run, name: str, payload: dict[str, Any]) -> ResumeResult:
        workflow_id, run_id = self._address(run)
        timeout = timedelta(seconds=settings.TEMPORAL_RPC_TIMEOUT)

        async def call(client):
            await client.get_workflow_handle(workflow_id, run_id=run_id).signal(name, payload, rpc_timeout=timeout)

        try:
            self._run(call)
        except Exception as exc:
            raise self._rpc_error(exc, workflow_id) from exc
        return ResumeResult(detail={"workflow_id": workflow_id, "run_id": run_id, "signal": name})

    def resume(self, case, new_generation: int, *, run, request: ResumeRequest) -> ResumeResult:
        return self._signal(run, SIGNAL, request.payload())

    def can_abandon(self, run) -> bool:
        return True

    def abandon(self, *, run, request: AbandonRequest) -> ResumeResult:
        """Signal ``revive_abandoned``; a workflow that is no longer running (``RunGone``) has nothing to be told."""
        try:
            return self._signal(run, ABANDON_SIGNAL, request.payload())
        except RunGone as gone:
            return ResumeResult(already=True, detail={**gone.detail, "outcome": "not running"})

    def status(self, run) -> RunStatus:
        desc = self._describe(run)
        name = desc.status.name.lower() if desc.status else "unknown"
        detail = {"workflow_id": desc.id, "run_id": desc.run_id, "status": name, "history_length": desc.history_length}
        if name != "running":
            return RunStatus({"completed": "completed", "failed": "failed"}.get(name, name), detail)
        workflow_id, run_id = self._address(run)

        async def query(client):
            return await client.get_workflow_handle(workflow_id, run_id=run_id).query(
                QUERY, rpc_timeout=timedelta(seconds=2)
            )

        try:
            parked = self._run(query, timeout=5)
        except Exception:  # queries need a live worker; the status must not
            return RunStatus("running", detail)
        return RunStatus("waiting" if parked else "running", {**detail, "parked": parked})

    def close(self) -> None:
        with self._lock:
            if self._loop is not None and self._pid == os.getpid():
                self._loop.close()
            self._loop, self._client = None, None
