"""Runs and their checkpoints: registering them, a run going live again or past its parked action, a released
run parked again, and a parked run claimed for its abandonment notice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import audit_record

from ..errors import RunConflict
from ..models import (
    DEFAULT_NAMESPACE,
    OPEN_CASE_STATES,
    RELEASED_CASE_STATES,
    Action,
    CaseRun,
    CaseState,
    Checkpoint,
    RecoveryCase,
    Run,
)
from .cases import _case_finish_if_resumed, case_transition
from .common import _get_run, case_lock


@transaction.atomic
def run_register(
    *,
    run_id: str,
    runtime: str,
    runtime_ref: dict[str, Any],
    workflow_name: str,
    actor: str,
    namespace: str = DEFAULT_NAMESPACE,
) -> Run:
    """Register a run; registering the same run again returns it (and refreshes the runtime reference).

    ``run_id`` is the stored id (``cases.namespaces.qualify``), so a run is only ever found again in its namespace.
    """
    run = Run.objects.select_for_update(no_key=True).filter(pk=run_id).first()
    if run is not None:
        if run.runtime != runtime or run.workflow_name != workflow_name:
            raise RunConflict(data={"run_id": run_id, "runtime": run.runtime, "workflow_name": run.workflow_name})
        if runtime_ref and runtime_ref != run.runtime_ref:
            before = run.runtime_ref
            run.runtime_ref = runtime_ref
            run.save(update_fields=["runtime_ref", "updated_at"])
            audit_record(
                actor=actor,
                action="run.runtime_ref_updated",
                entity_type="run",
                entity_id=run.pk,
                run_id=run.pk,
                before={"runtime_ref": before},
                after={"runtime_ref": runtime_ref},
            )
        return run
    try:
        with transaction.atomic():
            run = Run.objects.create(
                id=run_id, namespace_id=namespace, runtime=runtime, runtime_ref=runtime_ref, workflow_name=workflow_name
            )
    except IntegrityError:
        return run_register(
            run_id=run_id,
            runtime=runtime,
            runtime_ref=runtime_ref,
            workflow_name=workflow_name,
            actor=actor,
            namespace=namespace,
        )
    audit_record(
        actor=actor,
        action="run.registered",
        entity_type="run",
        entity_id=run.pk,
        run_id=run.pk,
        after={"state": run.state, "runtime": runtime, "workflow_name": workflow_name, "runtime_ref": runtime_ref},
    )
    return run


def _checkpoint_get_or_create(
    *, run: Run, checkpoint_id: str, label: str, runtime_ref: dict[str, Any], actor: str
) -> Checkpoint:
    cp = Checkpoint.objects.filter(run=run, checkpoint_id=checkpoint_id).first()
    if cp is not None:
        return cp
    try:
        with transaction.atomic():
            cp = Checkpoint.objects.create(
                run=run, checkpoint_id=checkpoint_id, label=label or checkpoint_id, runtime_ref=runtime_ref
            )
    except IntegrityError:
        return Checkpoint.objects.get(run=run, checkpoint_id=checkpoint_id)
    audit_record(
        actor=actor,
        action="checkpoint.recorded",
        entity_type="checkpoint",
        entity_id=f"{run.pk}/{checkpoint_id}",
        run_id=run.pk,
        after={"checkpoint_id": checkpoint_id, "label": cp.label, "runtime_ref": runtime_ref},
    )
    return cp


@transaction.atomic
def checkpoint_record(
    *, run_id: str, checkpoint_id: str, label: str = "", runtime_ref: dict[str, Any] | None = None, actor: str
) -> Checkpoint:
    """Record a saved point of a run (idempotent per checkpoint id)."""
    run = _get_run(run_id)
    return _checkpoint_get_or_create(
        run=run, checkpoint_id=checkpoint_id, label=label, runtime_ref=runtime_ref or {}, actor=actor
    )


def _run_relive(*, run: Run, actor: str) -> None:
    """A parked run whose cases have all been released talks to Revive with a current generation: it is live again.

    This is the case after a resume that was reported failed but reached the run anyway (a runtime that completed
    a timed-out call later): the run proceeds, and each ``resume_failed`` case of the run follows it back to
    ``resuming`` (it becomes ``resumed`` once the run is past its parked action).
    """
    if not Run.objects.filter(pk=run.pk, state=Run.State.PARKED).update(
        state=Run.State.ACTIVE, updated_at=timezone.now()
    ):
        return
    run.state = Run.State.ACTIVE
    audit_record(
        actor=actor,
        action="run.unparked",
        entity_type="run",
        entity_id=run.pk,
        run_id=run.pk,
        before={"state": Run.State.PARKED},
        after={"state": Run.State.ACTIVE},
        arguments={"reason": "the run came back with a current generation after its cases were released"},
    )
    for case_pk in sorted(
        set(
            CaseRun.objects.filter(run=run, resumed_at__isnull=True, case__state=CaseState.RESUME_FAILED).values_list(
                "case_id", flat=True
            )
        )
    ):
        case = case_lock(case_pk)
        if case.state == CaseState.RESUME_FAILED:
            case_transition(
                case,
                to=CaseState.RESUMING,
                actor=actor,
                arguments={"reason": f"run {run.pk} is live again with the new generation"},
            )


def _run_went_past(*, run_id: str, action: Action, generation: int, actor: str, how: str) -> list[str]:
    """``action`` of a run committed (or replayed) with ``generation``: the run is past the action it was parked on
    for each released case of that connection that parked it on this action (or on no action at all).

    Marks those case runs resumed and finishes each case whose runs are all past (``_case_finish_if_resumed``).
    Case runs are locked before their cases, in the package's lock order (``cases.services``). Returns the cases
    that became resumed.
    """
    if generation < 2:
        return []  # no reconnect ever happened on this connection: nothing can be waiting for this run
    pending = list(
        CaseRun.objects.select_for_update(no_key=True)
        .filter(
            run_id=run_id,
            resumed_at__isnull=True,
            case__state__in=RELEASED_CASE_STATES,
            case__connection_id=action.connection_id,
            case__resumed_generation__lte=generation,
        )
        .filter(Q(action=action) | Q(action__isnull=True))
        .order_by("pk")
    )
    if not pending:
        return []
    now = timezone.now()
    CaseRun.objects.filter(pk__in=[cr.pk for cr in pending]).update(resumed_at=now)
    finished = []
    for case_pk in sorted({cr.case_id for cr in pending}):
        case = case_lock(case_pk)
        audit_record(
            actor=actor,
            action="run.resumed",
            entity_type="run",
            entity_id=run_id,
            case=case,
            run_id=run_id,
            connection_id=case.connection_id,
            after={"generation": generation, "past": f"{run_id}/{action.action_key}", "how": how},
        )
        if case.state == CaseState.RESUME_FAILED:
            case_transition(
                case,
                to=CaseState.RESUMING,
                actor=actor,
                arguments={"reason": f"run {run_id} went past its parked action"},
            )
        if _case_finish_if_resumed(case, actor=actor):
            finished.append(case.reference or "")
    return finished


def _abandoned_by(run_id: str) -> str | None:
    """The case whose abandonment a run was told (the reference of its ``run.abandoned`` event)."""
    case_pk = (
        AuditEvent.objects.filter(run_id=run_id, action="run.abandoned")
        .order_by("-occurred_at", "-id")
        .values_list("case_id", flat=True)
        .first()
    )
    return RecoveryCase.objects.filter(pk=case_pk).values_list("reference", flat=True).first() if case_pk else None


@dataclass(frozen=True)
class AbandonClaim:
    """Whether a run may be told its case was abandoned: ``claimed`` (now ``abandoned`` in Revive, by this notice),
    or why not (``reopened``, ``not parked``, ``held``: another open case still holds it, ``gone``)."""

    outcome: str
    case: RecoveryCase | None = None
    detail: str = ""


@transaction.atomic
def run_abandon_claim(*, run_id: str, case_id: int, actor: str, reason: str = "") -> AbandonClaim:
    """Take a parked run out of Revive's hands before its runtime is told that ``case_id`` was abandoned.

    Under the run's and the case's locks (the package's lock order: run, then case), so a reopen and a claim never
    both succeed: a reopened case is never told, and a run once claimed is ``abandoned`` -- no longer parked,
    so no reopen brings it back. Claiming again (a retried notice) answers ``claimed`` without a second event.
    """
    run = Run.objects.select_for_update(no_key=True).filter(pk=run_id).first()
    if run is None:
        return AbandonClaim("gone")
    case = case_lock(case_id)
    if run.state == Run.State.ABANDONED:
        told_for_us = AuditEvent.objects.filter(run_id=run_id, action="run.abandoned", case_id=case.pk).exists()
        return AbandonClaim("claimed" if told_for_us else "not parked", case)
    if case.state != CaseState.ABANDONED:
        return AbandonClaim("reopened", case)
    if run.state != Run.State.PARKED:
        return AbandonClaim("not parked", case, run.state)
    holder = (
        CaseRun.objects.filter(run_id=run_id, resumed_at__isnull=True, case__state__in=OPEN_CASE_STATES)
        .exclude(case_id=case.pk)
        .values_list("case__reference", flat=True)
        .first()
    )
    if holder is not None:
        return AbandonClaim("held", case, holder)
    Run.objects.filter(pk=run_id).update(state=Run.State.ABANDONED, updated_at=timezone.now())
    audit_record(
        actor=actor,
        action="run.abandoned",
        entity_type="run",
        entity_id=run_id,
        case=case,
        run_id=run_id,
        connection_id=case.connection_id,
        before={"state": Run.State.PARKED},
        after={"state": Run.State.ABANDONED},
        arguments={"reason": reason, "case_id": case.reference},
    )
    return AbandonClaim("claimed", case)


@transaction.atomic
def run_park_again(*, run_id: str, actor: str, reason: str) -> None:
    """A released run waits again: its resume failed (its case is ``resume_failed``; an operator's retry releases it
    with a fresh delivery, and the run coming back by itself proceeds, ``_run_relive``), or a reconciliation held its
    case for approval (``_hold_for_approval``). The caller holds the run's lock (or takes no case lock after this)."""
    if Run.objects.filter(pk=run_id, state=Run.State.ACTIVE).update(
        state=Run.State.PARKED, resume_claimed_until=None, updated_at=timezone.now()
    ):
        audit_record(
            actor=actor,
            action="run.parked",
            entity_type="run",
            entity_id=run_id,
            run_id=run_id,
            before={"state": Run.State.ACTIVE},
            after={"state": Run.State.PARKED},
            arguments={"reason": reason},
        )
