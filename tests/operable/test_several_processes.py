"""Several processes on one database: 2 gunicorn processes, 2 Celery workers (one of them running beat), one
PostgreSQL, one Redis -- and 200 runs driven through failure -> reconnect -> resume from several threads.

The runs are the recovery benchmark's LangGraph graph (``bench/recovery_graph.py``): ``prepare`` commits an
effect, ``send`` needs a credential that is revoked per connection, so each run parks at ``send`` with
``interrupt``. This process parks the runs (8 threads, each talking to one of the two web processes), then plays
the owners' callbacks (8 threads: the generation advances and the resume is enqueued, as the hosted reconnect
does); whichever Celery worker takes a resume continues the run on its own thread through the other web process.
Every effect and every resume is written to files that are never de-duplicated, so a run resumed twice, or an
action executed twice, would show. ``/metrics`` (one ``PROMETHEUS_MULTIPROC_DIR`` for all four processes) must
count the 200 deliveries the Celery workers made.
"""

from __future__ import annotations

import collections
import hashlib
import os
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from audit.models import AuditEvent
from cases import pipeline, services
from cases.models import ApiKey, RecoveryCase
from revive_site.celery import app as celery_app
from tests.operable.conftest import base_env
from tests.operable.test_metrics import value
from tests.restate.conftest import free_port
from tests.runtimes.conftest import spawn, stop_process, wait_for

