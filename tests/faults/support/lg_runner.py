"""The process that runs a fault-suite LangGraph run until it parks or finishes, as a LangGraph host would.

    python -m tests.faults.support.lg_runner --run-id R --thread-id T --input '{...}' [--continue]

A failed invoke (a send that timed out, an action still claimed by a killed process) is retried from the thread's
last checkpoint -- the host's retry policy: after ``retry_after`` when Revive says when (``ACTION_IN_PROGRESS``),
else with exponential backoff (1 s doubling to 30 s), for up to ``RETRY_FOR`` seconds, long enough for Revive's
default 300 s action lock and the reaper behind it. After the run parks, the process stays up until the harness kills it or the
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
RETRY_FOR = 480.0


def _invoke(args: argparse.Namespace, first_input: dict | None) -> dict:
    """One attempt: register (idempotent), open the checkpointer, run from the thread's last checkpoint -- or from the
    input while the thread has none (an attempt that failed before the first step, e.g. while PostgreSQL restarted)."""
    revive_lg.register_run(
        revive(), run_id=args.run_id, thread_id=args.thread_id, graph=GRAPH, workflow_name="fault suite sends"
    )
    with revive_lg.checkpointer(os.environ["DATABASE_URL"]) as saver:
        graph = sends().compile(checkpointer=saver)
        config = revive_lg.run_config(args.thread_id)
        started = graph.get_state(config).created_at is not None
        return graph.invoke(None if started else first_input, config)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--thread-id", required=True)
    ap.add_argument("--input", default="{}")
    ap.add_argument("--continue", dest="cont", action="store_true")
    args = ap.parse_args()

    world = world_for(args.run_id)
    first_input = None if args.cont else json.loads(args.input)
    give_up, attempt = time.monotonic() + RETRY_FOR, 0
    while True:
        try:
            result = _invoke(args, first_input)
            break
        except Exception as exc:  # the host retries the run from its checkpoint, on fresh connections
            world.mark("invoke_failed", run_id=args.run_id, error=repr(exc)[:300], attempt=attempt)
            if time.monotonic() > give_up:
                return 3
            retry_after = (getattr(exc, "data", None) or {}).get("retry_after")
            time.sleep(float(retry_after) if retry_after else min(2.0**attempt, 30.0))
            attempt += 1
    world.mark("runner_done", run_id=args.run_id, interrupts=[i.value for i in result.get("__interrupt__", [])])
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
