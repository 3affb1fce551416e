from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from . import flows, tracecontext
from .errors import ActionInProgress, LeaseFenced, ProviderError, ReviveError, ReviveUnavailable, RunAbandoned
from .flows import ActionContext, Call, Flow, Http, RefreshMemo, Sleep
from .wire import WireError, wire_for

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


def _answer(status: int, content: bytes) -> Any:
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    if 200 <= status < 300:
        return body
    if isinstance(body, dict) and "code" in body:
        data = body.get("data") or {}
        if body["code"] == "LEASE_FENCED":
            raise LeaseFenced(data.get("generation", 0), data.get("current_generation"))
        if body["code"] == "ACTION_IN_PROGRESS":
            raise ActionInProgress(body.get("message", ""), status=status, data=data)
        if body["code"] == "RUN_ABANDONED":
            raise RunAbandoned(data.get("case_id"), run_id=data.get("run_id"))
        raise ReviveError(body["code"], body.get("message", ""), status=status, data=data)
    raise ReviveError("HTTP_ERROR", f"HTTP {status}", status=status)


def _advance(flow: Flow, outcome: tuple[Any, BaseException | None]) -> tuple[bool, Any]:
    """Hand the last step's result (or exception) to the flow; ``(True, value)`` once it returns, else ``(False, next step)``."""
    value, error = outcome
    try:
        return False, (flow.throw(error) if error is not None else flow.send(value))
    except StopIteration as stop:
        return True, stop.value


def _unavailable(exc: Exception) -> ReviveUnavailable:
    cause = exc.__cause__ if isinstance(exc, WireError) and exc.__cause__ is not None else exc
    return ReviveUnavailable("REVIVE_UNAVAILABLE", f"cannot reach Revive: {type(cause).__name__}")


def new_holder() -> str:
    """A refresh-claim holder name for this worker: host, process and a random part (no secret)."""
    host = "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in socket.gethostname())[:60] or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


class SingleFlightCredential:
    """A ``credential`` callback for ``protect_action`` that refreshes once per (connection, generation) across
    every worker, through Revive's refresh claim (see ``revive_sdk.flows.refresh_single_flight``).

    - ``load()`` reads the current credential from where it lives (Revive's credential custody for a direct OAuth
      connection, your vault, a broker);
    - ``refresh()`` refreshes it at the provider and stores the new grant there (with rotating refresh tokens, the
      new refresh token too), returning the new credential; raise ``ProviderError`` if the provider refuses;
    - ``is_fresh(credential)`` says whether a loaded credential can be used (e.g. not past its expiry).

    Call ``rejected()`` when the provider refused a credential this helper returned (``RefreshRequired``): the
    next call refreshes (or reloads what another worker refreshed). Revive never sees the credential. Helpers of
    one process that share a ``memo`` share what they know of the refresh rounds (e.g. one helper per thread).
    """

    def __init__(
        self,
        revive: Revive | AsyncRevive,
        *,
        connection_id: str,
        load: Callable[[], Any],
        refresh: Callable[[], Any],
        is_fresh: Callable[[Any], bool] = lambda credential: True,
        holder: str | None = None,
        memo: RefreshMemo | None = None,
    ) -> None:
        self.revive = revive
        self.connection_id = connection_id
        self.holder = holder or new_holder()
        self.memo = memo if memo is not None else RefreshMemo()
        self._load, self._refresh, self._is_fresh = load, refresh, is_fresh

    def _flow(self) -> Flow:
        return flows.credential(
            connection_id=self.connection_id,
            holder=self.holder,
            load=self._load,
            refresh=self._refresh,
            is_fresh=self._is_fresh,
            memo=self.memo,
        )

    def rejected(self) -> None:
        self.memo.rejected = True

    @property
    def round(self) -> int:
        """The refresh round of the credential last returned (0 before any refresh)."""
        return self.memo.round

    def __call__(self) -> Any:
        return self.revive._run(self._flow())  # a coroutine with AsyncRevive: protect_action awaits it


class _Heartbeats:
    """One thread per client extends the lock of every action executing in it, each every ``every`` seconds.

    An action whose ``execute`` returns before its first beat is due -- nearly all of them -- costs no thread, and
    actions executing at once share this one. The thread starts with the first action and ends after a minute idle
    or when the client closes. A beat that fails is skipped: the lock then runs out and the action is reconciled,
    never executed twice.
    """

    IDLE_SECONDS = 60.0

    def __init__(self, send: Callable[[Http], Any]) -> None:
        self._send = send
        self._due: dict[int, tuple[float, float, Http]] = {}  # token -> (next beat, every, request)
        self._tokens = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, request: Http, every: float) -> int:
        with self._wake:
            token = next(self._tokens)
            self._due[token] = (time.monotonic() + every, every, request)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, daemon=True, name="revive-heartbeat")
                self._thread.start()
            self._wake.notify()
            return token

    def remove(self, token: int) -> None:
        with self._wake:
            self._due.pop(token, None)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _next(self) -> Http | None:
        """Wait for the next beat due; None when the thread should end (closed, or idle)."""
        with self._wake:
            idle_until = time.monotonic() + self.IDLE_SECONDS
            while not self._closed:
                now = time.monotonic()
                if not self._due:
                    if now >= idle_until:
                        break
                    self._wake.wait(idle_until - now)
                    continue
                token, (at, every, request) = min(self._due.items(), key=lambda item: item[1][0])
                if at > now:
                    self._wake.wait(at - now)
                    continue
                self._due[token] = (now + every, every, request)
                return request
            self._thread = None
            return None

    def _run(self) -> None:
        while (request := self._next()) is not None:
            try:
                self._send(request)
            except Exception:
                continue


