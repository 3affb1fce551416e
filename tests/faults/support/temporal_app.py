"""The fault suite's Temporal worker process: ``FaultSendsWorkflow`` and its activities.

python -m tests.faults.support.temporal_app --address 127.0.0.1:7233 --task-queue Q
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from revive_sdk import temporal as revive_temporal
from tests.runtimes.support.clients import revive

from . import steps
from .temporal_workflow import FaultSendsWorkflow


@activity.defn(name="send")
def send(request: dict) -> dict:
    run_id = request["run_id"]
    revive_temporal.register_run(revive(), workflow_name="fault suite sends", run_id=run_id)
    return revive_temporal.protect_action(
        revive(),
        **steps.action_kwargs(
            run_id=run_id, conn=request["connection_id"], key=request["key"], faults=request.get("faults") or {}
        ),
    )


@activity.defn(name="finish")
def finish(request: dict) -> None:
    steps.finished(request["run_id"], pid=os.getpid())


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True)
    ap.add_argument("--task-queue", required=True)
    args = ap.parse_args()
    client = await Client.connect(args.address)
    with ThreadPoolExecutor(max_workers=16) as executor:
        # No sticky execution: the test server never times out a dead worker's sticky queue.
        worker = Worker(
            client,
            task_queue=args.task_queue,
            workflows=[FaultSendsWorkflow],
            activities=[send, finish],
            activity_executor=executor,
            max_cached_workflows=0,
        )
        print("worker ready", flush=True)
        await worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
