"""The fault suite's Temporal workflow (sandboxed: activities are called by name)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from revive_sdk.temporal import ReviveRecovery

# The runtime helper's documented shape: a bounded activity timeout, retries with backoff.
ACTIVITY = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=20),
}
SENDS = ("send_1", "send_2", "send_3")


@workflow.defn(name="FaultSendsWorkflow")
class FaultSendsWorkflow(ReviveRecovery):
    @workflow.run
    async def run(self, request: dict) -> dict:
        sent = {}
        for key in SENDS:
            sent[key] = await self.revive_execute_activity("send", {**request, "key": key}, **ACTIVITY)
        await workflow.execute_activity("finish", request, **ACTIVITY)
        return {"sent": sent, "resumes": self._revive_state()["resumes"]}
