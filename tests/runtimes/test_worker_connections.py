"""A real Celery worker keeps its database connection across tasks (CELERY_DB_REUSE_MAX + Django's own rules)."""

from __future__ import annotations

import time

import pytest
from django.db import connection

from cases.tasks import reap_stale_actions
from tests.runtimes.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def sessions_opened() -> int:
    """Sessions ever opened on this test database (PostgreSQL's cumulative statistics, flushed within a second)."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return cur.fetchone()[0]


def test_a_worker_runs_many_tasks_on_the_connections_it_opened_once(celery_worker):
    celery_worker.ensure(DATABASE_CONN_MAX_AGE="60")  # production's connection lifetime (the suite runs it with 0)

    def succeeded() -> int:
        log = celery_worker.log_path.read_text(errors="replace")
        return sum(
            1 for line in log.splitlines() if "Task cases.reap_stale_actions[" in line and " succeeded in " in line
        )

    reap_stale_actions.delay()  # each pool process opens its connection (at most one each: -c 2)
    reap_stale_actions.delay()
    wait_for(lambda: succeeded() >= 2, "two reaper tasks to finish")
    time.sleep(1.5)  # let the statistics of the sessions opened so far reach pg_stat_database
    before, done = sessions_opened(), succeeded()
    for _ in range(12):
        reap_stale_actions.delay()
    wait_for(lambda: succeeded() >= done + 12, "twelve more reaper tasks to finish")
    time.sleep(1.5)
    opened = sessions_opened() - before
    # Without reuse every task connects anew (12 sessions); with it, none (or one, if a pool process was replaced).
    assert opened <= 1, f"{opened} database sessions opened for 12 tasks"
