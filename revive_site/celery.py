"""The Celery app. Without REDIS_URL it runs tasks eagerly (embedded default)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "revive_site.settings")

app = Celery("revive")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
