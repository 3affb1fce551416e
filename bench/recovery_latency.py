"""Recovery latency: from the owner's callback to the parked run receiving its resume, with a real Celery worker.

Everything runs for real on loopback: Revive under gunicorn on a fresh PostgreSQL
database, a Celery worker on Redis, LangGraph runs on the PostgreSQL checkpointer.
Each run commits one effect, then its provider credential is rejected: it parks
with ``interrupt``. The benchmark then plays the owner's callback (in one
transaction: ``pipeline.recovery_reauthorized`` advances the generation and owes
reconcile-and-resume in the outbox, dispatched on commit) and waits for the run's node to start again
inside the Celery worker (``Command(resume=...)`` on the run's own thread).

1. latency: ``--cases`` runs, each on its own connection, resumed one at a time:
   p50 / p99 of callback -> resume received (and -> run finished);
2. mass outage: ``--mass`` runs parked on one connection, one reconnect, time until
   every run has received its resume; each effect and each resume is counted once. The
   runs are LangGraph runs Revive hosts: each delivery *executes* the rest of the graph in
   the Celery worker (two protected actions over HTTP, the checkpoints), so the figure is
   the graph's execution as much as Revive's delivery. It prints the CPU per run by process
   and the delivery's own part (the celery log's "runtime" is the graph's). With
   ``--outage-runs released`` the runs are registered as resumed by their own worker
   (``runtime_ref.resumed_by = "worker"``, LangGraph.js's way): the delivery is Revive's
   alone (release, record, audit), and the figure is every delivery recorded, once each.

    .venv/bin/python bench/recovery_latency.py [--cases 200] [--mass 1000 | --outage 10000] [--concurrency 4]
        [--outage-runs hosted|released]

Targets (issue 12): P3 p50 <= 100 ms, p99 <= 300 ms; P5 10,000 runs <= 60 s. Prints figures; never fails on
them.
"""

from __future__ import annotations

import argparse
import collections
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import CpuSplit, cpu_seconds, free_port, pct  # noqa: E402

PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/14")


def wait_until(check, what: str, timeout: float, interval: float = 0.002):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def sessions_opened(cpu: CpuSplit, dbname: str) -> int:
    """Sessions ever opened on the benchmark's database (PostgreSQL's cumulative statistics)."""
    cpu._admin.execute("SELECT pg_stat_clear_snapshot()")
    row = cpu._admin.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (dbname,)).fetchone()
    return int(row[0]) if row else 0


def delivery_split(celery_log: Path, runs: set[str]) -> tuple[float, float] | None:
    """Median wall time of the runs' deliveries in the worker, and of the runtime's part of them (from the
    worker's log line ``resume of <run> (<runtime>) delivered: runtime N ms, total M ms``)."""
    import re

    runtime, total = [], []
    for m in re.finditer(r"resume of (\S+) \(\S+\) [^:]*: runtime (\d+) ms, total (\d+) ms", celery_log.read_text()):
        if m[1] in runs:
            runtime.append(float(m[2]))
            total.append(float(m[3]))
    return (statistics.median(runtime), statistics.median(total)) if total else None


