"""The lab's briefing as a Temporal workflow (sandboxed: activities are called by name, see ``lab.temporal_worker``).

``lab_register`` registers the run with Revive (runtime ``temporal``), then each of
the five checkpoints is one activity run through ``ReviveRecovery``: a rejected
credential parks the workflow on the ``revive_reauthorized`` signal, and the
activity runs again after Revive's resume.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from revive_sdk.temporal import ReviveRecovery

WORKFLOW_NAME = "LabBriefing"
STEP_COUNT = 5
# The retry interval is long enough for the timeout scenario to revoke the grant while the send is unanswered.
# The heartbeat timeout bounds a task the test server handed to a killed worker's poll (worker-lost): it never
# notices the dead poller, so without it the task would wait out the whole start-to-close timeout.
ACTIVITY = {
    "start_to_close_timeout": timedelta(minutes=2),
    "heartbeat_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=1.0, maximum_attempts=20),
}


@workflow.defn(name=WORKFLOW_NAME)
class LabBriefing(ReviveRecovery):
    @workflow.run
    async def run(self, state: dict) -> dict:
        await workflow.execute_activity("lab_register", state, **ACTIVITY)
        log = []
        for index in range(STEP_COUNT):
            log.append(await self.revive_execute_activity("lab_step", state, index, **ACTIVITY))
        return {"log": log, "resumes": self._revive_state()["resumes"]}
