"""A Temporal worker process of the recovery lab: the briefing workflow and its activities.

    python -m lab.temporal_worker --address 127.0.0.1:PORT --task-queue Q --name worker:lab-A

Django is set up for the credential custody (as in ``lab.worker``). It prints one
line when it polls, then runs until the lab stops or kills it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from concurrent.futures import ThreadPoolExecutor


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True)
    ap.add_argument("--task-queue", required=True)
    ap.add_argument("--name", default="worker:lab")
    args = ap.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "revive_site.settings")
    import django

    django.setup()
    from temporalio import activity
    from temporalio.client import Client
    from temporalio.worker import Worker

    from revive_sdk import temporal as revive_temporal

    from . import briefing
    from .temporal_workflow import LabBriefing

    @activity.defn(name="lab_register")
    def lab_register(state: dict) -> None:
        activity.heartbeat()
        revive_temporal.register_run(briefing.revive(), workflow_name=briefing.WORKFLOW, run_id=state["run_id"])
        briefing.record_checkpoints(state["run_id"])

    @activity.defn(name="lab_step")
    def lab_step(state: dict, index: int) -> dict:
        activity.heartbeat()  # picked up by a live worker (see ACTIVITY's heartbeat timeout)
        entry = briefing.run_step(index, state, revive_temporal.protect_action)
        return {**entry, "worker": args.name}

    async def serve() -> None:
        client = await Client.connect(args.address)
        with ThreadPoolExecutor(max_workers=4) as executor:
            # No workflow cache: the test server never times out a killed worker's sticky queue.
            worker = Worker(
                client,
                task_queue=args.task_queue,
                workflows=[LabBriefing],
                activities=[lab_register, lab_step],
                activity_executor=executor,
                max_cached_workflows=0,
            )
            print(f"{args.name} ready", flush=True)
            await worker.run()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
