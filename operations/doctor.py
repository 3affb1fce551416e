"""Revive's own doctor: the health of Revive's parts, in the readout shape of the Restate doctor (seed ``002_…``).

Read-only, like :func:`operations.restate.operator.restate_doctor`: every component
is ``{"status": "ok" | "degraded" | "unreachable", "latencyMs", ..., "error"}``
and a failing probe marks only its own component (both doctors run their probes
through :func:`operations.probes.probes_run`).

* ``database``: ``SELECT 1`` on a connection of the doctor's own (bounded
  connect and statement time, so a hung server cannot hold it), the vendor and
  server version, and the migrations not applied yet (``degraded`` when any).
* ``redis``: ``PING`` and the server version at ``REDIS_URL``. Without
  ``REDIS_URL`` Revive runs on the embedded default, where Celery runs tasks
  eagerly and needs no broker: ``ok``, with a ``note`` saying so.
* ``celeryWorkers``: the workers that answer a broadcast within the reply
  window, with the queues they consume: ``ok`` when one consumes Revive's
  queue, ``degraded`` when workers answer but none consumes it,
  ``unreachable`` when none answers or the broker cannot be reached. In eager
  mode (``task_always_eager``) no worker is needed: ``ok``, with a ``note``.
* ``runtimes``: one item per runtime this deployment uses (``REVIVE_RUNTIMES``;
  by default the configured ones, none on the embedded default), whose adapter
  in ``REVIVE_RUNTIME_ADAPTERS`` must import: LangGraph's checkpointer database answers; Temporal
  answers at ``TEMPORAL_ADDRESS`` and knows ``TEMPORAL_NAMESPACE``; Restate is
  summarised from :func:`restate_doctor` (one status per Restate component); the LangGraph Agent Server
  answers ``GET /ok`` at ``REVIVE_LANGGRAPH_SERVER_URL``.
  The group's status is the worst of its items.

Bounded time: each probe runs on a daemon thread of its own and every network
call in it has a timeout (``REVIVE_DOCTOR_PROBE_TIMEOUT``, default 3 s; the
worker broadcast waits ``REVIVE_DOCTOR_WORKER_REPLY_TIMEOUT``, default 5 s, as
workers busy with tasks answer late). The doctor stops waiting after the
longer of twice the probe timeout and the reply window plus the probe timeout,
plus a second, and marks whatever has not finished ``unreachable``. An abandoned probe ends on its own
timeouts; being a daemon thread, it never holds up the exit of a command.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings

from audit.redaction import redact_url

from .probes import DEGRADED, OK, UNREACHABLE, error_line, ms_since, probes_run, worst_status
from .runtime_probes import _probe_runtime, _runtime_item

MAX_LISTED_MIGRATIONS = 50


@dataclasses.dataclass(frozen=True)
class DoctorConfig:
    probe_timeout: float
    worker_reply_timeout: float

    @property
    def budget(self) -> float:
        """How long the doctor waits for all probes together: the broker connect plus the reply window fit."""
        return max(2 * self.probe_timeout, self.worker_reply_timeout + self.probe_timeout) + 1.0


def doctor_config(*, probe_timeout: float | None = None, worker_reply_timeout: float | None = None) -> DoctorConfig:
    timeout = probe_timeout if probe_timeout is not None else settings.REVIVE_DOCTOR_PROBE_TIMEOUT
    reply = worker_reply_timeout if worker_reply_timeout is not None else settings.REVIVE_DOCTOR_WORKER_REPLY_TIMEOUT
    return DoctorConfig(probe_timeout=max(0.1, float(timeout)), worker_reply_timeout=max(0.1, float(reply)))


# -- database -------------------------------------------------------------------------------------------------------


def _probe_database(config: DoctorConfig) -> dict[str, Any]:
    """``SELECT 1`` and the migration plan on a connection of the probe's own: the caller's transaction is untouched."""
    from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
    from django.db.migrations.executor import MigrationExecutor
    from django.db.utils import load_backend

    live = connections[DEFAULT_DB_ALIAS]
    settings_dict = copy.deepcopy(live.settings_dict)
    options = settings_dict.setdefault("OPTIONS", {})
    if live.vendor == "postgresql":
        options.pop("pool", None)  # one plain connection, not a second pool
        options["connect_timeout"] = max(1, math.ceil(config.probe_timeout))
        statement_timeout = f"-c statement_timeout={int(config.probe_timeout * 1000)}"
        options["options"] = f"{options.get('options', '')} {statement_timeout}".strip()
    elif live.vendor == "sqlite":
        options["timeout"] = config.probe_timeout
    readout: dict[str, Any] = {
        "status": OK,
        "latencyMs": None,
        "vendor": live.vendor,
        "version": None,
        "migrationsPending": None,
        "error": None,
    }
    probe = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, DEFAULT_DB_ALIAS)
    try:
        try:
            probe.ensure_connection()
            started = time.monotonic()
            with probe.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
            readout["latencyMs"] = ms_since(started)
            readout["version"] = ".".join(str(part) for part in probe.get_database_version())
        except DatabaseError as exc:
            return {**readout, "status": UNREACHABLE, "error": error_line(exc)}
        try:
            executor = MigrationExecutor(probe)
            plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        except Exception as exc:  # a broken migration graph, or the table unreadable
            return {**readout, "status": DEGRADED, "error": f"The migration state cannot be read: {error_line(exc)}"}
        pending = [f"{migration.app_label}.{migration.name}" for migration, backwards in plan if not backwards]
        readout["migrationsPending"] = pending[:MAX_LISTED_MIGRATIONS]
        if pending:
            readout["status"] = DEGRADED
            readout["error"] = f"{len(pending)} migration(s) not applied: run `manage.py migrate`."
        return readout
    finally:
        probe.close()


# -- redis ----------------------------------------------------------------------------------------------------------


def _celery_app():
    from revive_site.celery import app

    return app


def _probe_redis(config: DoctorConfig) -> dict[str, Any]:
    from redis import Redis
    from redis.backoff import NoBackoff
    from redis.exceptions import AuthenticationError, RedisError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.retry import Retry

    url = str(getattr(settings, "REDIS_URL", "") or "")
    readout: dict[str, Any] = {
        "status": OK,
        "latencyMs": None,
        "version": None,
        "target": None,
        "note": None,
        "error": None,
    }
    if not url:
        if _celery_app().conf.task_always_eager:
            return {
                **readout,
                "note": "REDIS_URL is not set: Celery runs tasks eagerly in the calling process "
                "(the embedded default), so no broker is needed.",
            }
        return {
            **readout,
            "status": DEGRADED,
            "error": "REDIS_URL is not set, yet Celery is not eager: no broker carries the tasks.",
        }
    readout["target"] = redact_url(url)
    client = Redis.from_url(
        url,
        socket_connect_timeout=config.probe_timeout,
        socket_timeout=config.probe_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    try:
        started = time.monotonic()
        client.ping()
        readout["latencyMs"] = ms_since(started)
        readout["version"] = str(client.info("server").get("redis_version") or "") or None
    except AuthenticationError as exc:  # it answered, and refused us
        return {**readout, "status": DEGRADED, "error": error_line(exc)}
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        return {**readout, "status": UNREACHABLE, "error": error_line(exc)}
    except RedisError as exc:
        return {**readout, "status": DEGRADED, "error": error_line(exc)}
    finally:
        client.close()
    return readout


# -- celery workers -------------------------------------------------------------------------------------------------


def _control_mailbox(app):
    """Celery's control mailbox, but publishing on the connection it is given.

    ``app.control`` publishes through the app's shared producer pool, which
    would open the app's own broker connection (unbounded, and shared with task
    publishing) from the doctor's thread. A mailbox of its own also has a reply
    queue of its own, so two doctors at once never take each other's replies.
    """
    from kombu.pidbox import Mailbox

    conf = app.conf
    return Mailbox(
        conf.control_exchange,
        type="fanout",
        accept=conf.accept_content,
        serializer=conf.task_serializer,
        queue_ttl=conf.control_queue_ttl,
        reply_queue_ttl=conf.control_queue_ttl,
        queue_expires=conf.control_queue_expires,
        reply_queue_expires=conf.control_queue_expires,
        queue_exclusive=conf.control_queue_exclusive,
        queue_durable=conf.control_queue_durable,
    )


def _consumes(answers: list, queue: str) -> bool:
    return any(
        isinstance(answer, dict)
        and any(isinstance(q, dict) and q.get("name") == queue for queues in answer.values() for q in queues or [])
        for answer in answers
    )


class _OwnQueueAnswered(Exception):
    """Raised from the reply callback to stop waiting: a worker of Revive's queue has answered."""


