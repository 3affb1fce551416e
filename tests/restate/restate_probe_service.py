"""A real Restate service for the operator-route tests, served by hypercorn.

Started by ``tests/restate/conftest.py`` as its own process
(``python -m hypercorn tests/restate/restate_probe_service.py:app``), once per
deployment the tests need, so that a deployment can be made unreachable by
stopping its process.

``RecoveryProbeWorkflow`` covers the three recovery shapes:

* ``{"mode": "fail"}``    records an attempt, then fails terminally (TerminalError);
* ``{"mode": "hang"}``    records an attempt, then suspends on the ``release`` promise;
* ``{"mode": "succeed"}`` records an attempt and completes.

The ``attempts`` state makes "clear keyed state" observable: a submission on a
blank key returns ``previousAttempts: null``.

``RecoveryProbeObject`` is a virtual object with the same modes, for keyed
state outside workflows.
"""

from datetime import timedelta

import restate
from restate.exceptions import TerminalError

WORKFLOW_NAME = "RecoveryProbeWorkflow"
OBJECT_NAME = "RecoveryProbeObject"
FAILURE_MESSAGE = "upstream provider returned a terminal failure"

probe_workflow = restate.Workflow(WORKFLOW_NAME)
probe_object = restate.VirtualObject(OBJECT_NAME)


async def _record_attempt(ctx) -> tuple[int | None, int]:
    previous = await ctx.get("attempts")
    attempts = (previous or 0) + 1
    ctx.set("attempts", attempts)
    return previous, attempts


@probe_workflow.main()
async def run(ctx: restate.WorkflowContext, request: dict) -> dict:
    previous, attempts = await _record_attempt(ctx)
    mode = request.get("mode", "succeed")
    if mode == "fail":
        raise TerminalError(FAILURE_MESSAGE)
    if mode == "hang":
        await ctx.promise("release").value()
    return {"previousAttempts": previous, "attempts": attempts}


@probe_workflow.handler()
async def release(ctx: restate.WorkflowSharedContext) -> None:
    await ctx.promise("release").resolve("released")


@probe_workflow.handler()
async def attempts(ctx: restate.WorkflowSharedContext) -> int | None:
    return await ctx.get("attempts")


@probe_object.handler()
async def act(ctx: restate.ObjectContext, request: dict) -> dict:
    previous, attempts = await _record_attempt(ctx)
    mode = request.get("mode", "succeed")
    if mode == "fail":
        raise TerminalError(FAILURE_MESSAGE)
    if mode == "hang":
        await ctx.sleep(timedelta(days=1))
    return {"previousAttempts": previous, "attempts": attempts}


@probe_object.handler(kind="shared")
async def recall(ctx: restate.ObjectSharedContext) -> int | None:
    return await ctx.get("attempts")


app = restate.app(services=[probe_workflow, probe_object])