RUNS, CONNECTIONS, THREADS = 200, 50, 8
TOKEN = "metrics-" + secrets.token_urlsafe(12)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def topology(test_database_url, tmp_path, settings):
    """The processes, started on this test's database and this session's Celery queue."""
    bench_dir = tmp_path / "bench"
    (bench_dir / "revoked").mkdir(parents=True)
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    raw_key = f"rvk_multi_{secrets.token_urlsafe(24)}"
    ApiKey.objects.create(
        name="several-processes", prefix="multi", key_hash=hashlib.sha256(raw_key.encode()).hexdigest()
    )
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    # A queue of its own: the session's Celery worker (tests/runtimes) consumes the session queue with other settings.
    queue = f"revive-multi-{os.getpid()}-{secrets.token_hex(4)}"
    common = dict(
        DJANGO_SETTINGS_MODULE="bench.recovery_settings",
        REDIS_URL=settings.REDIS_URL,
        REVIVE_CELERY_QUEUE=queue,
        BENCH_DIR=str(bench_dir),
        REVIVE_API_KEY=raw_key,
        REVIVE_RESUME_APPROVAL="never",
        PROMETHEUS_MULTIPROC_DIR=str(multiproc),
        REVIVE_METRICS_TOKEN=TOKEN,
        LOG_LEVEL="WARNING",
    )
    processes: list[tuple[str, subprocess.Popen, Path]] = []

    def start(name: str, args: list[str], **extra: str) -> None:
        env = base_env(test_database_url, tmp_path / f"var-{name}", **common, **extra)
        env["DJANGO_SETTINGS_MODULE"] = "bench.recovery_settings"
        log = tmp_path / f"{name}.log"
        processes.append((name, spawn(args, env=env, log_path=log), log))

    try:
        for n, port in enumerate(ports):
            start(f"web{n}", [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1"])
        for n in range(2):
            beat = ["-B", "-s", str(tmp_path / "celerybeat-schedule")] if n == 0 else []
            start(
                f"celery{n}",
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
                    "2",
                    "-O",
                    "fair",
                    "-n",
                    f"multi-{n}-{os.getpid()}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    *beat,
                ],
                REVIVE_URL=urls[1 - n],
            )  # each worker resumes through the other web process
        for name, process, log in processes:

            def up(name=name, process=process, log=log) -> bool:
                assert process.poll() is None, f"{name} exited:\n{log.read_text(errors='replace')[-3000:]}"
                if name.startswith("celery"):
                    return " ready." in log.read_text(errors="replace")
                try:
                    return httpx.get(urls[int(name[-1])] + "/api/v1/docs", timeout=5).status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(up, f"{name} to be ready", timeout=180, interval=0.2)
        previous = (celery_app.conf.task_always_eager, celery_app.conf.task_default_queue)
        # this process publishes on the private queue; the two workers consume
        celery_app.conf.update(task_always_eager=False, task_default_queue=queue)
        settings.CELERY_TASK_DEFAULT_QUEUE = queue
        os.environ["BENCH_DIR"] = str(bench_dir)
        try:
            yield {"urls": urls, "key": raw_key, "bench_dir": bench_dir, "processes": processes}
        finally:
            celery_app.conf.update(task_always_eager=previous[0], task_default_queue=previous[1])
            os.environ.pop("BENCH_DIR", None)
    finally:
        for _, process, _ in processes:
            stop_process(process)


def test_200_runs_resume_once_each_across_two_web_and_two_worker_processes(topology, test_database_url):
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool

    from bench import recovery_graph
    from revive_sdk import Revive
    from revive_sdk import langgraph as revive_lg

    urls, bench_dir = topology["urls"], topology["bench_dir"]
    connections = [f"conn_multi_{n:02d}" for n in range(CONNECTIONS)]
    for conn in connections:
        services.connection_create(
            connection_id=conn,
            provider="entra",
            owner_email=f"{conn}@example.com",
            provider_subject=f"oid-{conn}",
            provider_tenant="tid-multi",
        )
        (bench_dir / "revoked" / conn).touch()

    pool = ConnectionPool(
        test_database_url,
        min_size=1,
        max_size=THREADS + 1,
        open=True,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
    )
    try:
        saver = PostgresSaver(pool)
        saver.setup()
        graph = recovery_graph.briefing().compile(checkpointer=saver)

        def park(i: int) -> str:
            recovery_graph._local.client = Revive(urls[i % 2], topology["key"])  # this thread's web process
            run_id = f"run_multi_{i:03d}"
            revive_lg.register_run(
                recovery_graph.revive(),
                run_id=run_id,
                thread_id=f"t_{run_id}",
                graph="bench-briefing",
                workflow_name="several processes",
            )
            out = graph.invoke(
                {"run_id": run_id, "connection_id": connections[i % CONNECTIONS]}, revive_lg.run_config(f"t_{run_id}")
            )
            assert out["__interrupt__"], out
            return run_id

        with ThreadPoolExecutor(THREADS) as threads:
            runs = list(threads.map(park, range(RUNS)))
    finally:
        pool.close()
    cases = {conn: RecoveryCase.objects.get(connection_id=conn, rejected_generation=1) for conn in connections}
    assert all(case.state in ("opened", "awaiting_owner") for case in cases.values())

    def owner_callback(conn: str) -> None:
        from django.db import connection as db

        try:
            (bench_dir / "revoked" / conn).unlink()  # the provider holds the owner's new grant
            pipeline.recovery_reauthorized(case_id=cases[conn].pk, actor="owner:multi")  # owed steps go on commit
        finally:
            db.close()

    with ThreadPoolExecutor(THREADS) as threads:
        list(threads.map(owner_callback, connections))

    def every_run_done() -> bool:
        return {m["run_id"] for m in recovery_graph.read("marks.jsonl") if m["what"] == "done"} >= set(runs)

    wait_for(every_run_done, "every run to finish after its resume", timeout=600, interval=0.5)
    wait_for(
        lambda: RecoveryCase.objects.filter(pk__in=[c.pk for c in cases.values()], state="resumed").count()
        == CONNECTIONS,
        "every case to be resumed",
        timeout=300,
        interval=0.5,
    )

    me = os.getpid()
    effects = collections.Counter((e["run_id"], e["effect"]) for e in recovery_graph.read("effects.jsonl"))
    marks = recovery_graph.read("marks.jsonl")
    resumes = collections.Counter(m["run_id"] for m in marks if m["what"] == "send_start" and m["pid"] != me)
    done = collections.Counter(m["run_id"] for m in marks if m["what"] == "done")
    deliveries = collections.Counter(
        AuditEvent.objects.filter(action="run.resume_delivered").values_list("run_id", flat=True)
    )
    assert [r for r in runs if effects[(r, "prepare")] != 1] == [], "a prepare effect ran twice (or never)"
    assert [r for r in runs if effects[(r, "send")] != 1] == [], "a send effect ran twice (or never)"
    assert sum(effects.values()) == 2 * RUNS, "duplicate effects"
    assert [r for r in runs if resumes[r] != 1 or done[r] != 1 or deliveries[r] != 1] == []

    # the work was spread: both web processes served the runs, both Celery workers delivered resumes
    workers = {name: process for name, process, _ in topology["processes"] if name.startswith("celery")}
    pids = {
        name: {
            int(p)
            for p in subprocess.run(
                ["ps", "-o", "pid=", "-g", str(process.pid)], capture_output=True, text=True
            ).stdout.split()
        }
        for name, process in workers.items()
    }
    by_worker = {
        name: sum(1 for m in marks if m["what"] == "send_start" and m["pid"] in group) for name, group in pids.items()
    }
    assert all(n > 0 for n in by_worker.values()) and sum(by_worker.values()) == RUNS, by_worker

    metrics = httpx.get(f"{urls[0]}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).text
    assert value(metrics, "revive_resumes_total", outcome="delivered") == RUNS
    assert value(metrics, "revive_protected_actions_total", decision="execute") >= 2 * RUNS
    assert value(metrics, "revive_cases", state="resumed", failure_class="dead_grant") == CONNECTIONS
