"""The Celery worker survives a Redis restart, and ``scripts/serve`` brings back a worker that was killed.

Real processes only: a private ``redis-server`` and a private PostgreSQL cluster on free ports (the shared ones
are never restarted), the worker as the README starts it, and ``scripts/serve`` (supervisord) as a user runs it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from celery import Celery

from lab.processes import spawn, stop
from tests.runtimes.conftest import wait_for

from .servers import PrivatePostgres, PrivateRedis, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres().init().start()
    yield pg
    pg.stop()


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path / "redis").start()
    yield redis
    redis.stop()


@pytest.fixture
def revive_env(private_postgres, private_redis, tmp_path) -> dict[str, str]:
    database = private_postgres.create_database(f"revive_{uuid.uuid4().hex[:8]}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_SETTINGS_MODULE", "REVIVE_"))}
    env.update(
        DATABASE_URL=database,
        REDIS_URL=f"{private_redis.url}/0",
        REVIVE_CELERY_QUEUE="revive-faults",
        REVIVE_VAR_DIR=str(tmp_path / "var"),
        SECRET_KEY="revive-tests-only-not-a-secret",
        PYTHONUNBUFFERED="1",
    )
    return env


def publish(env: dict[str, str], task: str = "cases.reap_stale_actions", countdown: float | None = None) -> str:
    """Publish a task by name, as Revive's web process does, to the worker's queue."""
    app = Celery(broker=env["REDIS_URL"])
    try:
        return app.send_task(task, queue=env["REVIVE_CELERY_QUEUE"], countdown=countdown).id
    finally:
        app.close()


def processed(log: Path, task_id: str) -> bool:
    return bool(re.search(rf"\[{task_id}\] succeeded", log.read_text(errors="replace")))


def test_a_worker_started_as_the_readme_says_outlives_redis_restarts(revive_env, private_redis, tmp_path):
    env = revive_env
    assert subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env).returncode == 0
    log = tmp_path / "worker.log"
    with open(log, "ab") as out:
        worker = spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "revive_site",
                "worker",
                "-B",
                "-l",
                "INFO",
                "-c",
                "1",
                "-s",
                str(tmp_path / "beat-schedule"),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: " ready." in log.read_text(errors="replace"), "the worker to be ready")
        first = publish(env)
        wait_for(lambda: processed(log, first), "a task before the restarts")

        for keep_data in (True, False):  # graceful (data kept), then with data loss
            # The worker holds a task unacknowledged while it waits for its countdown (as every retry with backoff
            # does): closing the broken connection restores it, which ended Celery 5.7's worker (broker.py).
            held = publish(env, countdown=600)
            wait_for(
                lambda held=held: re.search(rf"\[{held}\] received", log.read_text(errors="replace")),
                "the worker to hold the countdown task",
            )
            private_redis.restart(keep_data=keep_data, down_for=3.0)
            task_id = publish(env)
            wait_for(lambda task_id=task_id: processed(log, task_id), f"a task after a restart (keep_data={keep_data})")
            assert worker.poll() is None, log.read_text(errors="replace")[-3000:]

        text = log.read_text(errors="replace")
        assert "Unrecoverable error" not in text and "Connection to broker lost" in text
    finally:
        stop(worker, grace=30)


def test_scripts_serve_restarts_a_killed_worker_and_it_processes_tasks(revive_env, tmp_path):
    env = {
        **revive_env,
        "REVIVE_SERVE_BIND": f"127.0.0.1:{free_port()}",
        "REVIVE_SERVE_CONCURRENCY": "1",
        "REVIVE_SERVE_WEB_WORKERS": "1",
    }
    serve_dir = Path(env["REVIVE_VAR_DIR"]) / "serve"
    worker_log = serve_dir / "worker.log"
    with open(tmp_path / "serve.out", "ab") as out:
        serve = spawn(["scripts/serve"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def ctl(*args: str) -> str:
        return subprocess.run(
            ["scripts/serve", "ctl", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        ).stdout.strip()

    def running_pid(program: str) -> int | None:
        status = ctl("status", program)
        match = re.search(r"RUNNING\s+pid (\d+)", status)
        return int(match.group(1)) if match else None

    try:

        def web_up() -> bool:
            try:
                return httpx.get(f"http://{env['REVIVE_SERVE_BIND']}/api/v1/docs", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(web_up, "the web process to answer")
        wait_for(lambda: worker_log.exists() and " ready." in worker_log.read_text(errors="replace"), "the worker")
        assert running_pid("beat")
        old = running_pid("worker")
        assert old

        os.killpg(os.getpgid(old), signal.SIGKILL)  # the whole worker: main process and pool
        new = wait_for(lambda: (pid := running_pid("worker")) and pid != old and pid, "supervisord to restart it")
        wait_for(lambda: worker_log.read_text(errors="replace").count(" ready.") >= 2, "the new worker to be ready")
        task_id = publish(env)
        wait_for(lambda: processed(worker_log, task_id), "the restarted worker to process a task")
        assert running_pid("worker") == new and web_up()
        programs = [running_pid(name) for name in ("web", "worker", "beat")]
    finally:
        stop(serve, grace=60)
    # Stopping scripts/serve stops what it supervises.
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in programs), "the programs to stop", timeout=60)
