"""The recovery pipeline after a verified reconnect, in one place and one direction.

    reauthorized -> reconcile -> approval -> deliver resume -> watch -> done

Direction: ``reauth`` imports ``cases``; ``cases`` never imports ``reauth``. (``classifier``, a package of its own, is
the pure provider-error classifier both use, holding no state of either.) ``reauth`` hands a
recovery over exactly once: ``recovery_reauthorized``, called inside the transaction that consumes the owner's
reconnect request. What ``cases`` needs from the owner's side goes through ``cases.signals`` (a case opened, a
case abandoned, an operator's resend), which ``reauth`` connects in ``ReauthConfig.ready``.

Every step is a service (one transaction, row-locked, audited, safe to repeat) owed through the transactional
outbox (``cases.outbox``): the state change that owes a step writes its row, so losing Redis or a task delays a
step and never loses it. The Celery tasks (``cases.tasks``) only call these services.

1. ``recovery_reauthorized``: the generation advances by one (``services.case_reauthorize``) and the case owes
   ``case.reconcile`` -- in the reconnect's transaction.
2. ``case.reconcile`` (``step_reconcile``): the server-side reconcilers settle ambiguous actions
   (``resume.case_reconcile``, no lock held while a provider is asked); then
3. approval and release (``services.case_resume_begin``): the approval policy (``cases.approval``) may hold the
   case in ``awaiting_approval`` for an operator (``services.case_approve`` releases it); otherwise the case
   moves to ``resuming``, each run no other case blocks is unparked -- with every run of the case locked, so
   two cases released at once cannot strand a run blocked on both -- and each released run owes ``run.resume``.
4. ``run.resume`` (``step_deliver``): one delivery through the run's runtime adapter (``resume.run_resume_deliver``),
   retried with backoff by its outbox row; a permanent failure, or the last attempt, makes the case
   ``resume_failed`` with the reason.
5. watch (``runs_watch``, beat task ``cases.pipeline_watch``): a released run that makes no ledger progress for
   ``REVIVE_RUN_STALL_SECONDS`` after its resume is re-driven -- its expired executing actions reaped to
   ``ambiguous``, those settled by their reconcilers, its resume delivered again (a new attempt; LangGraph
   continues from the latest checkpoint, and the ledger replays what had committed). After
   ``REVIVE_RESUME_MAX_ATTEMPTS`` re-drives the case goes to ``resume_failed`` with the reason. A parked run
   whose cases have all been released is released again here (the backstop of step 3). A run Revive executes
   itself (``RuntimeAdapter.hosts``: a LangGraph graph in Revive's worker) stays watched past its parked action,
   until its execution returns (``Run.hosted_at``): stopped -- its worker died and no delivery holds or owes it --
   it is continued from its latest checkpoint (``run_continue``), and after ``REVIVE_RESUME_MAX_ATTEMPTS``
   continuations its ``resumed`` case goes back to ``resume_failed``, whose retry continues it.
6. done: the case is ``resumed`` when every run it blocked is past the action it was parked on under the new
   generation -- decided once, in ``services._case_finish_if_resumed``, when that action commits or replays.

Off the main line: an abandoned (or rejected) case owes each run it leaves parked, and no other open case holds,
``run.abandon`` (``_handle_abandon``, after ``REVIVE_ABANDON_NOTICE_DELAY_SECONDS``): the run is claimed
(``abandoned``) and told through its runtime adapter (``resume.run_abandon_tell``), so it ends.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, Max, OuterRef, Q
from django.utils import timezone

from audit.services import audit_record

from . import resume, services
from .metrics import resume_finished
from .models import (
    BLOCKING_CASE_STATES,
    RELEASED_CASE_STATES,
    Action,
    CaseRun,
    CaseState,
    OutboxItem,
    RecoveryCase,
    Run,
)
from .outbox import Done, Retry, outbox_handler

log = logging.getLogger(__name__)

ACTOR = "system:pipeline"
WATCH_ACTOR = "system:watchdog"


# --------------------------------------------------------------------------- 1. the hand-over


def recovery_reauthorized(
    *, case_id: str | int, actor: str, evidence: dict[str, Any] | None = None, locked: RecoveryCase | None = None
) -> RecoveryCase:
    """The owner reconnected with the same identity: advance the generation and owe the rest of the recovery.

    ``reauth``'s one call into the pipeline. Runs in the caller's transaction (the reconnect's, holding the case
    lock; ``locked`` is that case, not read again); repeating it returns the case unchanged and owes nothing twice.
    """
    with transaction.atomic(savepoint=False):
        case = services.case_reauthorize(case_id=case_id, actor=actor, evidence=evidence, locked=locked)
        if case.state == CaseState.REAUTHORIZED:
            services.case_reconcile_owe(case=case)
    return case


# --------------------------------------------------------------------------- 2-3. reconcile, approve, release


def step_reconcile(*, case_id: int, generation: int, actor: str = resume.ACTOR) -> list[str]:
    """Reconcile the case's ambiguous actions, then release it (approval policy permitting). Returns the runs now
    owed a resume. Raises ``resume.ReconcilerUnavailable`` when a provider could not be asked (retried)."""
    report = resume.case_reconcile(case_id=case_id, generation=generation)
    if report.stale:
        return []
    defer = bool(report.deferred) and settings.REVIVE_RECONCILE_IN_WORKER and not report.unsettled
    with transaction.atomic():
        case = services.case_resume_begin(case_id=case_id, actor=actor, defer_ambiguous=defer)
        if case.state != CaseState.RESUMING:
            return []  # reconciling (an operator settles the rest) or awaiting approval
        return list(
            OutboxItem.objects.filter(case=case, kind=services.RESUME_RUN, state=OutboxItem.State.PENDING)
            .order_by("run_id")
            .values_list("run_id", flat=True)
            .distinct()
        )


def _reconcile_exhausted(item: OutboxItem) -> None:
    """Reconcilers kept failing: the case waits in ``reconciling`` for an operator, with the reason."""
    case = services.case_lock(item.payload["case_id"])
    if case.state == CaseState.REAUTHORIZED:
        services.case_transition(
            case,
            to=CaseState.RECONCILING,
            actor=ACTOR,
            arguments={"reason": f"reconciliation failed {item.attempts} times: {item.last_error}"[:1000]},
        )


@outbox_handler(
    services.RECONCILE_CASE,
    max_attempts=lambda: settings.REVIVE_RESUME_MAX_RETRIES + 1,
    backoff_first=1.0,
    backoff_max=60.0,
    on_exhausted=_reconcile_exhausted,
)
def _handle_reconcile(item: OutboxItem) -> Done | Retry:
    try:
        runs = step_reconcile(case_id=item.payload["case_id"], generation=item.payload["generation"])
    except resume.ReconcilerUnavailable as exc:
        return Retry(error=f"reconciler unavailable: {exc}")
    return Done(f"{len(runs)} run(s) owed a resume")


# --------------------------------------------------------------------------- 4. deliver


def step_deliver(
    *,
    run_id: str,
    case_id: int,
    generation: int,
    attempt: int = 0,
    redrive: int = 0,
    max_attempts: int | None = None,
    holder: str = "",
) -> resume.Delivery:
    """One delivery attempt of a run's resume (``resume.run_resume_deliver``), counted by outcome for /metrics."""
    delivery = resume.run_resume_deliver(
        run_id=run_id,
        case_id=case_id,
        generation=generation,
        attempt=attempt,
        redrive=redrive,
        max_attempts=max_attempts,
        holder=holder,
    )
    resume_finished(delivery.outcome)
    return delivery