class Marks:
    """Follows $BENCH_DIR/marks.jsonl as processes append to it."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.by_run: dict[str, list[dict]] = collections.defaultdict(list)

    def poll(self) -> None:
        import json

        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            m = json.loads(line)
            self.by_run[m["run_id"]].append(m)
        self.offset += end

    def resumed_at(self, run_id: str, bench_pid: int) -> float | None:
        """When the run's send node started in another process than the one that parked it."""
        starts = [m["t"] for m in self.by_run.get(run_id, ()) if m["what"] == "send_start" and m["pid"] != bench_pid]
        return starts[0] if starts else None

    def done_at(self, run_id: str) -> float | None:
        done = [m["t"] for m in self.by_run.get(run_id, ()) if m["what"] == "done"]
        return done[0] if done else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument(
        "--mass",
        "--outage",
        dest="mass",
        type=int,
        default=1000,
        help="runs parked on one connection (0: skip); issue 12 asks for --outage 10000 on a quiet machine",
    )
    ap.add_argument(
        "--outage-runs",
        choices=("hosted", "released"),
        default="hosted",
        help="hosted: Revive's worker executes each resumed graph; released: each run's own worker would (Revive "
        "only delivers)",
    )
    ap.add_argument("--concurrency", type=int, default=4, help="Celery worker processes")
    ap.add_argument("--http-workers", type=int, default=4, help="gunicorn workers")
    ap.add_argument("--park-threads", type=int, default=8)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, marks) and say where")
    args = ap.parse_args()

    dbname = f"revive_bench_{os.getpid()}"
    bench_dir = Path(tempfile.mkdtemp(prefix="revive-recovery-bench-"))
    (bench_dir / "revoked").mkdir()
    queue = f"revive-bench-{os.getpid()}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    database_url = f"{PG}/{dbname}"
    raw_key = f"rvk_bench_{secrets.token_urlsafe(24)}"
    port = free_port()
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        DATABASE_CONN_MAX_AGE="600",
        SECRET_KEY="bench-only",
        DJANGO_SETTINGS_MODULE="bench.recovery_settings",
        LOG_LEVEL="WARNING",
        REDIS_URL=REDIS,
        REVIVE_CELERY_QUEUE=queue,
        BENCH_DIR=str(bench_dir),
        REVIVE_VAR_DIR=str(bench_dir / "var"),
        REVIVE_URL=f"http://127.0.0.1:{port}",
        REVIVE_API_KEY=raw_key,
        REVIVE_RESUME_APPROVAL="never",
    )
    os.environ.update(env)
    procs: list[subprocess.Popen] = []
    try:
        print(f"bench: database {dbname}; migrating…", flush=True)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        import django

        django.setup()
        import hashlib

        from django.db import transaction
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        from audit.models import AuditEvent
        from bench import recovery_graph
        from cases import pipeline, services
        from cases.models import ApiKey, CaseRun, RecoveryCase
        from revive_sdk import langgraph as revive_lg

        ApiKey.objects.create(name="bench", prefix="bench", key_hash=hashlib.sha256(raw_key.encode()).hexdigest())

        procs.append(
            subprocess.Popen(
                [
                    str(ROOT / ".venv/bin/gunicorn"),
                    "revive_site.wsgi:application",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--workers",
                    str(args.http_workers),
                    "--worker-class",
                    "gthread",
                    "--threads",
                    "8",
                    "--log-level",
                    "warning",
                    "--keep-alive",
                    "30",
                ],
                cwd=ROOT,
                env=env,
            )
        )
        celery_log = bench_dir / "celery.log"
        with open(celery_log, "wb") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "revive_site",
                        "worker",
                        "-l",
                        "INFO",
                        "-P",
                        "prefork",
                        "-c",
                        str(args.concurrency),
                        "-O",
                        "fair",
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                        "-n",
                        f"{queue}@%h",
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        import httpx

        def http_up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/v1/docs", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(http_up, "gunicorn", 60, 0.2)
        wait_until(lambda: b" ready." in celery_log.read_bytes(), "the Celery worker", 120, 0.2)

        pool = ConnectionPool(
            database_url,
            min_size=2,
            max_size=args.park_threads + 2,
            open=True,
            kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        )
        saver = PostgresSaver(pool)
        saver.setup()
        graph = recovery_graph.briefing().compile(checkpointer=saver)
        marks = Marks(bench_dir / "marks.jsonl")
        me = os.getpid()
        seq = iter(range(10**9))

        def park(conn_id: str, released: bool = False) -> str:
            run_id = f"run_{next(seq):06d}_{secrets.token_hex(3)}"
            if released:  # resumed by its own worker: Revive's delivery releases it and executes nothing
                recovery_graph.revive().register_run(
                    run_id=run_id,
                    runtime="langgraph",
                    workflow_name="bench briefing",
                    runtime_ref={"thread_id": f"t_{run_id}", "graph": "bench-briefing", "resumed_by": "worker"},
                )
            else:
                revive_lg.register_run(
                    recovery_graph.revive(),
                    run_id=run_id,
                    thread_id=f"t_{run_id}",
                    graph="bench-briefing",
                    workflow_name="bench briefing",
                )
            out = graph.invoke({"run_id": run_id, "connection_id": conn_id}, revive_lg.run_config(f"t_{run_id}"))
            assert out["__interrupt__"], out
            return run_id

        def new_connection(name: str) -> str:
            services.connection_create(
                connection_id=name,
                provider="entra",
                owner_email=f"{name}@example.com",
                provider_subject=f"oid-{name}",
                provider_tenant="tid-bench",
            )
            (bench_dir / "revoked" / name).touch()
            return name

        def owner_callback(conn_id: str) -> float:
            case = RecoveryCase.objects.get(connection_id=conn_id, rejected_generation=1)
            (bench_dir / "revoked" / conn_id).unlink()  # the provider holds the owner's new grant
            t0 = time.time()
            with transaction.atomic():
                pipeline.recovery_reauthorized(case_id=case.pk, actor="owner:bench")
            return t0

        # -- 1. latency, one case at a time ---------------------------------------------------------
        total = args.warmup + args.cases
        print(f"bench: parking {total} runs, each on its own connection…", flush=True)
        t = time.perf_counter()
        with ThreadPoolExecutor(args.park_threads) as ex:
            runs = list(ex.map(lambda i: (c := new_connection(f"conn_lat_{i:04d}"), park(c)), range(total)))
        print(
            f"bench: parked in {time.perf_counter() - t:.1f}s; resuming one at a time "
            f"(celery -c {args.concurrency}, gunicorn {args.http_workers} workers)…",
            flush=True,
        )
        resumed_ms, finished_ms = [], []
        for i, (conn_id, run_id) in enumerate(runs):
            t0 = owner_callback(conn_id)

            def received():
                marks.poll()
                return marks.resumed_at(run_id, me)

            t1 = wait_until(received, f"{run_id} to receive its resume", 120)
            t2 = wait_until(lambda: (marks.poll(), marks.done_at(run_id))[1], f"{run_id} to finish", 120)
            if i >= args.warmup:
                resumed_ms.append((t1 - t0) * 1000)
                finished_ms.append((t2 - t0) * 1000)

        # -- 2. mass outage ---------------------------------------------------------------------------
        mass = None
        if args.mass:
            released = args.outage_runs == "released"
            conn_id = new_connection("conn_mass")
            print(f"bench: parking {args.mass} {args.outage_runs} runs on one connection…", flush=True)
            t = time.perf_counter()
            with ThreadPoolExecutor(args.park_threads) as ex:
                mass_runs = list(ex.map(lambda i: park(conn_id, released), range(args.mass)))
            case = RecoveryCase.objects.get(connection_id=conn_id)
            assert CaseRun.objects.filter(case=case).count() == args.mass
            print(f"bench: parked in {time.perf_counter() - t:.1f}s on {case.reference}; one reconnect…", flush=True)
            cpu = CpuSplit(database_url)
            worker_pids, http_pids = family(procs[1].pid), family(procs[0].pid)
            cpu_start = time.process_time(), cpu_seconds(worker_pids), cpu_seconds(http_pids)
            pg_start = {pid: cpu_seconds([pid]) for pid in cpu._backends()}
            sessions_start = sessions_opened(cpu, dbname)
            t0 = owner_callback(conn_id)
            pending = set(mass_runs)
            last, first = t0, None

            def all_received():
                nonlocal last, first
                marks.poll()
                for run_id in list(pending):
                    at = marks.resumed_at(run_id, me)
                    if at is not None:
                        pending.discard(run_id)
                        last = max(last, at)
                        first = min(first or at, at)
                return not pending

            def delivered() -> int:
                return AuditEvent.objects.filter(case_id=case.pk, action="run.resume_delivered").count()

            if released:
                wait_until(lambda: delivered() >= args.mass, "every delivery to be recorded", 1800, 0.05)
            else:
                wait_until(all_received, "every run to receive its resume", 1800, 0.05)
                wait_until(
                    lambda: (marks.poll(), all(marks.done_at(r) for r in mass_runs))[1],
                    "every run to finish",
                    1800,
                    0.05,
                )
                wait_until(
                    lambda: RecoveryCase.objects.get(pk=case.pk).state == "resumed", "the case to be resumed", 300, 0.1
                )
                wait_until(lambda: delivered() >= args.mass, "every delivery to be recorded", 300, 0.1)
            # Backends alive at the end: what they used since the start (or since they began); one that ended meanwhile
            # (the parking pool's) is left out, so this is a floor.
            pg_used = sum(cpu_seconds([pid]) - pg_start.get(pid, 0.0) for pid in cpu._backends())
            cpu_used = {
                "bench (this process)": time.process_time() - cpu_start[0],
                "celery worker": cpu_seconds(worker_pids) - cpu_start[1],
                "gunicorn": cpu_seconds(http_pids) - cpu_start[2],
                "postgres": pg_used,
            }
            time.sleep(1.0)  # PostgreSQL's cumulative statistics reach pg_stat_database within a second
            sessions = sessions_opened(cpu, dbname) - sessions_start
            cpu.close()
            stamps = sorted(
                e.timestamp()
                for e in AuditEvent.objects.filter(case_id=case.pk, action="run.resume_delivered").values_list(
                    "occurred_at", flat=True
                )
            )
            recorded_s = (stamps[-1] - t0, stamps[0] - t0)
            per_run = collections.Counter(
                AuditEvent.objects.filter(case_id=case.pk, action="run.resume_delivered").values_list(
                    "run_id", flat=True
                )
            )
            deliveries = sum(per_run.values())
            split = delivery_split(celery_log, set(mass_runs))
            if released:
                once = deliveries == args.mass and all(per_run[r] == 1 for r in mass_runs)
                mass = dict(first=recorded_s[1], received=None, done=None, case=None, once=once, deliveries=deliveries)
            else:
                all_received_s = last - t0
                all_done_s = max(marks.done_at(r) for r in mass_runs) - t0
                case_resumed_s = (
                    AuditEvent.objects.get(case_id=case.pk, action="case.resumed").occurred_at.timestamp() - t0
                )
                effects = collections.Counter((e["run_id"], e["effect"]) for e in recovery_graph.read("effects.jsonl"))
                resumes = collections.Counter(
                    r for r in mass_runs for m in marks.by_run[r] if m["what"] == "send_start" and m["pid"] != me
                )
                once = (
                    all(
                        effects[(r, "prepare")] == 1 and effects[(r, "send")] == 1 and resumes[r] == 1
                        for r in mass_runs
                    )
                    and deliveries == args.mass
                    and all(per_run[r] == 1 for r in mass_runs)
                )
                mass = dict(
                    first=first - t0,
                    received=all_received_s,
                    done=all_done_s,
                    case=case_resumed_s,
                    once=once,
                    deliveries=deliveries,
                )
            mass.update(recorded=recorded_s[0], cpu=cpu_used, split=split, sessions=sessions)

        print()
        n = len(resumed_ms)
        print(f"recovery latency over {n} cases (after {args.warmup} warm-up), real Celery worker on Redis:")
        print(f"{'':<44}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'mean ms':>9}")
        for label, values in (
            ("owner callback -> run receives its resume", resumed_ms),
            ("owner callback -> run finished", finished_ms),
        ):
            print(
                f"{label:<44}{pct(values, 50):>9.1f}{pct(values, 90):>9.1f}{pct(values, 99):>9.1f}"
                f"{max(values):>9.1f}{statistics.mean(values):>9.1f}"
            )
        p50, p99 = pct(resumed_ms, 50), pct(resumed_ms, 99)
        print(
            f"targets: p50 <= 100 ms [{'met' if p50 <= 100 else 'MISSED'}], p99 <= 300 ms [{'met' if p99 <= 300 else 'MISSED'}]"
        )
        if mass:
            print(f"\nmass outage: {args.mass} {args.outage_runs} runs parked on one connection, one reconnect:")
            if mass["received"] is not None:
                print(
                    f"  first run received its resume after {mass['first']:.2f}s; every run after "
                    f"{mass['received']:.2f}s ({args.mass / mass['received']:.0f} runs/s); every run finished after "
                    f"{mass['done']:.2f}s; case resumed after {mass['case']:.2f}s; every delivery recorded after "
                    f"{mass['recorded']:.2f}s"
                )
                print(
                    f"  each effect once and each run resumed once: {'yes' if mass['once'] else 'NO'} "
                    f"({mass['deliveries']} deliveries recorded)"
                )
            else:
                print(
                    f"  first delivery recorded after {mass['first']:.2f}s; every delivery after "
                    f"{mass['recorded']:.2f}s ({args.mass / mass['recorded']:.0f} runs/s)"
                )
                print(f"  each run delivered once: {'yes' if mass['once'] else 'NO'} ({mass['deliveries']} deliveries)")
            cpu_ms = {part: seconds / args.mass * 1000 for part, seconds in mass["cpu"].items()}
            print(
                "  CPU per run, ms: "
                + ", ".join(f"{part} {ms:.1f}" for part, ms in cpu_ms.items())
                + f"; total {sum(cpu_ms.values()):.1f} (the machine has {os.cpu_count()} cores: "
                f"{sum(mass['cpu'].values()) / (os.cpu_count() or 1):.1f}s of it at best)"
            )
            print(
                f"  database sessions opened during the outage: {mass['sessions']} (Celery reuses its connections: "
                f"-c {args.concurrency})"
            )
            if mass["split"]:
                runtime_ms, total_ms = mass["split"]
                print(
                    f"  a delivery in the worker, median wall ms: {total_ms:.1f}, of which the runtime "
                    f"(the graph's execution) {runtime_ms:.1f}"
                )
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return 0
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        try:
            import redis

            redis.Redis.from_url(REDIS).delete(queue)
        except Exception:
            pass
        if args.keep:
            print(f"bench: work directory kept: {bench_dir}")
        else:
            shutil.rmtree(bench_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
