"""Protected-action overhead: begin + commit through the SDK over HTTP, against PostgreSQL.

Runs Revive under gunicorn on loopback against a fresh PostgreSQL database, drives
``Revive.protect_action`` (with the worker's generation in hand, so exactly the two
calls begin and commit), and measures, in the same run, the floor: the same two row
writes (insert the ledger row, update it to committed) done directly with psycopg.

    .venv/bin/python bench/protected_action.py [--actions 2000] [--workers 2]

Targets: p50 <= 2 ms, p99 <= 8 ms, ratio (p50 / floor p50) <= 4. Prints figures; never fails on them.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import free_port, pct  # noqa: E402
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actions", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    dbname = f"revive_bench_{os.getpid()}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    database_url = f"{PG}/{dbname}"
    env = dict(os.environ, DATABASE_URL=database_url, DATABASE_CONN_MAX_AGE="600", SECRET_KEY="bench-only",
               DJANGO_SETTINGS_MODULE="revive_site.settings", LOG_LEVEL="WARNING")
    env.pop("REDIS_URL", None)
    server = None
    try:
        print(f"bench: database {dbname}; migrating…", flush=True)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        os.environ.update(DATABASE_URL=database_url, SECRET_KEY="bench-only", DJANGO_SETTINGS_MODULE="revive_site.settings", LOG_LEVEL="WARNING")
        import django

        django.setup()
        from cases import services
        from revive_sdk import Revive

        services.connection_create(connection_id="conn_bench", provider="entra", owner_email="o@example.com", provider_subject="oid")
        services.run_register(run_id="run_bench", runtime="langgraph", runtime_ref={}, workflow_name="bench", actor="bench")
        _, key = services.api_key_create(name="bench")

        port = free_port()
        server = subprocess.Popen(
            [str(ROOT / ".venv/bin/gunicorn"), "revive_site.wsgi:application", "--bind", f"127.0.0.1:{port}",
             "--workers", str(args.workers), "--worker-class", "gthread", "--threads", "4", "--log-level", "warning", "--keep-alive", "30"],
            cwd=ROOT, env=env,
        )
        url = f"http://127.0.0.1:{port}"
        import httpx

        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/api/v1/docs", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("bench: gunicorn did not start")
                time.sleep(0.2)

        print(f"bench: gunicorn ({args.workers} workers) at {url}; {args.warmup} warm-up + {args.actions} protected actions…", flush=True)
        sdk_ms: list[float] = []
        with Revive(url, key) as revive:
            for i in range(args.warmup + args.actions):
                t0 = time.perf_counter()
                revive.protect_action(run_id="run_bench", checkpoint_id="01", connection_id="conn_bench", action_key=f"a{i}",
                                      generation=1, execute=lambda ctx: {"ok": True})
                if i >= args.warmup:
                    sdk_ms.append((time.perf_counter() - t0) * 1000)

        floor_ms: list[float] = []
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_floor (id bigserial PRIMARY KEY, run_id text NOT NULL, action_key text NOT NULL, "
                         "state text NOT NULL, generation int NOT NULL, result jsonb, UNIQUE (run_id, action_key))")
            for i in range(args.warmup + args.actions):
                t0 = time.perf_counter()
                conn.execute("INSERT INTO bench_floor (run_id, action_key, state, generation) VALUES (%s, %s, 'executing', 1)", ("run_bench", f"a{i}"))
                conn.execute("UPDATE bench_floor SET state = 'committed', result = %s WHERE run_id = %s AND action_key = %s",
                             ('{"ok": true}', "run_bench", f"a{i}"))
                if i >= args.warmup:
                    floor_ms.append((time.perf_counter() - t0) * 1000)

        p50, p99 = pct(sdk_ms, 50), pct(sdk_ms, 99)
        f50, f99 = pct(floor_ms, 50), pct(floor_ms, 99)
        ratio = p50 / f50
        print()
        print(f"{'':<34}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
        print(f"{'SDK begin+commit over HTTP':<34}{p50:>9.2f}{p99:>9.2f}{statistics.mean(sdk_ms):>9.2f}")
        print(f"{'floor: 2 row writes via psycopg':<34}{f50:>9.2f}{f99:>9.2f}{statistics.mean(floor_ms):>9.2f}")
        print(f"ratio p50 / floor p50: {ratio:.1f}")
        print(f"targets: p50 <= 2 ms [{'met' if p50 <= 2 else 'MISSED'}], p99 <= 8 ms [{'met' if p99 <= 8 else 'MISSED'}], "
              f"ratio <= 4 [{'met' if ratio <= 4 else 'MISSED'}]")
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        from django.db import connections

        connections.close_all()
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


if __name__ == "__main__":
    raise SystemExit(main())