def _deliver_exhausted(item: OutboxItem) -> None:
    services.case_resume_fail(
        case_id=item.payload["case_id"],
        actor=ACTOR,
        reason=f"resume of {item.run_id} not delivered after {item.attempts} attempts: {item.last_error}",
        detail={"run_id": item.run_id, "outbox": item.key},
    )


@outbox_handler(
    services.RESUME_RUN,
    max_attempts=lambda: settings.REVIVE_RESUME_MAX_RETRIES + 1,
    backoff_first=1.0,
    backoff_max=60.0,
    on_exhausted=_deliver_exhausted,
)
def _handle_deliver(item: OutboxItem) -> Done | Retry:
    p = item.payload
    delivery = step_deliver(
        run_id=p["run_id"],
        case_id=p["case_id"],
        generation=p["generation"],
        attempt=item.attempts - 1,
        redrive=p.get("attempt", 0),
        max_attempts=item.max_attempts - 1,
        holder=item.claimed_by,
    )
    if delivery.outcome == "retry":
        return Retry(error=f"retry: {delivery.detail.get('message', '')}"[:1000], countdown=delivery.countdown)
    # ``busy``: another delivery holds the run and covers it (if that one dies, its own row is swept); ``nothing``
    # or ``stale``: not owed any more. A run left without its resume either way is the watchdog's.
    return Done(delivery.outcome)


