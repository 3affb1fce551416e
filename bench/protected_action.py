"""Protected-action overhead: begin + commit through the SDK over HTTP to gunicorn, against PostgreSQL,
beside the database floor measured in the same run, in alternating batches.

Revive runs under gunicorn on loopback against a fresh PostgreSQL database. The client drives
``Revive.protect_action`` with the worker's generation in hand, so exactly two calls: begin and commit.
The floor is what any ledger must do at least: the same two row writes (insert the ledger row, update it
to committed) sent directly with psycopg on one open connection. Batches alternate -- floor, Revive,
floor, Revive, ... -- so both see the same machine load.

P1: one client, p50 / p99 per protected action, and the ratio to the floor's.
P2: ``--clients`` concurrent clients -- processes, as workers are, each with its own HTTP connection (or its own
database connection for the floor) -- protected actions per second against the floor's pairs per second.

    .venv/bin/python bench/protected_action.py [--actions 2000] [--batch 100] [--clients 4] [--workers 2]

Targets, printed, never asserted: P1 p50 <= 4x floor, p99 <= 8x floor; P2 >= 50 % of the floor's rate.
The database and gunicorn are always removed, also on failure and Ctrl-C.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import CpuSplit, bench_database, gunicorn, pct, process_group, stop_on_sigterm  # noqa: E402

FLOOR_TABLE = (
    "CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, run_id text NOT NULL, action_key text NOT NULL, "
    "state text NOT NULL, generation int NOT NULL, result jsonb, UNIQUE (run_id, action_key))"
)


class Floor:
    """The two row writes of a protected action, on one psycopg connection (autocommit: one implicit transaction each)."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(FLOOR_TABLE)

    def action(self, key: str) -> None:
        self.conn.execute(
            "INSERT INTO bench_floor (run_id, action_key, state, generation) VALUES (%s, %s, 'executing', 1)",
            ("run_bench", key),
            prepare=True,
        )
        self.conn.execute(
            "UPDATE bench_floor SET state = 'committed', result = %s WHERE run_id = %s AND action_key = %s",
            ('{"ok": true}', "run_bench", key),
            prepare=True,
        )

    def close(self) -> None:
        self.conn.close()


class Client:
    """One SDK client (one HTTP keep-alive connection) protecting fresh actions."""

    def __init__(self, url: str, key: str) -> None:
        from revive_sdk import Revive

        self.revive = Revive(url, key)

    def action(self, key: str) -> None:
        self.revive.protect_action(
            run_id="run_bench",
            checkpoint_id="01",
            connection_id="conn_bench",
            action_key=key,
            generation=1,
            execute=lambda ctx: {"ok": True},
        )

    def close(self) -> None:
        self.revive.close()


def timed(fn, keys) -> list[float]:
    out = []
    for key in keys:
        t0 = time.perf_counter()
        fn(key)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _client_loop(make, prefix: str, start, stop, done) -> None:
    """One P2 client process: warm its connection, then protect fresh actions from ``start`` until ``stop``."""
    worker = make()
    try:
        for n in range(20):
            worker.action(f"{prefix}w{n}")
        start.wait()
        count = 0
        while not stop.is_set():
            worker.action(f"{prefix}{count}")
            count += 1
        done.put(count)
    finally:
        worker.close()


