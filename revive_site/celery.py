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
