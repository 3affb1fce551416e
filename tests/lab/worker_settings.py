"""Settings of the processes the lab tests start (Celery worker, lab worker): the runtime tests' plus the lab's.

Reconnect e-mails go to files in ``REVIVE_LAB_MAILBOX``, so the test reads the owner's link whichever process sent it.
"""

import os

from tests.runtimes.worker_settings import *  # noqa: F403
from tests.runtimes.worker_settings import REVIVE_LANGGRAPH_GRAPHS

REVIVE_LANGGRAPH_GRAPHS = {**REVIVE_LANGGRAPH_GRAPHS, "lab-briefing": "lab.briefing:briefing"}
# The lab's ambiguous send is looked up by the resumed worker (its reconcile callback asks the mail service);
# the runtime tests' server-side reconciler for "send_exec_*" knows only their own file-based provider.
REVIVE_RECONCILERS: dict[str, str] = {}
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = os.environ.get("REVIVE_LAB_MAILBOX", "")
