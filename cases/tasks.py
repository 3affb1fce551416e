"""Celery tasks of the recovery pipeline: each takes ids and calls one service (see ``cases.pipeline``).

Start a worker (with beat, on one machine) with:

    DATABASE_URL=postgres://... REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/celery -A revive_site worker -B -l info

The steps that must survive a killed worker use late acknowledgement and reject-on-worker-lost, so Redis
redelivers a task whose worker died; each is idempotent (its service finds the step done and does nothing), and
the outbox sweep dispatches again whatever a lost message left pending.
"""

import time

from celery import shared_task
from django.conf import settings

from . import outbox, pipeline, resume, services

DURABLE = dict(acks_late=True, reject_on_worker_lost=True)


@shared_task(bind=True, name=outbox.DISPATCH_TASK, **DURABLE)
def outbox_dispatch(self, item_ids: list[int] | int) -> dict[str, int]:
    """One attempt at each owed step of a batch (``OutboxItem`` ids; a single id from a message sent before batches);
    schedules the next attempt itself for a step that must retry. Returns the count per outcome."""
    eager = bool(self.request.is_eager)
    ids = [item_ids] if isinstance(item_ids, int) else list(item_ids)
    return outbox.outbox_run(ids, eager=eager, delivery="" if eager else (self.request.id or ""))


@shared_task(name="cases.outbox_sweep", acks_late=True)
def outbox_sweep() -> int:
    """Beat: dispatch again every owed step still pending after its deadline."""
    return len(outbox.outbox_sweep())


@shared_task(name="cases.pipeline_watch", acks_late=True)
def pipeline_watch() -> dict:
    """Beat: re-drive released runs that stalled before passing their parked action (``pipeline.runs_watch``)."""
    report = pipeline.runs_watch()
    return {
        "redriven": len(report.redriven),
        "failed": len(report.failed),
        "released": len(report.released),
        "continued": len(report.continued),
        "finished": len(report.finished),
    }


@shared_task(name="cases.reap_stale_actions", acks_late=True)
def reap_stale_actions() -> int:
    """Idempotent: an action already marked ambiguous is skipped."""
    return len(services.reap_stale_actions())


@shared_task(bind=True, name="cases.reconcile_case", max_retries=None, **DURABLE)
def reconcile_case(self, case_id: int, generation: int) -> int:
    """Reconcile and release a reauthorized case by hand (the pipeline owes the same step as ``case.reconcile``).

    Safe to run twice: a case that already moved on is left alone, and each run's resume is owed once.
    """
    try:
        return len(pipeline.step_reconcile(case_id=case_id, generation=generation))
    except resume.ReconcilerUnavailable as exc:
        if self.request.retries >= settings.REVIVE_RESUME_MAX_RETRIES or self.request.is_eager:
            raise
        raise self.retry(exc=exc, countdown=min(settings.REVIVE_RESUME_BACKOFF_MAX, 2.0**self.request.retries)) from exc


@shared_task(bind=True, name="cases.resume_run", max_retries=None, **DURABLE)
def resume_run(self, run_id: str, case_id: int, generation: int) -> str:
    """Deliver one run's resume by hand (the pipeline owes the same step as ``run.resume``); retries transient
    failures with backoff, bounded by ``REVIVE_RESUME_MAX_RETRIES``."""
    attempt = self.request.retries
    while True:
        delivery = pipeline.step_deliver(
            run_id=run_id,
            case_id=case_id,
            generation=generation,
            attempt=attempt,
            holder="" if self.request.is_eager else (self.request.id or ""),
        )
        if delivery.outcome != "retry":
            return delivery.outcome
        if not self.request.is_eager:
            raise self.retry(countdown=delivery.countdown)
        time.sleep(min(delivery.countdown or 0.0, 1.0))
        attempt += 1
