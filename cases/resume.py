"""The runtime side of a recovery: settle ambiguous actions with server-side reconcilers, and deliver one run's
resume through its runtime adapter. ``cases.pipeline`` decides when each happens; this module does one of them.

- ``case_reconcile`` runs the reconciler registered for each ambiguous action of a case's runs
  (``REVIVE_RECONCILERS``) and records its evidence; actions without one are left to the resumed worker's
  ``reconcile`` callback (``REVIVE_RECONCILE_IN_WORKER``) -- ``action_begin`` answers ``reconcile`` for them, so
  none executes again while ambiguous.
- ``run_resume_deliver`` claims the run, delivers one resume naming every released case still waiting for the
  run (a run parked on two connections is resumed once, when the second is released) and records the delivery.
  Delivering is not resuming: the case becomes ``resumed`` only when the run is past the action it was parked
  on (``cases.services.runs._run_went_past``), and the watchdog (``cases.pipeline.runs_watch``) re-drives a run that
  makes no progress. A delivery that cannot be made is retried by its outbox row with backoff; a permanent
  failure, or the last attempt, puts the run back to ``parked`` and its cases to ``resume_failed``.

No row lock is held while a reconciler or a runtime is called.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.module_loading import import_string

from audit.services import audit_record

from . import selectors, services
from .errors import ActionAlreadyReconciled, ActionStateConflict, CaseNotFound
from .models import RELEASED_CASE_STATES, Action, CaseRun, CaseState, OutboxItem, RecoveryCase, Run
from .outbox import claim_renewed
from .runtimes import AbandonRequest, ResumeRequest, RunNotWaiting, RuntimeDeliveryError, adapter_for

log = logging.getLogger(__name__)

ACTOR = "system:resume"
# Cases whose released runs may still be receiving their resume.
DELIVERING_STATES = RELEASED_CASE_STATES


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
    evidence = {
        "idempotency_key": request.idempotency_key,
        "found": finding.found,
        **finding.evidence,
        "reconciler": path,
    }
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
    case = (
        qs.filter(reference=case_id).first()
        if isinstance(case_id, str) and not case_id.isdigit()
        else qs.filter(pk=int(case_id)).first()
    )
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
    ambiguous = selectors.case_ambiguous_actions(case).order_by("pk")
    return actions_reconcile(ambiguous, case=case, actor=actor)


def run_reconcile(*, run_id: str, case: RecoveryCase, actor: str = "system:watchdog") -> ReconcileReport:
    """Settle the ambiguous actions of one run with their server-side reconcilers (the watchdog's re-drive)."""
    ambiguous = Action.objects.filter(run_id=run_id, state=Action.State.AMBIGUOUS).order_by("pk")
    return actions_reconcile(ambiguous, case=case, actor=actor)


def actions_reconcile(ambiguous, *, case: RecoveryCase, actor: str) -> ReconcileReport:
    report = ReconcileReport()
    for action in ambiguous:
        name = f"{action.run_id}/{action.action_key}"
        found = reconciler_for(action.action_key)
        if found is None:
            report.deferred.append(name)
            continue
        path, reconciler = found
        request = ReconcileRequest(
            run_id=action.run_id,
            action_key=action.action_key,
            idempotency_key=action.idempotency_key,
            connection_id=action.connection_id,
            generation=action.generation,
            attempts=action.attempts,
            params_hash=action.params_hash,
            external_ref=action.external_ref,
        )
        try:
            finding = _finding(reconciler(request), path, request)
        except ReconcilerUnavailable:
            raise
        except Exception as exc:  # a broken reconciler must not stall the other actions
            with transaction.atomic():
                audit_record(
                    actor=actor,
                    action="action.reconcile_failed",
                    entity_type="action",
                    entity_id=name,
                    case=case,
                    run_id=action.run_id,
                    connection_id=action.connection_id,
                    arguments={"reconciler": path, "error": f"{type(exc).__name__}: {exc}"[:500]},
                    outcome="error",
                )
            report.unsettled.append(name)
            continue
        try:
            services.action_reconcile(
                run_id=action.run_id,
                action_key=action.action_key,
                found=finding.found,
                evidence=finding.evidence,
                result=finding.result,
                external_ref=finding.external_ref,
                generation=None,
                actor=f"reconciler:{path}"[:200],
            )
        except (ActionStateConflict, ActionAlreadyReconciled):
            pass  # settled meanwhile (a worker's callback, an operator): the ledger has the answer
        report.settled.append(name)
    return report


# --------------------------------------------------------------------------- releasing the case


def case_resume_dispatch(*, case_id: str | int, actor: str) -> list[str]:
    """An operator's resume (after reconciling by hand, or to retry a ``resume_failed`` case): release the case and
    owe each released run a new delivery. Returns those runs."""
    with transaction.atomic():
        case = services.case_resume_begin(case_id=_case(case_id).pk, actor=actor)
        if case.state != CaseState.RESUMING:
            return []
        return list(
            OutboxItem.objects.filter(case=case, kind=services.RESUME_RUN, state=OutboxItem.State.PENDING)
            .order_by("run_id")
            .values_list("run_id", flat=True)
            .distinct()
        )


# --------------------------------------------------------------------------- delivering one run's resume


@dataclasses.dataclass
class Delivery:
    outcome: str
    """``delivered``, ``already`` (the run was past its wait), ``nothing`` (no resume due), ``busy`` (another
    delivery holds the run), ``stale`` (the case moved on), ``retry`` or ``failed``."""
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)
    countdown: float | None = None


