"""After the owner reconnects: settle ambiguous actions, release the case, and resume each run in its runtime.

The path, each step its own transaction and each safe to repeat:

1. ``case_after_reauthorize`` (called by ``reauth`` once ``case_reauthorize`` has
   advanced the generation) enqueues ``cases.reconcile_case`` on commit.
2. ``case_resume_start`` runs the server-side reconciler registered for each
   ambiguous action of the case's runs (``REVIVE_RECONCILERS``) and records its
   evidence; actions without one are left to the resumed worker's ``reconcile``
   callback (``REVIVE_RECONCILE_IN_WORKER``) -- ``action_begin`` answers
   ``reconcile`` for them, so none executes again while ambiguous. Then
   ``case_resume_begin`` moves the case to ``resuming`` and unparks every run
   that no other case still blocks; those runs get one ``cases.resume_run`` each.
3. ``run_resume_deliver`` claims the run, delivers one resume naming every case
   that released it (a run parked on two connections is resumed once, when the
   second is reconnected) through the run's runtime adapter, and records the
   delivery; the case becomes ``resumed`` when all its runs have theirs.
   Transient failures are retried with backoff a bounded number of times; then,
   or at once for a permanent failure, the run goes back to ``parked`` and the
   case to ``resume_failed`` for an operator (``case_resume_dispatch`` retries).

No row lock is held while a reconciler or a runtime is called.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import random
import time
from datetime import datetime, timedelta
from typing import Any, Callable

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.module_loading import import_string

from audit.services import audit_record

from . import services
from .errors import ActionStateConflict, CaseNotFound
from .models import Action, CaseRun, CaseState, RecoveryCase, Run
from .runtimes import ResumeRequest, RuntimeDeliveryError, RunNotWaiting, adapter_for

log = logging.getLogger(__name__)

ACTOR = "system:resume"
# Cases whose released runs may still be receiving their resume.
DELIVERING_STATES = (CaseState.RESUMING, CaseState.RESUME_FAILED)


# --------------------------------------------------------------------------- reconcilers


@dataclasses.dataclass(frozen=True)
class ReconcileRequest:
    """What a server-side reconciler gets: enough to look the effect up at the provider, never a credential."""

    run_id: str
    action_key: str
    idempotency_key: str
    connection_id: str
    generation: int
    """The generation the ambiguous attempt ran with."""
    attempts: int
    params_hash: str
    external_ref: str


@dataclasses.dataclass(frozen=True)
class ReconcilerFinding:
    """What a reconciler found. ``found`` with the effect's result/reference, or absent (it may execute again)."""

    found: bool
    evidence: dict[str, Any] = dataclasses.field(default_factory=dict)
    result: Any = None
    external_ref: str = ""


class ReconcilerUnavailable(Exception):
    """Raise from a reconciler when the provider could not be asked (timeout, 5xx): the task retries."""


def reconciler_for(action_key: str) -> tuple[str, Callable[[ReconcileRequest], Any]] | None:
    """The reconciler registered for ``action_key``: an exact key first, then the first matching pattern."""
    table: dict[str, str] = settings.REVIVE_RECONCILERS
    path = table.get(action_key)
    if path is None:
        path = next((p for pattern, p in table.items() if fnmatch.fnmatchcase(action_key, pattern)), None)
    if path is None:
        return None
    return path, import_string(path.replace(":", "."))


def _finding(raw: Any, path: str, request: ReconcileRequest) -> ReconcilerFinding:
    """Normalise what a reconciler returned; the evidence always says what was looked up and what was found."""
    if isinstance(raw, ReconcilerFinding):
        finding = raw
    elif raw is None or raw is False:
        finding = ReconcilerFinding(found=False)
    else:
        finding = ReconcilerFinding(found=True, result=raw if raw is not True else None)
    evidence = {"idempotency_key": request.idempotency_key, "found": finding.found, **finding.evidence,
                "reconciler": path}
    return dataclasses.replace(finding, evidence=evidence)


@dataclasses.dataclass
class ReconcileReport:
    stale: bool = False
    settled: list[str] = dataclasses.field(default_factory=list)
    deferred: list[str] = dataclasses.field(default_factory=list)
    """Ambiguous actions with no server-side reconciler: left to the worker's ``reconcile`` callback."""
    unsettled: list[str] = dataclasses.field(default_factory=list)
    """Ambiguous actions whose reconciler failed: an operator settles them."""


