"""The process that runs a fault-suite LangGraph run until it parks or finishes, as a LangGraph host would.

    python -m tests.faults.support.lg_runner --run-id R --thread-id T --input '{...}' [--continue]

A failed invoke (a send that timed out) is retried from the thread's last checkpoint, a few times, with a short
pause -- the host's retry policy. After the run parks, the process stays up until the harness kills it or the
run finishes elsewhere (Revive's Celery worker resumes it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from revive_sdk import langgraph as revive_lg

from tests.runtimes.support.clients import revive

from .graph import sends
from .steps import world_for

GRAPH = "faults-sends"
RETRIES = 5


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--thread-id", required=True)
    ap.add_argument("--input", default="{}")
    ap.add_argument("--continue", dest="cont", action="store_true")
    args = ap.parse_args()

    world = world_for(args.run_id)
    revive_lg.register_run(revive(), run_id=args.run_id, thread_id=args.thread_id, graph=GRAPH,
                           workflow_name="fault suite sends")
    with revive_lg.checkpointer(os.environ["DATABASE_URL"]) as saver:
        graph = sends().compile(checkpointer=saver)
        config = revive_lg.run_config(args.thread_id)
        payload = None if args.cont else json.loads(args.input)
        for attempt in range(RETRIES + 1):
            try:
                result = graph.invoke(payload, config)
                break
            except Exception as exc:  # the host retries the run from its checkpoint
                world.mark("invoke_failed", run_id=args.run_id, error=repr(exc)[:300], attempt=attempt)
                payload = None
                time.sleep(1.0)
        else:
            return 3
    world.mark("runner_done", run_id=args.run_id, interrupts=[i.value for i in result.get("__interrupt__", [])])
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
