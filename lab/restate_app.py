"""The lab's briefing as a Restate workflow, served by hypercorn (``lab.restate_app:app``) as ``worker:lab-A``.

Each checkpoint is ``revive_sdk.restate.protect_action``: journaled attempts, and a
rejected credential suspends the workflow on the durable promise of the rejected
generation until Revive resolves it through ``revive_reauthorized``. The briefing's
credential reads Revive's credential custody (Django) from the handler's event loop,
so the process runs with ``DJANGO_ALLOW_ASYNC_UNSAFE`` (one run at a time, a lab).
"""

from __future__ import annotations

import os
from datetime import timedelta

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "revive_site.settings")
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
import django  # noqa: E402

django.setup()

import restate  # noqa: E402

from revive_sdk import AsyncRevive  # noqa: E402
from revive_sdk import restate as revive_restate  # noqa: E402

from . import briefing  # noqa: E402

WORKFLOW_NAME = "LabBriefing"
WORKER_NAME = os.environ.get("REVIVE_LAB_WORKER_NAME", "worker:lab")
workflow = restate.Workflow(WORKFLOW_NAME)
revive_restate.install_resume_handler(workflow)


# Suspend soon after awaiting the promise instead of holding the deployment's connection.
@workflow.main(inactivity_timeout=timedelta(seconds=2))
async def run(ctx: restate.WorkflowContext, state: dict) -> dict:
    revive = AsyncRevive(os.environ["REVIVE_LAB_URL"], os.environ["REVIVE_LAB_API_KEY"])
    try:
        await revive_restate.register_run(ctx, revive, workflow=workflow, workflow_name=briefing.WORKFLOW)

        async def checkpoints() -> None:
            for checkpoint, label, _ in briefing.STEPS:
                await revive.record_checkpoint(
                    run_id=state["run_id"], checkpoint_id=checkpoint, label=f"{checkpoint} / {label}"
                )

        await ctx.run_typed("lab:checkpoints", checkpoints)
        log = []
        for index, (checkpoint, _, _) in enumerate(briefing.STEPS):
            result = await revive_restate.protect_action(ctx, revive, **briefing.step_arguments(index, state))

            async def entry(checkpoint: str = checkpoint) -> dict:  # who ran the step, journaled once
                return {"checkpoint": checkpoint, "pid": os.getpid(), "worker": WORKER_NAME}

            log.append({**await ctx.run_typed(f"lab:log:{checkpoint}", entry), "result": result})
        return {"log": log}
    finally:
        await revive.aclose()


app = restate.app(services=[workflow])