def throughput(make, clients: int, prefix: str, seconds: float) -> float:
    """Operations per second of ``clients`` processes, each looping over fresh keys with its own ``make()`` for
    ``seconds`` once all are ready."""
    context = multiprocessing.get_context("fork")
    start, stop, done = context.Event(), context.Event(), context.Queue()
    procs = [
        context.Process(target=_client_loop, args=(make, f"{prefix}-{i}-", start, stop, done)) for i in range(clients)
    ]
    for proc in procs:
        proc.start()
    time.sleep(0.5)  # connect and warm (each process's 20 first actions are not counted)
    start.set()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    counts = [done.get(timeout=120) for _ in procs]
    elapsed = time.perf_counter() - t0
    for proc in procs:
        proc.join(30)
    return sum(counts) / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actions", type=int, default=2000, help="P1: measured actions per side")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--batch", type=int, default=100, help="P1: actions per alternating batch")
    ap.add_argument("--clients", type=int, default=4, help="P2: concurrent clients")
    ap.add_argument("--rounds", type=int, default=6, help="P2: alternating rounds per side")
    ap.add_argument("--round-seconds", type=float, default=3.0)
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    ap.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    ap.add_argument(
        "--worker-class",
        default="gthread",
        help="gunicorn worker class (gthread keeps connections alive; sync does not)",
    )
    args = ap.parse_args()
    stop_on_sigterm()

    with bench_database() as url:
        from cases import services

        services.connection_create(
            connection_id="conn_bench", provider="entra", owner_email="o@example.com", provider_subject="oid"
        )
        services.run_register(
            run_id="run_bench", runtime="langgraph", runtime_ref={}, workflow_name="bench", actor="bench"
        )
        _, api_key = services.api_key_create(name="bench")
        from django.db import connections

        connections.close_all()
        with gunicorn(workers=args.workers, threads=args.threads, worker_class=args.worker_class) as server:
            print(
                f"bench: gunicorn ({args.workers} {args.worker_class} workers x {args.threads} threads) at {server}",
                flush=True,
            )
            seq = itertools.count()
            floor, client = Floor(url), Client(server, api_key)
            cpu = CpuSplit(url, process_group(server.pgid))
            try:
                timed(floor.action, (f"w{next(seq)}" for _ in range(args.warmup)))
                timed(client.action, (f"w{next(seq)}" for _ in range(args.warmup)))
                floor_ms: list[float] = []
                revive_ms: list[float] = []
                print(f"bench: P1, {args.actions} actions per side in alternating batches of {args.batch}…", flush=True)
                while len(revive_ms) < args.actions:
                    n = min(args.batch, args.actions - len(revive_ms))
                    with cpu.measure("floor", n):
                        floor_ms += timed(floor.action, (f"a{next(seq)}" for _ in range(n)))
                    with cpu.measure("revive", n):
                        revive_ms += timed(client.action, (f"a{next(seq)}" for _ in range(n)))
            finally:
                floor.close()
                client.close()
                cpu.close()

            print(
                f"bench: P2, {args.clients} concurrent clients, {args.rounds} alternating rounds of {args.round_seconds:.0f} s…",
                flush=True,
            )
            connections.close_all()  # the client processes fork from this one
            make_floor, make_client = functools.partial(Floor, url), functools.partial(Client, server, api_key)
            floor_rates, revive_rates = [], []
            for r in range(args.rounds):
                floor_rates.append(throughput(make_floor, args.clients, f"f{r}", args.round_seconds))
                revive_rates.append(throughput(make_client, args.clients, f"c{r}", args.round_seconds))

    p50, p99, f50, f99 = pct(revive_ms, 50), pct(revive_ms, 99), pct(floor_ms, 50), pct(floor_ms, 99)
    r50, r99 = p50 / f50, p99 / f99
    rate, floor_rate = statistics.median(revive_rates), statistics.median(floor_rates)
    share = rate / floor_rate
    print()
    print("P1, one client (ms per protected action)")
    print(f"{'':<40}{'p50':>8}{'p99':>8}{'mean':>8}")
    print(f"{'Revive: SDK begin+commit over HTTP':<40}{p50:>8.2f}{p99:>8.2f}{statistics.mean(revive_ms):>8.2f}")
    print(f"{'floor: 2 row writes via psycopg':<40}{f50:>8.2f}{f99:>8.2f}{statistics.mean(floor_ms):>8.2f}")
    print(f"{'ratio to the floor':<40}{r50:>7.1f}x{r99:>7.1f}x")
    print(
        f"P1 targets: p50 <= 4x floor [{'met' if r50 <= 4 else 'MISSED'}], p99 <= 8x floor [{'met' if r99 <= 8 else 'MISSED'}]"
    )
    print()
    print("P1, CPU per protected action (ms; CPU time barely moves with the machine's load, wall time does)")
    print(f"{'':<40}{'client':>8}{'server':>8}{'Postgres':>9}{'total':>8}")
    for side, label in (("revive", "Revive: SDK, gunicorn, PostgreSQL"), ("floor", "floor: psycopg, PostgreSQL")):
        ms = cpu.per_operation_ms(side)
        print(f"{label:<40}{ms['client']:>8.2f}{ms['server']:>8.2f}{ms['postgres']:>9.2f}{sum(ms.values()):>8.2f}")
    print()
    print(f"P2, {args.clients} concurrent clients (median of {args.rounds} rounds)")
    print(f"  Revive: {rate:8.0f} protected actions/s   (rounds: {', '.join(f'{r:.0f}' for r in revive_rates)})")
    print(f"  floor:  {floor_rate:8.0f} pairs of writes/s   (rounds: {', '.join(f'{r:.0f}' for r in floor_rates)})")
    print(f"P2 target: >= 50 % of the floor [{'met' if share >= 0.5 else 'MISSED'}: {share:.0%}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
