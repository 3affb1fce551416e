"""Settings of the fault suite's Revive processes (web and Celery worker): Revive's own, plus its workflow and
reconciler. Everything else -- timeouts included -- is Revive's default unless the harness's profile sets it in
the environment."""

import os

from revive_site.settings import *  # noqa: F403

REVIVE_LANGGRAPH_GRAPHS = {"faults-sends": "tests.faults.support.graph:sends"}
REVIVE_RECONCILERS = {"send_*": "tests.faults.support.steps:reconcile_by_idempotency_key"}
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = os.environ["REVIVE_FAULTS_MAILBOX"]
