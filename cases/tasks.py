"""Celery tasks of the recovery path. Each takes ids (and the generation it was enqueued for) and calls one service.

Start a worker (with beat, on one machine) with:

    DATABASE_URL=postgres://... REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/celery -A revive_site worker -B -l info
"""

import time

from celery import shared_task
from django.conf import settings

from . import resume, services


@shared_task(name="cases.reap_stale_actions", acks_late=True)
def reap_stale_actions() -> int:
    """Idempotent: an action already marked ambiguous is skipped."""
    return len(services.reap_stale_actions())


@shared_task(bind=True, name="cases.reconcile_case", acks_late=True, max_retries=None)
def reconcile_case(self, case_id: int, generation: int) -> int:
    """Reconcile the case's ambiguous actions, release it, and enqueue one resume per released run.

    Safe to run twice: a case that already moved on is left alone, and each run's resume is delivered once.
    """
    try:
        return len(resume.case_continue_after_reconnect(case_id=case_id, generation=generation))
    except resume.ReconcilerUnavailable as exc:
        if self.request.retries >= settings.REVIVE_RESUME_MAX_RETRIES or self.request.is_eager:
            raise  # the case stays reauthorized; the sweep and operators see it
        countdown = min(settings.REVIVE_RESUME_BACKOFF_MAX, 2.0 ** self.request.retries)
        raise self.retry(exc=exc, countdown=countdown)


@shared_task(bind=True, name="cases.resume_run", acks_late=True, max_retries=None)
def resume_run(self, run_id: str, case_id: int, generation: int, claim: str | None = None) -> str:
    """Deliver one run's resume through its runtime adapter; retry transient failures with backoff, bounded.

    ``claim`` is passed only by this task's own retries: the delivery claim it holds while waiting.
    """
    attempt = self.request.retries
    while True:
        delivery = resume.run_resume_deliver(run_id=run_id, case_id=case_id, generation=generation,
                                             attempt=attempt, claim=claim)
        if delivery.outcome != "retry":
            return delivery.outcome
        if not self.request.is_eager:
            raise self.retry(countdown=delivery.countdown, args=(), kwargs={
                "run_id": run_id, "case_id": case_id, "generation": generation, "claim": delivery.claim})
        # Eager (the embedded default, no broker): retry inline, briefly; the bound still applies.
        time.sleep(min(delivery.countdown, 1.0))
        attempt, claim = attempt + 1, delivery.claim


@shared_task(name="cases.expire_reconnect_requests", acks_late=True)
def expire_reconnect_requests() -> int:
    from reauth.services import reconnect_requests_expire  # reauth builds on cases: import at call time

    return reconnect_requests_expire(actor="system:beat")


@shared_task(name="cases.resume_sweep", acks_late=True)
def resume_sweep() -> dict:
    report = resume.resume_sweep()
    return {"reconciles": len(report.reconciles), "deliveries": len(report.deliveries), "settled": len(report.settled)}