def _pending_case_runs(run_id: str):
    return (
        CaseRun.objects.filter(run_id=run_id, resumed_at__isnull=True, case__state__in=DELIVERING_STATES)
        .select_related("case", "case__connection")
        .order_by("case_id")
    )


def _claim(run_id: str, holder: str = "") -> datetime | None:
    """Take the run's delivery claim if it is free or expired: one delivery to a run at a time. ``holder`` (the
    delivering message, see ``outbox._claim``) takes over a claim it held itself in a worker that was lost."""
    now = timezone.now()
    until = now + timedelta(seconds=settings.REVIVE_RESUME_CLAIM_SECONDS)
    free = Q(resume_claimed_until__isnull=True) | Q(resume_claimed_until__lt=now)
    if holder:
        free |= Q(resume_claimed_by=holder)
    taken = Run.objects.filter(free, pk=run_id).update(resume_claimed_until=until, resume_claimed_by=holder)
    return until if taken else None


def _hosted(run: Run) -> bool:
    """Whether a delivery to ``run`` executes it here (``RuntimeAdapter.hosts``); a runtime without an adapter
    does not (its delivery fails as misconfigured)."""
    try:
        return adapter_for(run.runtime).hosts(run)
    except RuntimeDeliveryError:
        return False


def _release(run_id: str, claim: datetime, holder: str = "") -> None:
    """Free the run's claim if it is still this delivery's (by its holder: a renewed claim's end has moved)."""
    mine = Q(resume_claimed_by=holder) if holder else Q(resume_claimed_until=claim)
    Run.objects.filter(mine, pk=run_id).update(resume_claimed_until=None)


def resume_backoff(error: RuntimeDeliveryError, attempt: int) -> float:
    """Seconds before delivery attempt ``attempt + 1``: short while the run has not reached its wait, longer while
    the runtime is unreachable; capped at ``REVIVE_RESUME_BACKOFF_MAX``."""
    first = settings.REVIVE_RESUME_BACKOFF_FIRST * (1 if isinstance(error, RunNotWaiting) else 10)
    delay = min(settings.REVIVE_RESUME_BACKOFF_MAX, first * (2**attempt))
    return round(delay * random.uniform(0.8, 1.0), 3)


@transaction.atomic
def _record_delivery(
    *,
    run: Run,
    case_run_ids: list[int],
    request: ResumeRequest,
    result_detail: dict[str, Any],
    already: bool,
    actor: str,
    cases: dict[int, RecoveryCase],
    claim: datetime,
    holder: str,
) -> None:
    """The run has its resume: record when (the watchdog measures progress from it), and free the delivery's claim
    on the run in the same transaction. The cases stay ``resuming`` until the run is past its parked action
    (``services._run_went_past``). ``cases``: the run's cases as the delivery read them (read again if absent)."""
    now = timezone.now()
    locked = list(CaseRun.objects.select_for_update(no_key=True).filter(pk__in=case_run_ids).order_by("pk"))
    CaseRun.objects.filter(pk__in=[cr.pk for cr in locked]).update(resume_sent_at=now)
    for case_pk in sorted({cr.case_id for cr in locked}):
        case = cases.get(case_pk) or RecoveryCase.objects.get(pk=case_pk)
        audit_record(
            actor=actor,
            action="run.resume_delivered",
            entity_type="run",
            entity_id=run.pk,
            case=case,
            run_id=run.pk,
            connection_id=case.connection_id,
            after={
                "generation": request.generations.get(case.connection_id),
                "already": already,
                "attempt": request.attempt,
            },
            arguments={"runtime": run.runtime, "cases": list(request.case_ids), "delivery": result_detail},
        )
    _release(run.pk, claim, holder)


