"""Prometheus metrics of the recovery path.

Two kinds, so that a protected action never pays a database round trip for them:

* counted where they happen, in process memory (``prometheus_client``; with
  ``PROMETHEUS_MULTIPROC_DIR`` set, in memory-mapped files that ``/metrics``
  sums over every gunicorn and Celery process of the machine): protected-action
  decisions, begin/commit latency, resume deliveries, Celery task failures;
* read from the database when ``/metrics`` is scraped: ``operations.metrics.CasesCollector``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram

PROTECTED_ACTIONS = Counter(
    "revive_protected_actions", "Protected-action begins, by the decision Revive answered.", ["decision"]
)
ACTION_CALL_SECONDS = Histogram(
    "revive_action_call_seconds",
    "Time Revive spent answering a protected action's begin or commit (server side).",
    ["call"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0),
)
RESUMES = Counter(
    "revive_resumes", "Resume deliveries that finished, by outcome (delivered, already, failed, ...).", ["outcome"]
)
CELERY_TASK_FAILURES = Counter(
    "revive_celery_task_failures", "Celery tasks that raised (after their own retries), by task name.", ["task"]
)


@contextmanager
def action_call_timed(call: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        ACTION_CALL_SECONDS.labels(call=call).observe(time.perf_counter() - started)


def protected_action_decided(decision: str) -> None:
    PROTECTED_ACTIONS.labels(decision=decision).inc()


def resume_finished(outcome: str) -> None:
    RESUMES.labels(outcome=outcome).inc()


def celery_task_failed(task: str) -> None:
    CELERY_TASK_FAILURES.labels(task=task).inc()