def _worker_answers(node, *, window: float, queue: str) -> list:
    """Broadcast ``active_queues`` and gather the answers until a worker of ``queue`` has answered.

    A worker busy with a task answers only between tasks, so the window is long (5 s by default); a healthy
    deployment still answers in well under a second, because the wait ends with the first answer from a worker
    consuming Revive's queue, not after the whole window. Workers of other queues on the same broker may answer
    first: they are listed, and do not end the wait. (The listing is therefore of the workers that answered by
    then, not necessarily all of them.)
    """
    answers: list = []

    def on_answer(body) -> None:
        answers.append(body)
        if _consumes([body], queue):
            raise _OwnQueueAnswered()

    channel = node.connection.default_channel
    try:
        node._broadcast("active_queues", arguments={}, reply=True, timeout=window, callback=on_answer, channel=channel)
    except _OwnQueueAnswered:
        pass
    return answers


def _probe_celery_workers(config: DoctorConfig) -> dict[str, Any]:
    """Workers seen now: those that answer an ``active_queues`` broadcast within the reply window."""
    app = _celery_app()
    queue = str(app.conf.task_default_queue)
    readout: dict[str, Any] = {
        "status": OK,
        "latencyMs": None,
        "eager": bool(app.conf.task_always_eager),
        "queue": queue,
        "items": [],
        "note": None,
        "error": None,
    }
    if readout["eager"]:
        return {**readout, "note": "Celery runs tasks eagerly in the calling process: no worker is needed."}
    transport_options = {
        **(app.conf.broker_transport_options or {}),
        "socket_timeout": config.probe_timeout,
        "socket_connect_timeout": config.probe_timeout,
    }
    started = time.monotonic()
    try:
        with app.connection_for_write(
            connect_timeout=config.probe_timeout, transport_options=transport_options
        ) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
            answers = _worker_answers(
                _control_mailbox(app)(connection), window=config.worker_reply_timeout, queue=queue
            )
    except Exception as exc:  # kombu raises its own OperationalError, socket errors, or the transport's
        return {**readout, "status": UNREACHABLE, "error": f"The broker cannot be reached: {error_line(exc)}"}
    readout["latencyMs"] = ms_since(started)
    replies: dict[str, Any] = {}
    for answer in answers:  # one {worker name: its queues} per worker that answered
        if isinstance(answer, dict):
            replies.update(answer)
    items = [
        {"name": str(name), "queues": sorted({str(q.get("name")) for q in queues or [] if isinstance(q, dict)})}
        for name, queues in replies.items()
    ]
    readout["items"] = sorted(items, key=lambda item: item["name"])
    if any(queue in item["queues"] for item in items):
        return readout
    if items:
        return {
            **readout,
            "status": DEGRADED,
            "error": f"{len(items)} worker(s) answered, none consumes the queue {queue!r}.",
        }
    return {
        **readout,
        "status": UNREACHABLE,
        "error": f"no worker answered within {config.worker_reply_timeout:g} s (REVIVE_DOCTOR_WORKER_REPLY_TIMEOUT).",
    }


