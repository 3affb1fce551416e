"""The Restate service of the runtime tests, served by hypercorn (``tests.runtimes.support.restate_app:app``).

``ReviveBriefing`` is a workflow: ``prepare`` commits a side effect, ``send``
needs the provider credential the test can revoke (the workflow then suspends on
the durable promise of the rejected generation), ``finish`` closes the run. The
shared handler ``revive_reauthorized`` is the one Revive calls to resume it.
"""

from __future__ import annotations

from datetime import timedelta

import restate

from revive_sdk import restate as revive_restate

from .clients import async_revive
from .world import World

WORKFLOW = "ReviveBriefing"
briefing = restate.Workflow(WORKFLOW)
revive_restate.install_resume_handler(briefing)


# Suspend soon after awaiting something (the promise) instead of holding the deployment's connection.
@briefing.main(inactivity_timeout=timedelta(seconds=2))
async def run(ctx: restate.WorkflowContext, request: dict) -> dict:
    world, run_id, conn = World(), ctx.key(), request["connection_id"]
    revive = async_revive()
    try:
        await revive_restate.register_run(ctx, revive, workflow=briefing, workflow_name="test restate briefing")

        async def mark(what: str) -> None:
            world.mark(what, run_id=run_id)

        await ctx.run_typed("mark prepare", mark, restate.RunOptions(), "prepare")
        prepared = await revive_restate.protect_action(
            ctx,
            revive,
            run_id=run_id,
            checkpoint_id="04",
            connection_id=conn,
            action_key="prepare_brief_04",
            execute=lambda c: world.effect("prepare", run_id=run_id, idempotency_key=c.idempotency_key),
        )

        def lease() -> str:  # called once per attempt, inside the attempt's journaled step
            world.mark("send", run_id=run_id)
            return world.lease(conn)

        try:
            sent = await revive_restate.protect_action(
                ctx,
                revive,
                run_id=run_id,
                checkpoint_id="05",
                connection_id=conn,
                action_key="send_exec_05",
                credential=lease,
                execute=lambda c: world.effect(
                    "send", run_id=run_id, idempotency_key=c.idempotency_key, credential=c.credential
                ),
                reconcile=lambda c: world.find(c.idempotency_key),
            )
        except revive_restate.RunAbandoned as abandoned:  # the operator gave up on the case: end without sending
            return {"prepared": prepared, "abandoned": abandoned.case_id, "reason": abandoned.reason}
        await ctx.run_typed("mark finished", mark, restate.RunOptions(), "finished")
        return {"prepared": prepared, "sent": sent}
    finally:
        await revive.aclose()


app = restate.app(services=[briefing])