@transaction.atomic
def _record_failure(
    *, run_id: str, case_pks: list[int], error: str, detail: dict[str, Any], actor: str, park: bool = True
) -> None:
    """The resume could not be delivered: the run waits again and its cases show ``resume_failed`` to operators.
    ``park=False``: a run Revive executes went past its parked action before it failed: no case would release it
    again, so it is left as it is, the failure is written on its case, and the watchdog continues it
    (``pipeline.run_continue``; its case shows ``resume_failed`` only once continuing cannot finish it)."""
    run = Run.objects.select_for_update(no_key=True).get(pk=run_id)
    for case_pk in sorted(case_pks):
        services.case_resume_fail(
            case_id=case_pk,
            actor=actor,
            reason=f"resume of {run_id} not delivered: {error}"[:1000],
            detail={"run_id": run_id, "runtime": run.runtime, "detail": detail},
        )
    if park:
        services.run_park_again(run_id=run_id, actor=actor, reason="resume could not be delivered")


def run_resume_deliver(
    *,
    run_id: str,
    case_id: int,
    generation: int,
    attempt: int = 0,
    max_attempts: int | None = None,
    redrive: int = 0,
    holder: str = "",
    actor: str = ACTOR,
) -> Delivery:
    """Deliver the resume due to ``run_id`` once, through its runtime; say whether and when to retry.

    ``case_id``/``generation`` are what the delivery was owed for: if that case moved on, nothing happens.
    The resume names every case still waiting for this run, with the generations the run may use *now*, so a
    retried delivery carries what the run waits on at this moment. ``attempt`` (the outbox row's, or the
    watchdog's re-drive number) goes into the runtime's idempotency key: a new attempt is a new delivery, a
    repeated one the same. ``redrive``: the run was resumed before and stalled; an adapter that can continue a
    run from its latest checkpoint does so (the ledger replays what it had committed). ``holder``: the delivering
    message, for the run's claim.
    """
    case = RecoveryCase.objects.filter(pk=case_id).first()
    if case is None or _moved_on(case, generation, DELIVERING_STATES + (CaseState.RESUMED,)):
        return Delivery("stale")
    run = Run.objects.filter(pk=run_id).first()
    if run is None:
        return Delivery("nothing")
    pending = list(_pending_case_runs(run_id))
    # An earlier attempt of this delivery (``attempt`` > 0) died after the run it executes went past its parked
    # action: the case is resumed, but the rest of the run was never run. Continue it from its latest checkpoint.
    hosted = _hosted(run)
    unfinished = hosted and run.state == Run.State.ACTIVE and not pending and attempt > 0
    if unfinished:
        redrive = max(redrive, 1)
    # A first delivery is due once; a re-drive (the watchdog reset the mark) delivers again.
    elif run.state != Run.State.ACTIVE or not any(cr.resume_sent_at is None for cr in pending) and not redrive:
        return Delivery("nothing")
    held = _claim(run_id, holder)
    if held is None:
        return Delivery("busy", countdown=float(settings.REVIVE_RESUME_BACKOFF_FIRST) * 10)

    def executing() -> None:
        Run.objects.filter(pk=run_id).update(hosted_at=timezone.now())

    request = ResumeRequest(
        run_id=run_id,
        case_ids=tuple(cr.case.reference for cr in pending),
        generations={cr.case.connection_id: cr.case.connection.current_generation for cr in pending},
        rejected={cr.case.connection_id: cr.case.rejected_generation for cr in pending},
        attempt=attempt,
        redrive=redrive,
        executing=executing if hosted else None,
    )
    started = time.perf_counter()

    def renew() -> int:
        return Run.objects.filter(pk=run_id, resume_claimed_by=holder).update(
            resume_claimed_until=timezone.now() + timedelta(seconds=settings.REVIVE_RESUME_CLAIM_SECONDS)
        )

    try:
        adapter = adapter_for(run.runtime)
        try:
            with claim_renewed(renew if holder else None, settings.REVIVE_RESUME_CLAIM_SECONDS):
                result = adapter.resume(case, generation, run=run, request=request)
        except (RuntimeDeliveryError, SoftTimeLimitExceeded):
            raise
        except Exception as exc:  # an adapter's unforeseen failure (driver, network): retried, then visible
            log.exception("resume of %s failed unexpectedly", run_id)
            raise RuntimeDeliveryError(f"{type(exc).__name__}: {exc}"[:500], detail={"unexpected": True}) from exc
    except RuntimeDeliveryError as exc:
        _release(run_id, held, holder)
        limit = settings.REVIVE_RESUME_MAX_RETRIES if max_attempts is None else max_attempts
        detail = {"error": type(exc).__name__, **exc.detail}
        if exc.transient and attempt < limit:
            countdown = resume_backoff(exc, attempt)
            log.info("resume of %s not delivered (%s); retry %d in %.2fs", run_id, exc, attempt + 1, countdown)
            return Delivery("retry", detail={**detail, "message": str(exc)}, countdown=countdown)
        # A run this delivery executed may have gone past its parked action before it failed: nothing would release
        # it if it were parked again, so it is parked only while it still waits on one of its cases.
        waits = _pending_case_runs(run_id).exists() if hosted else True
        _record_failure(
            run_id=run_id,
            case_pks=[cr.case_id for cr in pending] or [case.pk],
            error=str(exc),
            detail=detail,
            actor=actor,
            park=waits,
        )
        return Delivery("failed", detail={**detail, "message": str(exc), "attempts": attempt + 1})
    except BaseException:
        _release(run_id, held, holder)
        raise
    runtime_ms = (time.perf_counter() - started) * 1000
    if hosted:  # the execution returned (finished, parked again, or waiting on the graph's own interrupt)
        Run.objects.filter(pk=run_id, hosted_at__isnull=False).update(hosted_at=None, continuations=0)
    try:
        _record_delivery(
            run=run,
            case_run_ids=[cr.pk for cr in pending],
            request=request,
            result_detail=result.detail,
            already=result.already,
            actor=actor,
            cases={cr.case_id: cr.case for cr in pending},
            claim=held,
            holder=holder,
        )
    except BaseException:
        _release(run_id, held, holder)
        raise
    log.info(
        "resume of %s (%s) %s: runtime %.0f ms, total %.0f ms",
        run_id,
        run.runtime,
        "was already past its wait" if result.already else "delivered",
        runtime_ms,
        (time.perf_counter() - started) * 1000,
    )
    return Delivery("already" if result.already else "delivered", detail=result.detail)


