"""The pipeline's owed steps: outbox rows written in the caller's transaction, so a step exists exactly when the
change owing it commits (their handlers are registered by ``cases.pipeline``).
"""

from __future__ import annotations

from django.conf import settings
from django.db.models import Count, Exists, OuterRef

from audit.redaction import redact

from .. import outbox
from ..models import OPEN_CASE_STATES, CaseRun, OutboxItem, RecoveryCase, Run

# The pipeline's outbox kinds (their handlers are registered by ``cases.pipeline``).
RECONCILE_CASE = "case.reconcile"
RESUME_RUN = "run.resume"
ABANDON_RUN = "run.abandon"


def run_resume_owe(*, run_id: str, case: RecoveryCase, attempt: int, retry: bool = False) -> None:
    """Owe ``run_id`` one resume delivery for ``case`` (re-drive ``attempt``): an outbox row in the caller's
    transaction, so the delivery exists exactly when the release (or re-drive) that owes it commits. The row's
    key names the release, so repeating one owes nothing twice; an operator's ``retry`` is a new release."""
    run_resume_owe_many(run_ids=[run_id], case=case, attempt=attempt, retry=retry)


def run_resume_owe_many(*, run_ids: list[str], case: RecoveryCase, attempt: int, retry: bool = False) -> None:
    """``run_resume_owe`` for several runs of one case, in a fixed number of statements."""
    if not run_ids:
        return
    generation = case.resumed_generation
    earlier: dict[str, int] = {}
    if retry:
        earlier = dict(
            OutboxItem.objects.filter(kind=RESUME_RUN, case=case, run_id__in=run_ids)
            .order_by()
            .values_list("run_id")
            .annotate(n=Count("pk"))
            .values_list("run_id", "n")
        )
    steps = []
    for run_id in run_ids:
        key = f"{RESUME_RUN}:{run_id}:{case.pk}:g{generation}:a{attempt}"
        if retry:
            key += f":retry{earlier.get(run_id, 0)}"
        steps.append(
            (key, {"run_id": run_id, "case_id": case.pk, "generation": generation, "attempt": attempt}, run_id)
        )
    outbox.outbox_put_many(kind=RESUME_RUN, steps=steps, case=case)


def run_continue_owe(*, run_id: str, case: RecoveryCase, continuation: int, retry: bool = False) -> None:
    """Owe a run Revive executes, stopped after its parked action, one continuation from its latest checkpoint (a
    ``run.resume`` row whose ``attempt`` is the continuation's number: the delivery continues the run, see
    ``resume.run_resume_deliver``). Keyed by the stop (the run's ``hosted_at``) and the number, so each stop's
    continuations are owed once; an operator's ``retry`` is a new one."""
    run = Run.objects.only("hosted_at").get(pk=run_id)
    stop = f"{run.hosted_at.timestamp():.6f}" if run.hosted_at else "-"
    key = f"{RESUME_RUN}:{run_id}:{case.pk}:g{case.resumed_generation}:c{continuation}:{stop}"
    if retry:
        key += f":retry{OutboxItem.objects.filter(kind=RESUME_RUN, case=case, run_id=run_id).count()}"
    outbox.outbox_put(
        kind=RESUME_RUN,
        key=key,
        run_id=run_id,
        case=case,
        payload={"run_id": run_id, "case_id": case.pk, "generation": case.resumed_generation, "attempt": continuation},
    )


def case_reconcile_owe(*, case: RecoveryCase) -> None:
    """Owe the reconcile-and-release step of a reauthorized case (in the caller's transaction)."""
    generation = case.resumed_generation
    outbox.outbox_put(
        kind=RECONCILE_CASE,
        key=f"{RECONCILE_CASE}:{case.pk}:g{generation}",
        payload={"case_id": case.pk, "generation": generation},
        case=case,
    )


def runs_abandon_owe(*, case: RecoveryCase, reason: str) -> list[str]:
    """Owe each run the abandoned ``case`` leaves parked, and that no other open case holds, the notice that its
    case was abandoned (``run.abandon``, dispatched after ``REVIVE_ABANDON_NOTICE_DELAY_SECONDS``). A run another
    open case still holds stays parked for that case. Returns the runs owed a notice.

    In the abandoning transaction; a second abandon after a reopen owes a new notice (the key counts them).
    """
    held_elsewhere = CaseRun.objects.filter(
        run_id=OuterRef("run_id"), resumed_at__isnull=True, case__state__in=OPEN_CASE_STATES
    ).exclude(case_id=case.pk)
    run_ids = list(
        CaseRun.objects.filter(case=case, resumed_at__isnull=True, run__state=Run.State.PARKED)
        .annotate(held=Exists(held_elsewhere))
        .filter(held=False)
        .order_by("run_id")
        .values_list("run_id", flat=True)
        .distinct()
    )
    if not run_ids:
        return []
    earlier = dict(
        OutboxItem.objects.filter(kind=ABANDON_RUN, case=case, run_id__in=run_ids)
        .order_by()
        .values_list("run_id")
        .annotate(n=Count("pk"))
        .values_list("run_id", "n")
    )
    for run_id in run_ids:
        outbox.outbox_put(
            kind=ABANDON_RUN,
            key=f"{ABANDON_RUN}:{run_id}:{case.pk}:n{earlier.get(run_id, 0)}",
            payload={"run_id": run_id, "case_id": case.pk, "reason": redact(reason)[:500]},
            case=case,
            run_id=run_id,
            delay=settings.REVIVE_ABANDON_NOTICE_DELAY_SECONDS,
        )
    return run_ids
