"""The Temporal workflow of the runtime tests (sandboxed: activities are called by name)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from revive_sdk.temporal import ReviveRecovery, RunAbandoned

ACTIVITY = {
    "start_to_close_timeout": timedelta(minutes=5),
    "retry_policy": RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=20),
}


@workflow.defn(name="BriefingWorkflow")
class BriefingWorkflow(ReviveRecovery):
    """prepare (commits a side effect) -> send (its credential may be rejected: the workflow parks) -> finish."""

    @workflow.run
    async def run(self, request: dict) -> dict:
        prepared = await workflow.execute_activity("prepare", request, **ACTIVITY)
        try:
            sent = await self.revive_execute_activity("send", request, **ACTIVITY)
        except RunAbandoned as abandoned:  # the operator gave up on the case: end without sending
            return {"prepared": prepared, "abandoned": abandoned.case_id, "reason": abandoned.reason}
        await workflow.execute_activity("finish", request, **ACTIVITY)
        return {"prepared": prepared, "sent": sent, "resumes": self._revive_state()["resumes"]}