def _headers(api_key: str) -> dict[str, str]:
    return {"X-Api-Key": api_key, "User-Agent": "revive-sdk-python/0.1"}


class Revive:
    """Synchronous client of Revive's worker API.

    >>> revive = Revive("http://127.0.0.1:8000", api_key)
    >>> revive.protect_action(run_id=..., checkpoint_id=..., connection_id=..., action_key=...,
    ...                       credential=lambda: vault.lease(...), execute=send, reconcile=find)
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._wire = wire_for(url.rstrip("/") + "/api/v1", _headers(api_key), timeout, transport)
        self._heartbeats = _Heartbeats(lambda beat: _answer(*self._wire.send(beat.method, beat.path, beat.json)))

    def close(self) -> None:
        self._heartbeats.close()
        self._wire.close()

    def __enter__(self) -> Revive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _perform(self, step: Http | Call | Sleep, trace_id: str) -> Any:
        if isinstance(step, Call):
            if step.heartbeat is None:
                return step.fn(*step.args)
            beating = self._heartbeats.add(step.heartbeat, step.every)
            try:
                return step.fn(*step.args)
            finally:
                self._heartbeats.remove(beating)
        if isinstance(step, Sleep):
            return time.sleep(step.seconds)
        try:
            status, content = self._wire.send(step.method, step.path, step.json, tracecontext.headers_for(trace_id))
        except WireError as exc:
            raise _unavailable(exc) from exc
        return _answer(status, content)

    def _run(self, flow: Flow) -> Any:
        outcome: tuple[Any, BaseException | None] = (None, None)
        with tracecontext.operation() as trace_id:  # one trace per operation: begin and commit of an action share it
            while True:
                done, step = _advance(flow, outcome)
                if done:
                    return step
                try:
                    outcome = (self._perform(step, trace_id), None)
                except BaseException as exc:  # handed to the flow, which decides
                    outcome = (None, exc)

    def lease(self, connection_id: str) -> dict[str, Any]:
        """The connection's current generation (``usable`` is false while a reconnect is pending)."""
        return self._run(flows.lease(connection_id))

    def single_flight_credential(
        self,
        connection_id: str,
        *,
        load: Callable[[], Any],
        refresh: Callable[[], Any],
        is_fresh: Callable[[Any], bool] = lambda credential: True,
        holder: str | None = None,
    ) -> SingleFlightCredential:
        """A credential callback that refreshes once across workers; see ``SingleFlightCredential``."""
        return SingleFlightCredential(
            self, connection_id=connection_id, load=load, refresh=refresh, is_fresh=is_fresh, holder=holder
        )

    def register_run(
        self, *, run_id: str, runtime: str, workflow_name: str, runtime_ref: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return self._run(
            flows.register_run(run_id=run_id, runtime=runtime, workflow_name=workflow_name, runtime_ref=runtime_ref)
        )

    def record_checkpoint(
        self, *, run_id: str, checkpoint_id: str, label: str = "", runtime_ref: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return self._run(
            flows.record_checkpoint(run_id=run_id, checkpoint_id=checkpoint_id, label=label, runtime_ref=runtime_ref)
        )

    def recovery_status(self, run_id: str) -> dict[str, Any]:
        return self._run(flows.recovery_status(run_id))

    def report_credential_failure(
        self,
        *,
        run_id: str,
        connection_id: str,
        generation: int,
        error: ProviderError,
        checkpoint_id: str | None = None,
        action_key: str | None = None,
        raise_signal: bool = True,
    ) -> dict[str, Any]:
        """Report a credential failure seen outside a protected action; by default raise the signal it implies."""
        answer = self._run(
            flows.report_credential_failure(
                run_id=run_id,
                connection_id=connection_id,
                generation=generation,
                error=error,
                checkpoint_id=checkpoint_id,
                action_key=action_key,
            )
        )
        if raise_signal:
            flows.raise_for_failure(answer, connection_id=connection_id, generation=generation)
        return answer

    def protect_action(
        self,
        *,
        run_id: str,
        checkpoint_id: str,
        connection_id: str,
        action_key: str,
        execute: Callable[[ActionContext], Any],
        credential: Callable[[], Any] | None = None,
        reconcile: Callable[[ActionContext], Any] | None = None,
        params: dict[str, Any] | None = None,
        generation: int | None = None,
    ) -> Any:
        """Execute a mutating action at most once for (run, action key).

        - ``credential()`` is called only when the action may execute; raise ``ProviderError`` from it (or from
          ``execute``) with the provider's raw answer when the provider refuses.
        - ``execute(ctx)`` gets ``ctx.credential`` and ``ctx.idempotency_key`` (pass it to the provider).
        - ``reconcile(ctx)`` is called when an earlier attempt's outcome is unknown: return what it found
          (or ``None`` if the effect is absent, or a ``Reconciliation``).

        Returns the action's result (replayed when it was already committed). Raises ``RunParked`` when the run
        must wait for a reconnect, ``LeaseFenced`` when ``generation`` is stale, ``RetryLater`` / ``RefreshRequired``
        for transient and refreshable failures, ``ActionAmbiguous`` when the outcome is unknown and there is no
        ``reconcile``.
        """
        return self._run(
            flows.protect_action(
                run_id=run_id,
                checkpoint_id=checkpoint_id,
                connection_id=connection_id,
                action_key=action_key,
                execute=execute,
                credential=credential,
                reconcile=reconcile,
                params=params,
                generation=generation,
            )
        )


class AsyncRevive:
    """Asynchronous client with the same methods as ``Revive``; callbacks may be sync or async."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/") + "/api/v1", headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRevive:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _perform(self, step: Http | Call | Sleep, trace_id: str) -> Any:
        if isinstance(step, Call):
            beat = asyncio.create_task(self._heartbeat(step.heartbeat, step.every)) if step.heartbeat else None
            try:
                result = step.fn(*step.args)
                return await result if inspect.isawaitable(result) else result
            finally:
                if beat is not None:
                    beat.cancel()
        if isinstance(step, Sleep):
            return await asyncio.sleep(step.seconds)
        try:
            response = await self._http.request(
                step.method, step.path, json=step.json, headers=tracecontext.headers_for(trace_id)
            )
        except httpx.TransportError as exc:
            raise _unavailable(exc) from exc
        return _answer(response.status_code, response.content)

    async def _heartbeat(self, request: Http, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                response = await self._http.request(request.method, request.path, json=request.json)
                _answer(response.status_code, response.content)
            except Exception:
                continue

    async def _run(self, flow: Flow) -> Any:
        outcome: tuple[Any, BaseException | None] = (None, None)
        with tracecontext.operation() as trace_id:
            while True:
                done, step = _advance(flow, outcome)
                if done:
                    return step
                try:
                    outcome = (await self._perform(step, trace_id), None)
                except BaseException as exc:  # handed to the flow, which decides
                    outcome = (None, exc)

    async def lease(self, connection_id: str) -> dict[str, Any]:
        return await self._run(flows.lease(connection_id))

    def single_flight_credential(
        self,
        connection_id: str,
        *,
        load: Callable[[], Any],
        refresh: Callable[[], Any],
        is_fresh: Callable[[Any], bool] = lambda credential: True,
        holder: str | None = None,
    ) -> SingleFlightCredential:
        """See ``Revive.single_flight_credential``; ``load`` and ``refresh`` may be coroutines."""
        return SingleFlightCredential(
            self, connection_id=connection_id, load=load, refresh=refresh, is_fresh=is_fresh, holder=holder
        )

    async def register_run(
        self, *, run_id: str, runtime: str, workflow_name: str, runtime_ref: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return await self._run(
            flows.register_run(run_id=run_id, runtime=runtime, workflow_name=workflow_name, runtime_ref=runtime_ref)
        )

    async def record_checkpoint(
        self, *, run_id: str, checkpoint_id: str, label: str = "", runtime_ref: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return await self._run(
            flows.record_checkpoint(run_id=run_id, checkpoint_id=checkpoint_id, label=label, runtime_ref=runtime_ref)
        )

    async def recovery_status(self, run_id: str) -> dict[str, Any]:
        return await self._run(flows.recovery_status(run_id))

    async def report_credential_failure(
        self,
        *,
        run_id: str,
        connection_id: str,
        generation: int,
        error: ProviderError,
        checkpoint_id: str | None = None,
        action_key: str | None = None,
        raise_signal: bool = True,
    ) -> dict[str, Any]:
        answer = await self._run(
            flows.report_credential_failure(
                run_id=run_id,
                connection_id=connection_id,
                generation=generation,
                error=error,
                checkpoint_id=checkpoint_id,
                action_key=action_key,
            )
        )
        if raise_signal:
            flows.raise_for_failure(answer, connection_id=connection_id, generation=generation)
        return answer

    async def protect_action(
        self,
        *,
        run_id: str,
        checkpoint_id: str,
        connection_id: str,
        action_key: str,
        execute: Callable[[ActionContext], Any],
        credential: Callable[[], Any] | None = None,
        reconcile: Callable[[ActionContext], Any] | None = None,
        params: dict[str, Any] | None = None,
        generation: int | None = None,
    ) -> Any:
        """See ``Revive.protect_action``."""
        return await self._run(
            flows.protect_action(
                run_id=run_id,
                checkpoint_id=checkpoint_id,
                connection_id=connection_id,
                action_key=action_key,
                execute=execute,
                credential=credential,
                reconcile=reconcile,
                params=params,
                generation=generation,
            )
        )