# -- runtimes -------------------------------------------------------------------------------------------------------


def _unfinished(name: str, error: str) -> dict[str, Any]:
    empty: dict[str, dict[str, Any]] = {
        "database": {"latencyMs": None, "vendor": None, "version": None, "migrationsPending": None},
        "redis": {"latencyMs": None, "version": None, "target": None, "note": None},
        "celeryWorkers": {"latencyMs": None, "eager": False, "queue": "", "items": [], "note": None},
    }
    if name.startswith("runtime:"):
        return {**_runtime_item(name.removeprefix("runtime:")), "status": UNREACHABLE, "error": error}
    return {"status": UNREACHABLE, **empty[name], "error": error}


def revive_doctor(*, probe_timeout: float | None = None, worker_reply_timeout: float | None = None) -> dict[str, Any]:
    """Read the health of Revive's parts, changing nothing, within :attr:`DoctorConfig.budget` seconds.

    ``probe_timeout`` and ``worker_reply_timeout`` override ``REVIVE_DOCTOR_PROBE_TIMEOUT`` and
    ``REVIVE_DOCTOR_WORKER_REPLY_TIMEOUT`` (the command's ``--timeout`` and ``--worker-timeout``).
    """
    config = doctor_config(probe_timeout=probe_timeout, worker_reply_timeout=worker_reply_timeout)
    configured: dict[str, str] = dict(getattr(settings, "REVIVE_RUNTIME_ADAPTERS", {}) or {})
    adapters = {name: configured.get(name) for name in settings.REVIVE_RUNTIMES}
    probes: dict[str, Callable[[], dict[str, Any]]] = {
        "database": lambda: _probe_database(config),
        "redis": lambda: _probe_redis(config),
        "celeryWorkers": lambda: _probe_celery_workers(config),
    }
    for name, path in adapters.items():
        probes[f"runtime:{name}"] = functools.partial(_probe_runtime, name, path, config)

    results = probes_run(probes, budget=config.budget, unfinished=_unfinished, doctor="revive-doctor")
    items = [results[f"runtime:{name}"] for name in adapters]
    not_ok = [f"{item['name']}: {item['status']}" for item in items if item["status"] != OK]
    runtimes = {
        "status": worst_status(item["status"] for item in items),
        "items": items,
        "error": "; ".join(not_ok) or None,
    }
    return {
        "database": results["database"],
        "redis": results["redis"],
        "celeryWorkers": results["celeryWorkers"],
        "runtimes": runtimes,
    }


