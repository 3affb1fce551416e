"""The doctor fits the deployment: the runtimes it uses, time for busy workers, exit 0 on the embedded default."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from operations.doctor import revive_doctor
from revive_site.celery import app as celery_app
from tests.operable.conftest import base_env
from tests.runtimes.conftest import REPO_ROOT, spawn, stop_process, wait_for

PRIVATE_REDIS = "redis://127.0.0.1:6379/12"  # no other suite's workers answer broadcasts here


def _settings_value(name: str, **env: str) -> object:
    environment = base_env("", REPO_ROOT / "var", **env)
    for key in ("DATABASE_URL", "REDIS_URL"):
        if not env.get(key):
            environment.pop(key, None)
    code = f"import json, django; django.setup(); from django.conf import settings; print(json.dumps(settings.{name}))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, []),
        ({"TEMPORAL_ADDRESS": "temporal.internal:7233"}, ["temporal"]),
        (
            {"RESTATE_ADMIN_URL": "http://restate:9070", "REVIVE_LANGGRAPH_CHECKPOINT_URL": "postgresql://db/lg"},
            ["langgraph", "restate"],
        ),
        ({"REVIVE_RUNTIMES": "restate", "TEMPORAL_ADDRESS": "temporal.internal:7233"}, ["restate"]),
    ],
    ids=["embedded-default", "temporal-configured", "two-configured", "explicit-list-wins"],
)
def test_the_runtimes_probed_are_the_configured_ones(env, expected):
    assert _settings_value("REVIVE_RUNTIMES", **env) == expected


def test_the_embedded_default_doctor_exits_zero(tmp_path):
    """The README's commands on a fresh checkout: migrate, then the doctor -- every part ok, no runtime probed."""
    env = base_env("", tmp_path / "var")
    env.pop("DATABASE_URL"), env.pop("REDIS_URL")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO_ROOT, env=env, check=True, timeout=300)
    done = subprocess.run(
        [sys.executable, "manage.py", "revive_doctor"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "no runtime configured" in done.stdout
    rows = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()[3:] if line and line[0] != " "}
    assert rows == {"database": "ok", "redis": "ok", "celeryWorkers": "ok"}, done.stdout


@pytest.fixture
def busy_worker(tmp_path, settings):
    """A real Celery worker (one process, solo pool) on a private Redis database and queue, free or busy."""
    queue = f"revive-doctor-{time.monotonic_ns()}"
    env = base_env("", tmp_path / "var", REDIS_URL=PRIVATE_REDIS, REVIVE_CELERY_QUEUE=queue)
    env.pop("DATABASE_URL")
    log = tmp_path / "celery.log"
    process = spawn(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "revive_site",
            "worker",
            "-P",
            "solo",
            "-l",
            "INFO",
            "-I",
            "tests.operable.tasks",
            "-n",
            f"{queue}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env=env,
        log_path=log,
    )
    try:
        wait_for(
            lambda: " ready." in log.read_text(errors="replace") or process.poll() is not None,
            "the Celery worker to be ready",
            timeout=120,
        )
        assert process.poll() is None, log.read_text()
        settings.REDIS_URL = PRIVATE_REDIS
        previous = (celery_app.conf.task_always_eager, celery_app.conf.broker_url, celery_app.conf.task_default_queue)
        celery_app.conf.update(task_always_eager=False, broker_url=PRIVATE_REDIS, task_default_queue=queue)
        try:
            yield queue, log
        finally:
            celery_app.conf.update(
                task_always_eager=previous[0], broker_url=previous[1], task_default_queue=previous[2]
            )
    finally:
        stop_process(process)


def _keep_busy(queue: str, seconds: float) -> None:
    """Published on a connection of its own to the private Redis: the app's producer pool may already be bound to
    the broker an earlier test published on."""
    with celery_app.connection_for_write(PRIVATE_REDIS) as connection:
        celery_app.send_task("tests.operable.busy", args=[seconds], queue=queue, connection=connection)


@pytest.mark.django_db
def test_a_busy_worker_is_waited_for_and_a_short_window_says_so(busy_worker, settings):
    queue, log = busy_worker
    settings.REVIVE_RUNTIMES = []
    idle = revive_doctor(probe_timeout=2.0, worker_reply_timeout=60.0)[
        "celeryWorkers"
    ]  # the first answer ends the wait
    assert idle["status"] == "ok" and [queue in item["queues"] for item in idle["items"]] == [True], idle

    _keep_busy(queue, 20.0)  # busy well past the short window
    wait_for(
        lambda: "tests.operable.busy[" in log.read_text(errors="replace"),  # "Task …[id] received", not the banner
        "the worker to take the busy task",
        timeout=120,
    )
    short = revive_doctor(probe_timeout=1.0, worker_reply_timeout=1.0)["celeryWorkers"]
    assert short["status"] == "unreachable"
    assert short["error"] == "no worker answered within 1 s (REVIVE_DOCTOR_WORKER_REPLY_TIMEOUT).", short

    _keep_busy(queue, 3.0)  # still busy when the next doctor starts
    patient = revive_doctor(probe_timeout=2.0, worker_reply_timeout=120.0)["celeryWorkers"]
    assert patient["status"] == "ok", patient