def _case(case_id: str | int) -> RecoveryCase:
    qs = RecoveryCase.objects.select_related("connection")
    case = qs.filter(reference=case_id).first() if isinstance(case_id, str) and not case_id.isdigit() else qs.filter(pk=int(case_id)).first()
    if case is None:
        raise CaseNotFound(data={"case_id": str(case_id)})
    return case


def _moved_on(case: RecoveryCase, generation: int, states: tuple[str, ...]) -> bool:
    return case.state not in states or case.resumed_generation != generation


def case_reconcile(*, case_id: str | int, generation: int, actor: str = "system:reconciler") -> ReconcileReport:
    """Settle the ambiguous actions of the case's runs with their server-side reconcilers, recording the evidence.

    ``ReconcilerUnavailable`` propagates (the caller retries); any other reconciler error leaves that action
    ambiguous for an operator and is audited.
    """
    case = _case(case_id)
    if _moved_on(case, generation, (CaseState.REAUTHORIZED, CaseState.RECONCILING)):
        return ReconcileReport(stale=True)
    report = ReconcileReport()
    ambiguous = Action.objects.filter(run__case_runs__case=case, state=Action.State.AMBIGUOUS).distinct().order_by("pk")
    for action in ambiguous:
        name = f"{action.run_id}/{action.action_key}"
        found = reconciler_for(action.action_key)
        if found is None:
            report.deferred.append(name)
            continue
        path, reconciler = found
        request = ReconcileRequest(run_id=action.run_id, action_key=action.action_key,
                                   idempotency_key=action.idempotency_key, connection_id=action.connection_id,
                                   generation=action.generation, attempts=action.attempts,
                                   params_hash=action.params_hash, external_ref=action.external_ref)
        try:
            finding = _finding(reconciler(request), path, request)
        except ReconcilerUnavailable:
            raise
        except Exception as exc:  # a broken reconciler must not stall the other actions
            with transaction.atomic():
                audit_record(actor=actor, action="action.reconcile_failed", entity_type="action", entity_id=name,
                             case=case, run_id=action.run_id, connection_id=action.connection_id,
                             arguments={"reconciler": path, "error": f"{type(exc).__name__}: {exc}"[:500]},
                             outcome="error")
            report.unsettled.append(name)
            continue
        try:
            services.action_reconcile(run_id=action.run_id, action_key=action.action_key, found=finding.found,
                                      evidence=finding.evidence, result=finding.result,
                                      external_ref=finding.external_ref, generation=None,
                                      actor=f"reconciler:{path}"[:200])
        except ActionStateConflict:
            pass  # settled meanwhile (a worker's callback, an operator): the ledger has the answer
        report.settled.append(name)
    return report


# --------------------------------------------------------------------------- releasing the case


def case_after_reauthorize(case_id: str | int) -> None:
    """The entry point ``reauth`` calls after ``case_reauthorize``: reconcile and resume, on commit, in Celery."""
    from .tasks import reconcile_case

    case = _case(case_id)
    if case.resumed_generation is None:
        return
    reconcile_case.delay_on_commit(case.pk, case.resumed_generation)


def runs_awaiting_resume(case: RecoveryCase) -> list[str]:
    """The runs of ``case`` that no case blocks any more and that have not had their resume."""
    return list(
        CaseRun.objects.filter(case=case, resumed_at__isnull=True, run__state=Run.State.ACTIVE)
        .order_by("pk").values_list("run_id", flat=True)
    )


def case_resume_start(*, case_id: str | int, generation: int, actor: str = ACTOR) -> list[str]:
    """Reconcile, then release the case; return the runs to deliver a resume to (none if the case moved on).

    Raises ``ReconcilerUnavailable`` when a reconciler could not reach its provider.
    """
    report = case_reconcile(case_id=case_id, generation=generation)
    if report.stale:
        return []
    defer = bool(report.deferred) and settings.REVIVE_RECONCILE_IN_WORKER and not report.unsettled
    case = services.case_resume_begin(case_id=_case(case_id).pk, actor=actor, defer_ambiguous=defer)
    if case.state != CaseState.RESUMING:
        return []  # still reconciling: an operator settles the rest, then calls case_resume_dispatch
    return runs_awaiting_resume(case)