# -- one line per part, for the command's table and the admin panel ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class DoctorRow:
    part: str
    status: str
    latency_ms: int | None
    detail: str
    error: str | None


def doctor_rows(readout: dict[str, Any]) -> list[DoctorRow]:
    """The readout as one row per part (each runtime its own row): what a person reads."""
    database, redis, workers = readout["database"], readout["redis"], readout["celeryWorkers"]
    pending = database.get("migrationsPending")
    rows = [
        DoctorRow(
            "database",
            database["status"],
            database["latencyMs"],
            " ".join(filter(None, [database.get("vendor"), database.get("version")]))
            + (
                ""
                if pending is None
                else f"; {len(pending)} migration(s) pending"
                if pending
                else "; no migration pending"
            ),
            database["error"],
        ),
        DoctorRow(
            "redis",
            redis["status"],
            redis["latencyMs"],
            redis.get("note")
            or " at ".join(
                filter(None, [f"redis {redis['version']}" if redis.get("version") else None, redis.get("target")])
            ),
            redis["error"],
        ),
        DoctorRow(
            "celeryWorkers",
            workers["status"],
            workers["latencyMs"],
            workers.get("note")
            or (
                f"queue {workers['queue']!r}; "
                + (
                    ", ".join(f"{w['name']} [{', '.join(w['queues'])}]" for w in workers["items"])
                    or "no worker answered"
                )
            ),
            workers["error"],
        ),
    ]
    for item in readout["runtimes"]["items"]:
        detail = [item.get("target"), f"version {item['version']}" if item.get("version") else None]
        if item.get("components"):
            detail.append(", ".join(f"{name} {status}" for name, status in item["components"].items()))
        text = "; ".join(filter(None, detail))
        if item.get("note"):
            text = f"{text} ({item['note']})" if text else item["note"]
        rows.append(DoctorRow(f"runtime {item['name']}", item["status"], item["latencyMs"], text, item["error"]))
    return rows


def doctor_not_ok(readout: dict[str, Any]) -> list[DoctorRow]:
    return [row for row in doctor_rows(readout) if row.status != OK]