# --------------------------------------------------------------------------- an abandoned case's runs


def _abandon_exhausted(item: OutboxItem) -> None:
    """The runtime could not be told in time: the run is ``abandoned`` in Revive, and the case's timeline says
    its runtime still waits (the failed row in the admin's outbox list can be retried)."""
    case = RecoveryCase.objects.filter(pk=item.payload["case_id"]).first()
    audit_record(
        actor=ACTOR,
        action="run.abandon_not_told",
        entity_type="run",
        entity_id=item.run_id,
        case=case,
        run_id=item.run_id,
        connection_id=case.connection_id if case else "",
        outcome="error",
        arguments={"error": f"not told after {item.attempts} attempts: {item.last_error}"[:1000], "outbox": item.key},
    )


@outbox_handler(
    services.ABANDON_RUN,
    max_attempts=lambda: settings.REVIVE_RESUME_MAX_RETRIES + 1,
    backoff_first=1.0,
    backoff_max=60.0,
    on_exhausted=_abandon_exhausted,
)
def _handle_abandon(item: OutboxItem) -> Done | Retry:
    p = item.payload
    told = resume.run_abandon_tell(run_id=p["run_id"], case_id=p["case_id"], reason=p.get("reason", ""))
    if told.outcome == "retry":
        return Retry(error=f"retry: {told.detail.get('message', '')}"[:1000])
    return Done(told.outcome)


# --------------------------------------------------------------------------- 5. watch


@dataclasses.dataclass
class WatchReport:
    redriven: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    released: list[str] = dataclasses.field(default_factory=list)
    continued: list[str] = dataclasses.field(default_factory=list)
    finished: list[str] = dataclasses.field(default_factory=list)


def _last_progress(case_run: CaseRun) -> datetime:
    """The latest of the run's resume (or its release, before any) and its ledger's last write."""
    ledger = Action.objects.filter(run_id=case_run.run_id).aggregate(at=Max("updated_at"))["at"]
    return max(t for t in (case_run.resume_sent_at or case_run.case.state_changed_at, ledger) if t is not None)


def _delivery_owed(run_id: str) -> bool:
    return OutboxItem.objects.filter(kind=services.RESUME_RUN, run_id=run_id, state=OutboxItem.State.PENDING).exists()


