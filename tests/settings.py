"""Test settings: PostgreSQL and Redis on this machine, one fresh database per test run."""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/revive")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
os.environ.setdefault("SECRET_KEY", "revive-tests-only-not-a-secret")

from revive_site.settings import *  # noqa: E402,F403
from revive_site.settings import DATABASES  # noqa: E402

# Each run (and each concurrent run on the machine) gets its own database, created and dropped by pytest-django.
DATABASES["default"]["TEST"] = {"NAME": f"test_revive_{os.getpid()}"}
DATABASES["default"]["CONN_MAX_AGE"] = 0
CELERY_TASK_ALWAYS_EAGER = True
# Tests that start a real Celery worker (tests/runtimes) consume this session's own queue on the shared Redis.
CELERY_TASK_DEFAULT_QUEUE = f"revive-test-{os.getpid()}"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# The suite runs all three runtimes (tests/runtimes, tests/restate): the doctor probes each.
REVIVE_RUNTIMES = ["langgraph", "temporal", "restate"]
