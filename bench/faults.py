"""The fault suite's long version: N trials over the runtimes, one fault each, a table per runtime × kind.

    .venv/bin/python bench/faults.py --trials 1000 --seed 7                 # all three runtimes, every kind
    .venv/bin/python bench/faults.py --trials 60 --runtimes langgraph,restate --kinds redis_loss_parked,kill_parked
    .venv/bin/python bench/faults.py --sample --json out.json               # what CI runs: each kind once per runtime

It starts its own servers (a private PostgreSQL cluster and redis-server on free ports, Revive's web, a Celery
worker and beat, the Temporal test server and restate-server) once, runs the trials several at a time on fresh
connections and runs (``tests/faults/harness.py``), prints each trial as it ends and the table at the end. Every
process it starts dies with it -- on Ctrl-C, on SIGTERM, and on SIGKILL too (``lab.processes``). Exit status 1
if any trial broke an invariant (a duplicate or lost effect, a stuck run, a second case or generation advance).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "sdk" / "python")]

from tests.faults import harness  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=None, help="how many trials (default: one per runtime × kind)")
    ap.add_argument("--sample", action="store_true", help="exactly one trial per runtime × kind (what CI runs)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--runtimes",
        default=",".join(harness.RUNTIMES),
        help="comma-separated subset of " + ", ".join(harness.RUNTIMES),
    )
    ap.add_argument("--kinds", default=",".join(harness.KINDS), help="comma-separated subset of the fault kinds")
    ap.add_argument(
        "--profile",
        choices=sorted(harness.PROFILES),
        default="default",
        help="default: Revive's shipped timeouts; short: shortened locks, sweeps and retries",
    )
    ap.add_argument(
        "--sign-in",
        choices=("idp", "service"),
        default=None,
        help="how the owner reconnects: at the lab identity provider through Revive's pages (idp, the "
        "default with --profile default) or through the verified-reconnect service (service, the "
        "default with --profile short)",
    )
    ap.add_argument("--concurrency", type=int, default=4, help="trials in flight at once")
    ap.add_argument("--json", dest="json_path", help="write every trial's result here")
    ap.add_argument("--keep", action="store_true", help="keep the stack's directory (logs, worlds) afterwards")
    args = ap.parse_args()

    runtimes = [r for r in args.runtimes.split(",") if r]
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(runtimes) - set(harness.RUNTIMES)) + sorted(set(kinds) - set(harness.KINDS))
    if unknown:
        ap.error(f"unknown runtime or kind: {', '.join(unknown)}")
    trials = len(runtimes) * len(kinds) if args.sample or args.trials is None else args.trials
    pairs = harness.plan(runtimes, kinds, trials, args.seed)

    def stopped(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stopped)
    sign_in = args.sign_in or ("idp" if args.profile == "default" else "service")
    stack = harness.Stack(
        runtimes=runtimes, profile=args.profile, sign_in=sign_in, say=lambda line: print(line, flush=True)
    )
    results: list[harness.TrialResult] = []
    began = time.monotonic()
    interrupted = False
    try:
        print(
            f"fault suite: {trials} trial(s), runtimes {', '.join(runtimes)}, {len(kinds)} kind(s), seed {args.seed}, "
            f"profile {args.profile}, owner sign-in {sign_in}, {args.concurrency} at a time; starting the stack ...",
            flush=True,
        )
        stack.start()

        def progress(result: harness.TrialResult, done: int, total: int) -> None:
            results.append(result)
            took = f"{result.recovery_seconds:.1f}s after the reconnect" if result.recovery_seconds is not None else ""
            flag = "ok " if result.ok else "BAD"
            print(
                f"[{done}/{total} {time.monotonic() - began:.0f}s] {flag} {result.runtime:<9} {result.kind:<24} "
                f"{result.outcome:<16} dup {result.duplicates} lost {result.lost} {took}",
                flush=True,
            )
            if not result.ok:
                print(f"      {result.run_id}: {'; '.join(result.violations)} {result.detail}", flush=True)

        harness.run_trials(stack, pairs, concurrency=args.concurrency, on_result=progress)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping every process of the stack", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        for crash in stack.crashes:
            print(f"unexpected exit (restarted): {crash}", flush=True)
        print(
            f"\n{harness.table(results)}\n\n{len(results)} trial(s) in {time.monotonic() - began:.0f}s; "
            f"{len(stack.crashes)} unexpected process exit(s); "
            f"stack directory {stack.root}{' (kept)' if args.keep else ' (removed)'}",
            flush=True,
        )
        if args.json_path:
            Path(args.json_path).write_text(
                json.dumps({"trials": [{**asdict(r), "ok": r.ok} for r in results], "crashes": stack.crashes}, indent=1)
            )
        harness.cleanup_root(stack, keep=args.keep)
    if interrupted:
        os._exit(130)  # trial threads may still wait on servers that are gone
    return 0 if results and all(r.ok for r in results) and not stack.crashes else 1


if __name__ == "__main__":
    sys.exit(main())