def run_redrive(*, case_run_id: int, now: datetime | None = None, actor: str = WATCH_ACTOR) -> str:
    """Re-drive one stalled run, or fail its case once its re-drives are used up. Returns what was done:
    ``redriven``, ``failed`` or ``moving`` (it made progress meanwhile, or was settled)."""
    now = now or timezone.now()
    stall = timedelta(seconds=settings.REVIVE_RUN_STALL_SECONDS)
    case_run = CaseRun.objects.select_related("case", "run").get(pk=case_run_id)
    case = case_run.case
    if case_run.resumed_at is not None or now - _last_progress(case_run) < stall or _delivery_owed(case_run.run_id):
        return "moving"
    # Reaping and reconciling first: an action whose worker died is ``ambiguous`` and then, where a reconciler
    # exists, settled -- so the re-driven run replays or re-executes it instead of meeting ACTION_IN_PROGRESS.
    services.reap_stale_actions(now=now, actor=actor, run_id=case_run.run_id)
    try:
        resume.run_reconcile(run_id=case_run.run_id, case=case, actor=actor)
    except resume.ReconcilerUnavailable:
        pass  # the re-driven worker's reconcile callback, or the next watch, settles it
    with transaction.atomic():
        # The module's lock order: run, then case run, then case.
        Run.objects.select_for_update(no_key=True).filter(pk=case_run.run_id).values_list("pk", flat=True).first()
        locked = CaseRun.objects.select_for_update(no_key=True).select_related("case").get(pk=case_run_id)
        case = services.case_lock(locked.case_id)
        # Measured before our own reaping touched the ledger; a re-drive or a resume meanwhile moves the mark.
        if (
            locked.resumed_at is not None
            or case.state != CaseState.RESUMING
            or locked.resume_sent_at != case_run.resume_sent_at
        ):
            return "moving"
        if locked.resume_attempts >= settings.REVIVE_RESUME_MAX_ATTEMPTS:
            services.run_park_again(
                run_id=locked.run_id, actor=actor, reason="no progress after its resume and every re-drive"
            )
            services.case_resume_fail(
                case_id=case.pk,
                actor=actor,
                reason=(
                    f"run {locked.run_id} made no progress past its parked action for "
                    f"{settings.REVIVE_RUN_STALL_SECONDS} s after {locked.resume_attempts + 1} resume deliveries"
                ),
                detail={"run_id": locked.run_id, "re_drives": locked.resume_attempts},
            )
            return "failed"
        attempt = locked.resume_attempts + 1
        CaseRun.objects.filter(pk=locked.pk).update(resume_attempts=attempt, resume_sent_at=now)
        audit_record(
            actor=actor,
            action="run.redriven",
            entity_type="run",
            entity_id=locked.run_id,
            case=case,
            run_id=locked.run_id,
            connection_id=case.connection_id,
            arguments={
                "re_drive": attempt,
                "of": settings.REVIVE_RESUME_MAX_ATTEMPTS,
                "stalled_seconds": settings.REVIVE_RUN_STALL_SECONDS,
            },
        )
        services.run_resume_owe(run_id=locked.run_id, case=case, attempt=attempt)
    return "redriven"


def _stopped_runs(now: datetime):
    """Runs Revive executes whose execution started before the stall window and never returned (``Run.hosted_at``),
    no delivery holding or owing them, past every parked action (a run still waiting on a case is ``run_redrive``'s),
    and not already handed to an operator (a ``resume_failed`` case)."""
    quiet = now - timedelta(seconds=settings.REVIVE_RUN_STALL_SECONDS)
    waiting = CaseRun.objects.filter(
        run_id=OuterRef("pk"), resumed_at__isnull=True, case__state__in=BLOCKING_CASE_STATES + RELEASED_CASE_STATES
    )
    failed = CaseRun.objects.filter(run_id=OuterRef("pk"), case__state=CaseState.RESUME_FAILED)
    owed = OutboxItem.objects.filter(kind=services.RESUME_RUN, run_id=OuterRef("pk"), state=OutboxItem.State.PENDING)
    return (
        Run.objects.filter(state=Run.State.ACTIVE, hosted_at__lt=quiet)
        .filter(Q(resume_claimed_until__isnull=True) | Q(resume_claimed_until__lt=now))
        .exclude(Exists(waiting))
        .exclude(Exists(failed))
        .exclude(Exists(owed))
    )


