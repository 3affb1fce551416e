"""A Temporal worker process for the runtime tests: the briefing workflow and its activities.

    python -m tests.runtimes.support.temporal_app --address 127.0.0.1:7233 --task-queue Q

The activities talk to Revive over HTTP with the SDK; ``send`` needs the provider
credential the test can revoke.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from revive_sdk import temporal as revive_temporal

from .clients import revive
from .temporal_workflows import BriefingWorkflow
from .world import World


@activity.defn(name="prepare")
def prepare(request: dict) -> dict:
    world, run_id, conn = World(), request["run_id"], request["connection_id"]
    revive_temporal.register_run(revive(), workflow_name="test temporal briefing", run_id=run_id)
    world.mark("prepare", run_id=run_id)
    return revive_temporal.protect_action(
        revive(),
        run_id=run_id,
        checkpoint_id="04",
        connection_id=conn,
        action_key="prepare_brief_04",
        execute=lambda ctx: world.effect("prepare", run_id=run_id, idempotency_key=ctx.idempotency_key),
    )


@activity.defn(name="send")
def send(request: dict) -> dict:
    world, run_id, conn = World(), request["run_id"], request["connection_id"]
    world.mark("send", run_id=run_id)
    result = revive_temporal.protect_action(
        revive(),
        run_id=run_id,
        checkpoint_id="05",
        connection_id=conn,
        action_key="send_exec_05",
        credential=lambda: world.lease(conn),
        execute=lambda ctx: world.effect(
            "send", run_id=run_id, idempotency_key=ctx.idempotency_key, credential=ctx.credential
        ),
        reconcile=lambda ctx: world.find(ctx.idempotency_key),
    )
    world.mark("sent", run_id=run_id, generation=revive().lease(conn)["generation"])
    return result


@activity.defn(name="finish")
def finish(request: dict) -> None:
    World().pause_if_held("finish", request["run_id"])
    World().mark("finished", run_id=request["run_id"])


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True)
    ap.add_argument("--task-queue", required=True)
    args = ap.parse_args()
    client = await Client.connect(args.address)
    with ThreadPoolExecutor(max_workers=8) as executor:
        # No sticky execution: the Java test server never times out a dead worker's sticky queue (a real
        # Temporal server does, after sticky_queue_schedule_to_start_timeout), so a killed worker would keep
        # the workflow's next task forever in the worker-restart test.
        worker = Worker(
            client,
            task_queue=args.task_queue,
            workflows=[BriefingWorkflow],
            activities=[prepare, send, finish],
            activity_executor=executor,
            max_cached_workflows=0,
        )
        print("worker ready", flush=True)
        await worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
