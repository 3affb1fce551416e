"""Restate helpers: a rejected credential suspends the workflow on a durable promise; Revive resolves it.

In a ``restate.Workflow`` main handler, ``protect_action`` runs each attempt of
``AsyncRevive.protect_action`` as one journaled ``ctx.run`` step. When Revive
parks the run, the step records that instead of failing, and the workflow awaits
the durable promise named after the connection and the *rejected* generation
(``promise_name``). Revive resolves it through the workflow's shared handler
``revive_reauthorized`` over the ingress (``install_resume_handler`` adds it).
A promise resolved before the workflow reaches it keeps its value, so an early
resume is not lost; the handler resolves each promise once, so a duplicate
delivery changes nothing. Then the next attempt leases the new generation.
If an operator abandons (or rejects) the case instead, Revive resolves the promise
with an ``abandoned`` value and the wait raises ``RunAbandoned`` (a ``TerminalError``
and a ``revive_sdk.RunAbandoned``): catch it to end the workflow your own way::

    briefing = restate.Workflow("Briefing")
    install_resume_handler(briefing)

    @briefing.main()
    async def run(ctx: restate.WorkflowContext, request: dict) -> dict:
        await register_run(ctx, revive, workflow=briefing, workflow_name="Nightly brief")
        return await protect_action(ctx, revive, run_id=ctx.key(), checkpoint_id="05", ...)

Only this module imports restate.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import restate
from restate.exceptions import TerminalError

from . import errors
from .errors import ActionFailed, ActionInProgress, RunParked
from .flows import ActionContext
from .names import ABANDON_KIND, RESUME_KIND  # noqa: F401  (re-exported)
from .names import RESTATE_RESUME_HANDLER as RESUME_HANDLER


class RunAbandoned(errors.RunAbandoned, TerminalError):
    """Raised by the wait of a workflow whose recovery case was abandoned: terminal, so Restate does not retry it."""

    def __init__(self, case_id: str | None, *, reason: str = "", run_id: str | None = None) -> None:
        TerminalError.__init__(
            self, f"recovery case {case_id} was abandoned" + (f": {reason}" if reason else ""), status_code=409
        )
        self.case_id, self.reason, self.run_id = case_id, reason, run_id


MAX_PARKS = 32
MAX_IN_PROGRESS_WAITS = 10  # ACTION_IN_PROGRESS's retry_after is at most one short lock (REVIVE_ACTION_LOCK_TIMEOUT)
IN_PROGRESS_WAIT_MAX = 120.0


def promise_name(connection_id: str, generation: int) -> str:
    """The durable promise a run parked on ``connection_id`` at the rejected ``generation`` waits for."""
    return f"revive:{connection_id}:g{int(generation)}"


def install_resume_handler(workflow: restate.Workflow, *, name: str = RESUME_HANDLER) -> Callable[..., Any]:
    """Add the shared handler Revive calls to resume runs of ``workflow``."""

    async def revive_reauthorized(ctx: restate.WorkflowSharedContext, payload: dict) -> dict:
        if not isinstance(payload, dict) or payload.get("revive") not in (RESUME_KIND, ABANDON_KIND):
            raise TerminalError("not a Revive resume", status_code=400)
        resolved, already = [], []
        for connection_id, generation in sorted((payload.get("rejected") or {}).items()):
            key = promise_name(connection_id, generation)
            promise = ctx.promise(key, type_hint=dict)
            if await promise.peek() is not None:
                already.append(key)
                continue
            try:
                await promise.resolve(payload)
            except TerminalError:
                already.append(key)  # a concurrent delivery resolved it first
            else:
                resolved.append(key)
        return {"resolved": resolved, "already": already}

    revive_reauthorized.__name__ = name
    return workflow.handler(name=name)(revive_reauthorized)


async def register_run(
    ctx: restate.WorkflowContext,
    revive: Any,
    *,
    workflow: restate.Workflow | str,
    workflow_name: str,
    run_id: str | None = None,
    handler: str = "run",
) -> dict:
    """Register the workflow as a Revive run (its id defaults to the workflow key), as a journaled step."""
    service = workflow if isinstance(workflow, str) else workflow.name
    key = ctx.key()

    async def call() -> dict:
        return await revive.register_run(
            run_id=run_id or key,
            runtime="restate",
            workflow_name=workflow_name,
            runtime_ref={"service": service, "key": key, "handler": handler, "resume_handler": RESUME_HANDLER},
        )

    return await ctx.run_typed("revive:register", call)


async def wait_for_reauthorization(ctx: restate.WorkflowContext, parked: dict) -> dict:
    """Suspend on the durable promise of the rejected generation until Revive resolves it; return its value.
    Raise ``RunAbandoned`` if Revive resolved it to say the case was abandoned."""
    value = await ctx.promise(promise_name(parked["connection_id"], parked["generation"]), type_hint=dict).value()
    if isinstance(value, dict) and value.get("revive") == ABANDON_KIND:
        raise RunAbandoned(
            (value.get("cases") or [parked.get("case_id")])[0],
            reason=str(value.get("reason") or ""),
            run_id=value.get("run_id"),
        )
    return value


async def protect_action(
    ctx: restate.WorkflowContext,
    revive: Any,
    *,
    action_key: str,
    execute: Callable[[ActionContext], Any],
    **kwargs: Any,
) -> Any:
    """``AsyncRevive.protect_action`` as journaled steps, suspending on the durable promise while parked.

    The result must be JSON-serialisable (it is journaled). A failure Revive classifies as not recoverable by a
    reconnect becomes a ``TerminalError``; others propagate and Restate retries the step.
    """
    parks = 0
    for attempt in range(MAX_PARKS + MAX_IN_PROGRESS_WAITS):

        async def step() -> dict:
            try:
                return {"result": await revive.protect_action(action_key=action_key, execute=execute, **kwargs)}
            except RunParked as parked:
                return {
                    "parked": {
                        "case_id": parked.case_id,
                        "connection_id": parked.connection_id,
                        "generation": parked.generation,
                    }
                }
            except ActionInProgress as busy:
                return {"in_progress": busy.retry_after}
            except ActionFailed as exc:
                raise TerminalError(str(exc)) from None

        outcome = await ctx.run_typed(f"revive:{action_key}:{attempt}", step)
        if "in_progress" in outcome:
            # A dead attempt's short lock: a durable sleep until Revive said to ask again, not a burnt retry.
            await ctx.sleep(timedelta(seconds=min(float(outcome["in_progress"]), IN_PROGRESS_WAIT_MAX)))
            continue
        if "parked" not in outcome:
            return outcome["result"]
        parks += 1
        if parks > MAX_PARKS:
            break
        await wait_for_reauthorization(ctx, outcome["parked"])
    raise TerminalError(f"action {action_key} parked {MAX_PARKS} times or stayed in progress")