def case_continue_after_reconnect(*, case_id: str | int, generation: int, actor: str = ACTOR) -> list[str]:
    """Reconcile, release, and enqueue one ``cases.resume_run`` per released run (what ``cases.reconcile_case`` runs).

    For a caller that is already a Celery task enqueued for ``generation`` (e.g. ``reauth.continue_recovery``):
    call this instead of enqueuing ``cases.reconcile_case``, and retry on ``ReconcilerUnavailable``.
    """
    from .tasks import resume_run

    case = _case(case_id)
    run_ids = case_resume_start(case_id=case.pk, generation=generation, actor=actor)
    for run_id in run_ids:
        resume_run.delay_on_commit(run_id, case.pk, generation)
    return run_ids


def case_resume_dispatch(*, case_id: str | int, actor: str) -> list[str]:
    """An operator's resume (after reconciling by hand, or to retry a ``resume_failed`` case): release and enqueue."""
    from .tasks import resume_run

    case = _case(case_id)
    case = services.case_resume_begin(case_id=case.pk, actor=actor)
    if case.state != CaseState.RESUMING:
        return []
    run_ids = runs_awaiting_resume(case)
    for run_id in run_ids:
        resume_run.delay_on_commit(run_id, case.pk, case.resumed_generation)
    return run_ids


# --------------------------------------------------------------------------- delivering one run's resume


@dataclasses.dataclass
class Delivery:
    outcome: str
    """``delivered``, ``already`` (the run was past its wait), ``nothing`` (no resume due), ``busy`` (another
    delivery holds the run), ``stale`` (the case moved on), ``retry`` or ``failed``."""
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)
    countdown: float | None = None
    claim: str | None = None


def _pending_case_runs(run_id: str):
    return (CaseRun.objects.filter(run_id=run_id, resumed_at__isnull=True, case__state__in=DELIVERING_STATES)
            .select_related("case", "case__connection").order_by("case_id"))


def _claim(run_id: str, *, mine: str | None) -> datetime | None:
    """Take the run's delivery claim if it is free, expired, or ours (``mine``, from the retry that set it)."""
    now = timezone.now()
    until = now + timedelta(seconds=settings.REVIVE_RESUME_CLAIM_SECONDS)
    free = Q(resume_claimed_until__isnull=True) | Q(resume_claimed_until__lt=now)
    if mine:
        free |= Q(resume_claimed_until=datetime.fromisoformat(mine))
    taken = Run.objects.filter(free, pk=run_id).update(resume_claimed_until=until)
    return until if taken else None


def _hold(run_id: str, claim: datetime, *, countdown: float) -> datetime:
    """Keep the claim across a scheduled retry, so no second delivery starts meanwhile."""
    until = timezone.now() + timedelta(seconds=countdown + settings.REVIVE_RESUME_CLAIM_SECONDS)
    Run.objects.filter(pk=run_id, resume_claimed_until=claim).update(resume_claimed_until=until)
    return until


def _release(run_id: str, claim: datetime) -> None:
    Run.objects.filter(pk=run_id, resume_claimed_until=claim).update(resume_claimed_until=None)


def _backoff(error: RuntimeDeliveryError, attempt: int) -> float:
    first = settings.REVIVE_RESUME_BACKOFF_FIRST * (1 if isinstance(error, RunNotWaiting) else 10)
    delay = min(settings.REVIVE_RESUME_BACKOFF_MAX, first * (2 ** attempt))
    return round(delay * random.uniform(0.8, 1.0), 3)


