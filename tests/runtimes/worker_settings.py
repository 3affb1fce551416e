"""Settings of the Celery worker the runtime tests start: Revive's own, plus the test graphs and reconcilers.

The test passes ``DATABASE_URL`` (pytest-django's test database), ``REDIS_URL``,
``REVIVE_CELERY_QUEUE`` and the runtimes' addresses through the environment.
"""

import os

from revive_site.settings import *  # noqa: F403
from tests.runtimes.support.config import GRAPHS, RECONCILERS

REVIVE_LANGGRAPH_GRAPHS = GRAPHS
REVIVE_RECONCILERS = RECONCILERS
REVIVE_RESUME_BACKOFF_FIRST = float(os.environ.get("REVIVE_RESUME_BACKOFF_FIRST", "0.05"))
