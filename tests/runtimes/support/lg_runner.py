"""A worker process that starts (or continues) one LangGraph run, then stays up until it is killed.

    python -m tests.runtimes.support.lg_runner --graph test-briefing --run-id R --thread-id T --input '{...}' [--continue]

It registers the run with Revive, invokes the graph on its thread with the
PostgreSQL checkpointer (``DATABASE_URL``), prints one JSON line with the outcome
and waits: the test kills it while the run is parked, and a different process
(Revive's Celery worker) resumes the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from django.utils.module_loading import import_string

from revive_sdk import langgraph as revive_lg

from .clients import revive
from .config import GRAPHS
from .world import World


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--graph", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--thread-id", required=True)
    ap.add_argument("--input", default="{}")
    ap.add_argument("--continue", dest="cont", action="store_true", help="continue the thread from its last checkpoint")
    ap.add_argument("--exit", action="store_true", help="exit after the invoke instead of waiting to be killed")
    args = ap.parse_args()

    world = World()
    revive_lg.register_run(
        revive(), run_id=args.run_id, thread_id=args.thread_id, graph=args.graph, workflow_name=f"test {args.graph}"
    )
    builder = import_string(GRAPHS[args.graph].replace(":", "."))()
    with revive_lg.checkpointer(os.environ["DATABASE_URL"]) as saver:
        graph = builder.compile(checkpointer=saver)
        config = revive_lg.run_config(args.thread_id)
        result = graph.invoke(None if args.cont else json.loads(args.input), config)
        interrupts = [i.value for i in result.get("__interrupt__", [])]
    world.mark("runner_done", run_id=args.run_id, interrupts=interrupts)
    print(json.dumps({"interrupts": interrupts, "pid": os.getpid()}), flush=True)
    if args.exit:
        return 0
    while True:  # a worker that stays up; the test kills it
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
