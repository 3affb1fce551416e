"""The Celery app. Without REDIS_URL it runs tasks eagerly (embedded default).

With Redis, one command starts a worker that also runs the beat schedule (``CELERY_BEAT_SCHEDULE``:
reap stale actions, expire reconnect links, sweep lost resume work)::

    DATABASE_URL=postgres://... REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/celery -A revive_site worker -B -l INFO

(on more than one machine run beat once, separately: ``celery -A revive_site beat``). It consumes the queue
``REVIVE_CELERY_QUEUE`` (default ``revive``).
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "revive_site.settings")

app = Celery("revive")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# -- what every task run tells logs, metrics and traces ----------------------------------------------------------
from celery import signals  # noqa: E402

_WORK_CONTEXT_TOKENS: dict[str, object] = {}


@signals.task_prerun.connect
def _bind_work_context(task_id=None, task=None, args=None, kwargs=None, **_):
    """A task's log lines name its run and case (tasks take ids: ``run_id``, ``case_id``)."""
    import inspect

    from audit.context import work_context_bind

    try:
        kwargs = inspect.signature(task.run).bind_partial(*(args or ()), **(kwargs or {})).arguments
    except (TypeError, ValueError):
        kwargs = kwargs or {}
    _WORK_CONTEXT_TOKENS[task_id] = work_context_bind(
        run_id=kwargs.get("run_id"), case_id=kwargs.get("case_id"), request_id=f"task_{task_id}" if task_id else None
    )


@signals.task_postrun.connect
def _reset_work_context(task_id=None, **_):
    from audit.context import work_context_reset

    token = _WORK_CONTEXT_TOKENS.pop(task_id, None)
    if token is not None:
        try:
            work_context_reset(token)
        except ValueError:  # bound in another context (should not happen): leave it to the next task's bind
            pass


@signals.task_failure.connect
def _count_failure(sender=None, **_):
    from cases.metrics import celery_task_failed

    celery_task_failed(getattr(sender, "name", "unknown"))


@signals.worker_process_init.connect
def _trace_worker_process(**_):
    """Each prefork child exports its own spans (the exporter's thread does not survive the fork)."""
    from django.conf import settings

    if settings.OTEL_EXPORTER_OTLP_ENDPOINT:
        from revive_site.tracing import tracing_start

        tracing_start(celery=True)


@signals.task_prerun.connect
@signals.task_postrun.connect
def reuse_database_connection(sender=None, **kwargs) -> None:
    """Around each task, do what Django does around each request: keep the connection unless it is too old
    (``CONN_MAX_AGE``), broken, or left in a transaction; the first query of the next task health-checks it
    (``CONN_HEALTH_CHECKS``). With ``CELERY_DB_REUSE_MAX`` set, Celery's own fix-up no longer closes it per task."""
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()
