from celery import shared_task

from . import services


@shared_task(name="cases.reap_stale_actions", acks_late=True)
def reap_stale_actions() -> int:
    """Idempotent: an action already marked ambiguous is skipped."""
    return len(services.reap_stale_actions())