def run_continue(*, run_id: str, now: datetime | None = None, actor: str = WATCH_ACTOR) -> str:
    """Continue a run Revive executes whose execution stopped after it went past its parked action (the worker
    running it died, or the delivery ended without it) -- from its latest checkpoint, the ledger replaying what had
    committed -- or, after ``REVIVE_RESUME_MAX_ATTEMPTS`` continuations without the execution returning, put its
    case in ``resume_failed`` for an operator, whose retry continues it. Returns ``continued``, ``failed`` or
    ``moving`` (it made progress, or is no longer stopped)."""
    now = now or timezone.now()
    stall = timedelta(seconds=settings.REVIVE_RUN_STALL_SECONDS)
    case_run = (
        CaseRun.objects.filter(run_id=run_id, resumed_at__isnull=False)
        .select_related("case")
        .order_by("-resumed_at", "-pk")
        .first()
    )
    stopped = _stopped_runs(now).filter(pk=run_id).values_list("hosted_at", flat=True).first()
    ledger = Action.objects.filter(run_id=run_id).aggregate(at=Max("updated_at"))["at"]
    if case_run is None or stopped is None or (ledger is not None and now - ledger < stall):
        return "moving"
    services.reap_stale_actions(now=now, actor=actor, run_id=run_id)
    try:
        resume.run_reconcile(run_id=run_id, case=case_run.case, actor=actor)
    except resume.ReconcilerUnavailable:
        pass  # the continued run's reconcile callback, or the next watch, settles it
    with transaction.atomic():
        # The module's lock order: run, then case.
        run = Run.objects.select_for_update(no_key=True).filter(pk=run_id).first()
        # Still stopped since the same moment: an execution meanwhile (a delivery, a continuation) moves the mark.
        if run is None or run.hosted_at != stopped or not _stopped_runs(now).filter(pk=run_id).exists():
            return "moving"
        case = services.case_lock(case_run.case_id)
        if run.continuations >= settings.REVIVE_RESUME_MAX_ATTEMPTS:
            services.case_resume_fail(
                case_id=case.pk,
                actor=actor,
                stopped_run=run_id,
                reason=(
                    f"run {run_id} stopped after it went past its parked action; {run.continuations} "
                    f"continuation(s) from its latest checkpoint did not finish it"
                ),
                detail={"run_id": run_id, "continuations": run.continuations},
            )
            return "failed"
        continuation = run.continuations + 1
        audit_record(
            actor=actor,
            action="run.continued",
            entity_type="run",
            entity_id=run_id,
            case=case,
            run_id=run_id,
            connection_id=case.connection_id,
            arguments={
                "continuation": continuation,
                "of": settings.REVIVE_RESUME_MAX_ATTEMPTS,
                "stopped_since": run.hosted_at.isoformat(),
            },
        )
        services.run_continue_owe(run_id=run_id, case=case, continuation=continuation)
        Run.objects.filter(pk=run_id).update(continuations=continuation, hosted_at=now)
    return "continued"


def runs_watch(*, now: datetime | None = None, limit: int = 500) -> WatchReport:
    """Watch every released run until it is past its parked action (the beat task ``cases.pipeline_watch``)."""
    now = now or timezone.now()
    report = WatchReport()
    quiet = now - timedelta(seconds=settings.REVIVE_RUN_STALL_SECONDS)
    # Resumed runs quiet since their resume, and released runs that never had one (a delivery that ended without
    # reaching them) -- both re-driven the same way.
    watched = (
        CaseRun.objects.filter(resumed_at__isnull=True, case__state=CaseState.RESUMING, run__state=Run.State.ACTIVE)
        .filter(Q(resume_sent_at__lt=quiet) | Q(resume_sent_at__isnull=True, case__state_changed_at__lt=quiet))
        .order_by("run_id", "pk")
        .values_list("pk", "run_id")[:limit]
    )
    seen: set[str] = set()
    for pk, run_id in watched:
        if run_id in seen:
            continue  # one re-drive covers every case of the run
        seen.add(run_id)
        outcome = run_redrive(case_run_id=pk, now=now)
        if outcome == "redriven":
            report.redriven.append(run_id)
        elif outcome == "failed":
            report.failed.append(run_id)
    # The backstop of the release: a run still parked although none of its cases blocks it any more.
    stranded = (
        CaseRun.objects.filter(resumed_at__isnull=True, case__state=CaseState.RESUMING, run__state=Run.State.PARKED)
        .exclude(run__case_runs__case__state__in=BLOCKING_CASE_STATES, run__case_runs__resumed_at__isnull=True)
        .values_list("case_id", flat=True)
        .distinct()[:limit]
    )
    for case_pk in stranded:
        report.released.extend(services.case_runs_release(case_id=case_pk, actor=WATCH_ACTOR))
    # Past their parked action, runs Revive executes itself are watched until their execution returns.
    for run_id in _stopped_runs(now).order_by("hosted_at").values_list("pk", flat=True)[:limit]:
        outcome = run_continue(run_id=run_id, now=now)
        if outcome == "continued":
            report.continued.append(run_id)
        elif outcome == "failed":
            report.failed.append(run_id)
    for case_pk in (
        RecoveryCase.objects.filter(state=CaseState.RESUMING)
        .exclude(case_runs__resumed_at__isnull=True)
        .values_list("pk", flat=True)[:limit]
    ):
        if services.case_finish_if_resumed(case_id=case_pk, actor=WATCH_ACTOR):
            report.finished.append(str(case_pk))
    return report