@transaction.atomic
def _record_delivery(*, run: Run, case_run_ids: list[int], request: ResumeRequest, result_detail: dict[str, Any],
                     already: bool, actor: str) -> list[str]:
    """The run has its resume: mark its case runs resumed and finish every case whose runs all have theirs.

    Case runs are locked before their cases (the order ``action_begin`` uses), and each case is checked for
    stragglers only once its row lock is held, so of two last deliveries committing together one sees the other.
    """
    now = timezone.now()
    locked = list(CaseRun.objects.select_for_update(no_key=True).filter(pk__in=case_run_ids).order_by("pk"))
    newly = [cr for cr in locked if cr.resumed_at is None]
    CaseRun.objects.filter(pk__in=[cr.pk for cr in newly]).update(resumed_at=now)
    finished = []
    for case_pk in sorted({cr.case_id for cr in locked}):
        case = services.case_lock(case_pk)
        audit_record(actor=actor, action="run.resume_delivered", entity_type="run", entity_id=run.pk, case=case,
                     run_id=run.pk, connection_id=case.connection_id,
                     after={"generation": request.generations.get(case.connection_id), "already": already},
                     arguments={"runtime": run.runtime, "cases": list(request.case_ids), "delivery": result_detail})
        if case.state == CaseState.RESUMING and not CaseRun.objects.filter(case=case, resumed_at__isnull=True).exists():
            services.case_transition(case, to=CaseState.RESUMED, actor=actor)
            finished.append(case.reference)
    return finished


@transaction.atomic
def _record_failure(*, run_id: str, case_pks: list[int], error: str, detail: dict[str, Any], actor: str) -> None:
    """The resume could not be delivered: the run waits again and its cases show ``resume_failed`` to operators."""
    run = Run.objects.select_for_update(no_key=True).get(pk=run_id)
    for case_pk in sorted(case_pks):
        case = services.case_lock(case_pk)
        arguments = {"run_id": run_id, "runtime": run.runtime, "error": error[:500], "detail": detail}
        if case.state == CaseState.RESUMING:
            services.case_transition(case, to=CaseState.RESUME_FAILED, actor=actor, arguments=arguments)
        else:
            audit_record(actor=actor, action="run.resume_failed", entity_type="run", entity_id=run_id, case=case,
                         run_id=run_id, connection_id=case.connection_id, arguments=arguments, outcome="error")
    if run.state == Run.State.ACTIVE:
        Run.objects.filter(pk=run_id).update(state=Run.State.PARKED, resume_claimed_until=None, updated_at=timezone.now())
        audit_record(actor=actor, action="run.parked", entity_type="run", entity_id=run_id, run_id=run_id,
                     before={"state": Run.State.ACTIVE}, after={"state": Run.State.PARKED},
                     arguments={"reason": "resume could not be delivered"})


def run_resume_deliver(*, run_id: str, case_id: int, generation: int, attempt: int = 0, max_attempts: int | None = None,
                       claim: str | None = None, actor: str = ACTOR) -> Delivery:
    """Deliver the resume due to ``run_id`` once, through its runtime; say whether and when to retry.

    ``case_id``/``generation`` are what the task was enqueued for: if that case moved on, nothing happens.
    The resume names every case still waiting to release this run, so one delivery covers them all.
    """
    case = RecoveryCase.objects.filter(pk=case_id).first()
    if case is None or _moved_on(case, generation, DELIVERING_STATES + (CaseState.RESUMED,)):
        return Delivery("stale")
    run = Run.objects.filter(pk=run_id).first()
    pending = list(_pending_case_runs(run_id))
    if run is None or run.state != Run.State.ACTIVE or not pending:
        return Delivery("nothing")
    held = _claim(run_id, mine=claim)
    if held is None:
        return Delivery("busy")
    request = ResumeRequest(
        run_id=run_id,
        case_ids=tuple(cr.case.reference for cr in pending),
        generations={cr.case.connection_id: cr.case.connection.current_generation for cr in pending},
        rejected={cr.case.connection_id: cr.case.rejected_generation for cr in pending},
    )
    started = time.perf_counter()
    try:
        adapter = adapter_for(run.runtime)
        try:
            result = adapter.resume(case, generation, run=run, request=request)
        except (RuntimeDeliveryError, SoftTimeLimitExceeded):
            raise
        except Exception as exc:  # an adapter's unforeseen failure (driver, network): retried, then visible
            log.exception("resume of %s failed unexpectedly", run_id)
            raise RuntimeDeliveryError(f"{type(exc).__name__}: {exc}"[:500], detail={"unexpected": True}) from exc
    except RuntimeDeliveryError as exc:
        limit = settings.REVIVE_RESUME_MAX_RETRIES if max_attempts is None else max_attempts
        detail = {"error": type(exc).__name__, **exc.detail}
        if exc.transient and attempt < limit:
            countdown = _backoff(exc, attempt)
            until = _hold(run_id, held, countdown=countdown)
            log.info("resume of %s not delivered (%s); retry %d in %.2fs", run_id, exc, attempt + 1, countdown)
            return Delivery("retry", detail={**detail, "message": str(exc)}, countdown=countdown, claim=until.isoformat())
        _release(run_id, held)
        _record_failure(run_id=run_id, case_pks=[cr.case_id for cr in pending], error=str(exc), detail=detail, actor=actor)
        return Delivery("failed", detail={**detail, "message": str(exc), "attempts": attempt + 1})
    except BaseException:
        _release(run_id, held)
        raise
    runtime_ms = (time.perf_counter() - started) * 1000
    try:
        finished = _record_delivery(run=run, case_run_ids=[cr.pk for cr in pending], request=request,
                                    result_detail=result.detail, already=result.already, actor=actor)
    finally:
        _release(run_id, held)
    log.info("resume of %s (%s) %s: runtime %.0f ms, total %.0f ms", run_id, run.runtime,
             "was already past its wait" if result.already else "delivered", runtime_ms,
             (time.perf_counter() - started) * 1000)
    return Delivery("already" if result.already else "delivered", detail={**result.detail, "cases_resumed": finished})


