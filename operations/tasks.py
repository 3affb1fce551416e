"""Celery tasks of operations (Celery finds this module: ``revive_site.celery`` autodiscovers installed apps' tasks)."""

from celery import shared_task

from . import notifications


@shared_task(name="cases.notify_stale_cases", acks_late=True)
def notify_stale_cases() -> int:
    """Beat: owe the operators' notification of each case open longer than ``REVIVE_CASE_STALE_MINUTES`` (once).

    The name stays ``cases.notify_stale_cases`` (the beat schedule and existing queues know it by that name)."""
    return len(notifications.stale_cases_notify())