def _abandon_not_told(*, run_id: str, case: RecoveryCase, error: str, actor: str) -> None:
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="run.abandon_not_told",
            entity_type="run",
            entity_id=run_id,
            case=case,
            run_id=run_id,
            connection_id=case.connection_id,
            arguments={"error": error[:1000]},
            outcome="error",
        )


def run_abandon_tell(*, run_id: str, case_id: int, reason: str, actor: str = ACTOR) -> Delivery:
    """Tell a parked run, through its runtime adapter, that ``case_id`` was abandoned (one attempt of the
    ``run.abandon`` notice). Outcomes: ``told``; ``already`` (the run was past its wait); ``retry`` (transient:
    the runtime was unreachable or the run not at its wait yet); ``skipped`` (the case was reopened, the run is
    not parked or another open case holds it); ``unsupported`` (its runtime cannot be told: it stays parked);
    ``failed`` (a permanent delivery error: the run is ``abandoned`` in Revive, its runtime was not told).

    The run is claimed first (``services.run_abandon_claim``, parked -> abandoned, audited ``run.abandoned``) and
    the runtime called after, with no lock held; a delivery is recorded as ``run.abandoned_told``.
    """
    run = Run.objects.filter(pk=run_id).first()
    if run is None:
        return Delivery("skipped", detail={"message": "no such run"})
    adapter = adapter_for(run.runtime)
    if not adapter.can_abandon(run):
        case = RecoveryCase.objects.filter(pk=case_id).first()
        if case is None or case.state != CaseState.ABANDONED or run.state != Run.State.PARKED:
            return Delivery("skipped", detail={"message": "reopened or not parked"})
        _abandon_not_told(
            run_id=run_id,
            case=case,
            actor=actor,
            error=f"the {run.runtime} runtime cannot be told; the run stays parked",
        )
        return Delivery("unsupported")
    claim = services.run_abandon_claim(run_id=run_id, case_id=case_id, actor=actor, reason=reason)
    if claim.outcome != "claimed":
        return Delivery("skipped", detail={"message": claim.outcome, "held_by": claim.detail})
    case = claim.case
    assert case is not None and case.reference is not None  # a claimed abandon names its case (referenced when opened)
    request = AbandonRequest(
        run_id=run_id, case_id=case.reference, reason=reason, rejected={case.connection_id: case.rejected_generation}
    )
    try:
        result = adapter.abandon(run=Run.objects.get(pk=run_id), request=request)
    except RuntimeDeliveryError as exc:
        if exc.transient:
            return Delivery("retry", detail={"message": str(exc)[:500], **exc.detail})
        _abandon_not_told(run_id=run_id, case=case, actor=actor, error=f"{type(exc).__name__}: {exc}")
        return Delivery("failed", detail={"message": str(exc)[:500]})
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="run.abandoned_told",
            entity_type="run",
            entity_id=run_id,
            case=case,
            run_id=run_id,
            connection_id=case.connection_id,
            arguments={"runtime": run.runtime, "already": result.already, **result.detail},
        )
    return Delivery("already" if result.already else "told", detail=result.detail)