def run_park_observe(*, run_id: str, case_id: str | int, actor: str = ACTOR) -> dict[str, Any]:
    """Ask the run's runtime where the run waits for ``case`` and record it (the timeline's saved checkpoint)."""
    case = _case(case_id)
    run = Run.objects.get(pk=run_id)
    where = adapter_for(run.runtime).park(run, case)
    with transaction.atomic():
        audit_record(actor=actor, action="run.park_observed", entity_type="run", entity_id=run_id, case=case,
                     run_id=run_id, connection_id=case.connection_id, after={"runtime": run.runtime, **where})
    return where


def run_runtime_status(*, run_id: str) -> dict[str, Any]:
    run = Run.objects.get(pk=run_id)
    status = adapter_for(run.runtime).status(run)
    return {"run_id": run_id, "runtime": run.runtime, "state": status.state, "detail": status.detail}


# --------------------------------------------------------------------------- the sweep


@dataclasses.dataclass
class SweepReport:
    reconciles: list[int] = dataclasses.field(default_factory=list)
    deliveries: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    settled: list[str] = dataclasses.field(default_factory=list)


def resume_sweep(*, now: datetime | None = None, actor: str = "system:resume_sweep", limit: int = 1000) -> SweepReport:
    """Re-enqueue recovery work a lost task left behind (a killed worker's unacknowledged message).

    Everything it enqueues is idempotent, so overlapping with a live task costs one no-op.
    """
    from .tasks import reconcile_case, resume_run

    now = now or timezone.now()
    quiet_since = now - timedelta(seconds=settings.REVIVE_RESUME_SWEEP_AFTER)
    report = SweepReport()
    for pk, generation in (RecoveryCase.objects.filter(state=CaseState.REAUTHORIZED, state_changed_at__lt=quiet_since)
                           .values_list("pk", "resumed_generation")[:limit]):
        reconcile_case.delay(pk, generation)
        report.reconciles.append(pk)
    waiting = (CaseRun.objects.filter(case__state=CaseState.RESUMING, case__state_changed_at__lt=quiet_since,
                                      resumed_at__isnull=True, run__state=Run.State.ACTIVE)
               .filter(Q(run__resume_claimed_until__isnull=True) | Q(run__resume_claimed_until__lt=now))
               .values_list("run_id", "case_id", "case__resumed_generation")[:limit])
    for run_id, case_pk, generation in waiting:
        resume_run.delay(run_id, case_pk, generation)
        report.deliveries.append((run_id, case_pk))
    for pk in (RecoveryCase.objects.filter(state=CaseState.RESUMING, state_changed_at__lt=quiet_since)
               .exclude(case_runs__resumed_at__isnull=True).values_list("pk", flat=True)[:limit]):
        with transaction.atomic():
            case = services.case_lock(pk)
            if case.state == CaseState.RESUMING and not CaseRun.objects.filter(case=case, resumed_at__isnull=True).exists():
                services.case_transition(case, to=CaseState.RESUMED, actor=actor)
                report.settled.append(case.reference)
    return report
