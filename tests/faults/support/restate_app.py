"""The fault suite's Restate service, served by hypercorn (``tests.faults.support.restate_app:app``)."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

import restate

from revive_sdk import restate as revive_restate
from tests.runtimes.support.clients import async_revive

from . import steps

WORKFLOW = "FaultSends"
sends = restate.Workflow(WORKFLOW)
revive_restate.install_resume_handler(sends)


@sends.main(inactivity_timeout=timedelta(seconds=2))
async def run(ctx: restate.WorkflowContext, request: dict) -> dict:
    run_id, conn, faults = ctx.key(), request["connection_id"], request.get("faults") or {}
    revive = async_revive()
    try:
        await revive_restate.register_run(ctx, revive, workflow=sends, workflow_name="fault suite sends")
        sent = {}
        for key in steps.SENDS:
            kwargs = steps.action_kwargs(run_id=run_id, conn=conn, key=key, faults=faults)
            sync_execute = kwargs["execute"]
            kwargs["execute"] = lambda c, sync_execute=sync_execute: asyncio.to_thread(sync_execute, c)
            sent[key] = await revive_restate.protect_action(ctx, revive, **kwargs)

        async def finish() -> None:
            steps.finished(run_id, pid=os.getpid())

        await ctx.run_typed("finish", finish, restate.RunOptions())
        return {"sent": sent}
    finally:
        await revive.aclose()


app = restate.app(services=[sends])
