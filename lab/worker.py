"""A worker process of the recovery lab: it runs one briefing until the run parks, reports, and waits to be killed.

    python -m lab.worker --run-id R --thread-id T --input '{...}'

Django is set up for the credential custody and Revive's checkpointer (the same store
Revive resumes from). The lab kills this process while the run is parked; a different
process -- Revive's worker -- resumes the same run id.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--thread-id", required=True)
    ap.add_argument("--input", required=True)
    args = ap.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "revive_site.settings")
    import django

    django.setup()
    from cases.runtimes import adapter_for

    from .briefing import GRAPH_NAME

    graph = adapter_for("langgraph").graph(GRAPH_NAME)
    result = graph.invoke(json.loads(args.input), {"configurable": {"thread_id": args.thread_id}})
    interrupts = [i.value for i in result.get("__interrupt__", [])]
    print(json.dumps({"run_id": args.run_id, "pid": os.getpid(), "interrupts": interrupts}), flush=True)
    while True:  # a worker stays up; the lab kills it
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
