"""A case's lifecycle: its one transition function (``cases.transitions.CASE_TRANSITIONS``), runs joining it,
re-authorization, the release of its runs and the end of their resume.
"""

from __future__ import annotations

from typing import Any

from django.db import connection as db
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from audit.services import audit_record, audit_record_many

from .. import selectors, signals
from ..errors import CaseTransitionNotAllowed
from ..models import (
    BLOCKING_CASE_STATES,
    RELEASED_CASE_STATES,
    Action,
    CaseRun,
    CaseState,
    Checkpoint,
    RecoveryCase,
    Run,
)
from ..transitions import CASE_TRANSITIONS
from .approvals import case_resume_approval
from .common import _case_connection_id, _lock_case_runs_then_case, _lock_connection, case_lock
from .connections import _lease_advance
from .owed import run_continue_owe, run_resume_owe_many

# The four live transitions of the incident record.
LIVE_TRANSITIONS = {
    "case.opened": (1, "grant rejected"),
    "case.reauthorized": (2, "access restored"),
    "lease.advanced": (3, "lease advanced"),
    "case.resumed": (4, "execution resumed"),
}


def case_transition(
    case: RecoveryCase, *, to: str, actor: str, arguments: dict[str, Any] | None = None, **changes: Any
) -> RecoveryCase:
    """Move a locked case; the caller holds its row lock inside the transaction."""
    if not db.in_atomic_block:
        raise RuntimeError("case_transition must run inside a transaction holding the case's row lock")
    if to not in CASE_TRANSITIONS[case.state]:
        raise CaseTransitionNotAllowed(
            f"Case {case.reference} is {case.state}; it cannot move to {to}.",
            data={"case_id": case.reference, "state": case.state, "to": to},
        )
    before = case.state
    case.state = to
    case.state_changed_at = timezone.now()
    if to in (CaseState.CLOSED, CaseState.ABANDONED):
        case.closed_at = case.state_changed_at
    for name, value in changes.items():
        setattr(case, name, value)
    case.save()
    audit_record(
        actor=actor,
        action=f"case.{to}",
        entity_type="case",
        entity_id=case.reference or "",
        case=case,
        run_id=case.run_id or "",
        connection_id=case.connection_id,
        before={"state": before},
        after={"state": to, **{k: v for k, v in changes.items() if isinstance(v, (str, int, type(None)))}},
        arguments=arguments,
    )
    signals.case_state_changed.send(sender=RecoveryCase, case=case, before=before, actor=actor)
    return case


def _superseded_case_runs(*, run_id: Any, connection_id: str, generation: int):
    """The run's places in released cases of the connection that a case for ``generation`` takes over: their new
    generation was rejected in turn (``_case_join``)."""
    return CaseRun.objects.filter(
        run_id=run_id,
        resumed_at__isnull=True,
        case__state__in=RELEASED_CASE_STATES,
        case__connection_id=connection_id,
        case__resumed_generation__lte=generation,
    )


def _case_join(
    *,
    case: RecoveryCase,
    run: Run,
    checkpoint: Checkpoint | None,
    action: Action | None,
    actor: str,
    superseded: bool = True,
) -> None:
    """Block ``run`` on ``case``. A released case of the same connection whose new generation was rejected in turn
    is over for this run: the run did come back with it, and this case takes over (so the older one can finish).

    ``superseded=False``: the caller has just read that there is no such case (``_superseded_case_runs``)."""
    superseded_rows = (
        list(
            _superseded_case_runs(
                run_id=run.pk, connection_id=case.connection_id, generation=case.rejected_generation
            ).values_list("pk", "case_id")
        )
        if superseded
        else []
    )
    CaseRun.objects.create(case=case, run=run, checkpoint=checkpoint, action=action)
    if case.run_id is None:  # a case opened before any run hit it (a broker's signal): the first run to join is its run
        RecoveryCase.objects.filter(pk=case.pk, run__isnull=True).update(run=run, checkpoint=checkpoint, action=action)
        case.run, case.checkpoint, case.action = run, checkpoint, action
    if superseded_rows:
        CaseRun.objects.filter(pk__in=[pk for pk, _ in superseded_rows]).update(resumed_at=timezone.now())
        for case_pk in sorted({c for _, c in superseded_rows}):
            older = case_lock(case_pk)
            audit_record(
                actor=actor,
                action="run.resumed",
                entity_type="run",
                entity_id=run.pk,
                case=older,
                run_id=run.pk,
                connection_id=older.connection_id,
                after={"generation": case.rejected_generation, "how": "rejected again", "next_case": case.reference},
            )
            if older.state == CaseState.RESUME_FAILED:
                case_transition(
                    older,
                    to=CaseState.RESUMING,
                    actor=actor,
                    arguments={"reason": f"run {run.pk} came back and is now blocked by {case.reference}"},
                )
            _case_finish_if_resumed(older, actor=actor)
    if run.state != Run.State.PARKED:
        Run.objects.filter(pk=run.pk).update(state=Run.State.PARKED, updated_at=timezone.now())
        audit_record(
            actor=actor,
            action="run.parked",
            entity_type="run",
            entity_id=run.pk,
            case=case,
            run_id=run.pk,
            connection_id=case.connection_id,
            before={"state": run.state},
            after={"state": Run.State.PARKED},
            arguments={
                "checkpoint": checkpoint.checkpoint_id if checkpoint else None,
                "action_key": action.action_key if action else None,
            },
        )
        run.state = Run.State.PARKED


def _case_finish_if_resumed(case: RecoveryCase, *, actor: str) -> bool:
    """The one rule of ``resumed``: a released case is resumed when every run it blocked is past the action it was
    parked on under the new generation (``CaseRun.resumed_at``). The caller holds the case's row lock, so of two
    last runs going past together one sees the other's mark."""
    if (
        CaseState.RESUMED not in CASE_TRANSITIONS[case.state]
        or CaseRun.objects.filter(case=case, resumed_at__isnull=True).exists()
    ):
        return False
    case_transition(case, to=CaseState.RESUMED, actor=actor)
    return True


def case_finish_if_resumed(*, case_id: str | int, actor: str) -> bool:
    """``_case_finish_if_resumed`` in its own transaction (the watchdog, after it settled a case's runs)."""
    with transaction.atomic():
        return _case_finish_if_resumed(case_lock(case_id), actor=actor)


@transaction.atomic
def case_await_owner(*, case_id: str | int, actor: str) -> RecoveryCase:
    """The owner has been asked to reconnect."""
    case = case_lock(case_id)
    if case.state == CaseState.AWAITING_OWNER:
        return case
    return case_transition(case, to=CaseState.AWAITING_OWNER, actor=actor)


def case_reauthorize(
    *, case_id: str | int, actor: str, evidence: dict[str, Any] | None = None, locked: RecoveryCase | None = None
) -> RecoveryCase:
    """Access is restored for the case's connection: advance the generation by one and mark the case reauthorized.

    Repeating it after it succeeded returns the case unchanged. The connection is locked
    before the case, in the package's lock order (``cases.services``).

    ``locked``: the case, whose row lock the caller's transaction already holds (the owner's reconnect locks the
    case first). It is not read again, the connection's lock is taken by the advance itself (``_lease_advance``),
    and no savepoint is opened: the caller's transaction is the unit that commits or rolls back.
    """
    if locked is not None:
        if not transaction.get_connection().in_atomic_block:
            raise RuntimeError("case_reauthorize(locked=...) runs in the transaction holding the case's lock")
        return _case_reauthorize(locked, actor=actor, evidence=evidence)
    with transaction.atomic():
        _lock_connection(_case_connection_id(case_id), exclusive=True)
        return _case_reauthorize(case_lock(case_id), actor=actor, evidence=evidence)


def _case_reauthorize(case: RecoveryCase, *, actor: str, evidence: dict[str, Any] | None) -> RecoveryCase:
    if case.state == CaseState.REAUTHORIZED or (
        case.resumed_generation
        and case.state
        in (CaseState.RECONCILING, CaseState.AWAITING_APPROVAL, CaseState.RESUMING, CaseState.RESUMED, CaseState.CLOSED)
    ):
        return case
    # 02 access restored (``case_transition`` refuses a state the table does not allow), then 03 lease advanced:
    # both in this one transaction.
    case_transition(
        case,
        to=CaseState.REAUTHORIZED,
        actor=actor,
        arguments=evidence or {},
        resumed_generation=case.rejected_generation + 1,
    )
    _lease_advance(connection_id=case.connection_id, from_generation=case.rejected_generation, actor=actor, case=case)
    return case


@transaction.atomic
def case_resume_begin(*, case_id: str | int, actor: str, defer_ambiguous: bool = False) -> RecoveryCase:
    """Release the case's runs: ambiguous actions first go to reconciliation, otherwise the case moves to ``resuming``.

    When ``REVIVE_RESUME_APPROVAL`` asks for an operator (``resume_approval_required``), a ``reauthorized`` or
    ``reconciling`` case moves to ``awaiting_approval`` instead and its runs stay parked; only ``case_approve``
    releases it from there.

    With ``defer_ambiguous`` the case resumes although some actions are still ambiguous: their settling is left
    to the resumed worker's ``reconcile`` callback (``action_begin`` answers ``reconcile`` for an ambiguous
    action, so none of them can execute again before it is settled).

    Each run whose every blocking case has been released goes back to ``active`` and is owed one resume
    delivery (an outbox row, in this transaction). A ``resume_failed`` case is released again the same way (the
    operator's retry). Repeating the call changes nothing.
    """
    case = _lock_case_runs_then_case(case_id)
    if case.state in (CaseState.RESUMING, CaseState.RESUMED, CaseState.CLOSED):
        return case
    if case.state == CaseState.AWAITING_APPROVAL:
        return case  # only an operator's case_approve releases it
    ambiguous = list(selectors.case_ambiguous_actions(case).values_list("run_id", "action_key"))
    if ambiguous and not defer_ambiguous and case.state != CaseState.RESUME_FAILED:
        if case.state != CaseState.RECONCILING:
            case_transition(case, to=CaseState.RECONCILING, actor=actor)
        return case
    if case.state in (CaseState.REAUTHORIZED, CaseState.RECONCILING):
        approval = case_resume_approval(case)
        if approval.required:
            return case_transition(
                case,
                to=CaseState.AWAITING_APPROVAL,
                actor=actor,
                arguments={"policy": approval.policy, "reasons": list(approval.reasons)},
            )
    retry = case.state == CaseState.RESUME_FAILED
    case_transition(
        case,
        to=CaseState.RESUMING,
        actor=actor,
        arguments={"reconcile_in_worker": [f"{r}/{k}" for r, k in ambiguous]} if ambiguous else None,
    )
    _case_release_runs(case, actor=actor, retry=retry)
    if not CaseRun.objects.filter(case=case).exists():  # opened by a broker's signal; no run ever waited on it
        case_transition(case, to=CaseState.RESUMED, actor=actor, arguments={"runs": 0})
    return case


def _case_release_runs(case: RecoveryCase, *, actor: str, retry: bool = False) -> list[str]:
    """Unpark each run of a case moving to ``resuming`` that no other case still blocks, and owe each released run
    that has not had its resume (every one, for a ``retry``) one delivery. The caller holds the runs' locks
    (``_lock_case_runs_then_case``). Returns the runs owed a delivery.

    Set-based: one query finds the runs and whether another case blocks each, then one UPDATE unparks them all,
    one INSERT audits them, one UPDATE resets the re-drive count of those whose resume failed before, and the
    deliveries are owed together (``run_resume_owe_many``): the same statements for 10 runs as for 10,000.
    """
    blocked_elsewhere = CaseRun.objects.filter(
        run_id=OuterRef("run_id"), resumed_at__isnull=True, case__state__in=BLOCKING_CASE_STATES
    ).exclude(case_id=case.pk)
    rows = list(
        CaseRun.objects.filter(case=case, resumed_at__isnull=True)
        .annotate(blocked=Exists(blocked_elsewhere))
        .filter(blocked=False)
        .filter(run__state__in=(Run.State.PARKED, Run.State.ACTIVE))
        .order_by("run_id")
        .values_list("pk", "run_id", "run__state", "resume_sent_at")
    )
    parked = [run_id for _, run_id, state, _ in rows if state == Run.State.PARKED]
    if parked:
        Run.objects.filter(pk__in=parked, state=Run.State.PARKED).update(
            state=Run.State.ACTIVE, updated_at=timezone.now()
        )
        audit_record_many(
            [
                dict(
                    actor=actor,
                    action="run.unparked",
                    entity_type="run",
                    entity_id=run_id,
                    case=case,
                    run_id=run_id,
                    connection_id=case.connection_id,
                    before={"state": Run.State.PARKED},
                    after={"state": Run.State.ACTIVE},
                )
                for run_id in parked
            ]
        )
    # A run whose resume failed (it was parked again) gets a fresh delivery and a fresh count of re-drives.
    again = [pk for pk, _, state, sent_at in rows if state == Run.State.PARKED and sent_at is not None]
    if again:
        CaseRun.objects.filter(pk__in=again).update(resume_sent_at=None, resume_attempts=0)
    owed = [run_id for _, run_id, state, sent_at in rows if sent_at is None or state == Run.State.PARKED]
    run_resume_owe_many(run_ids=owed, case=case, attempt=0, retry=retry)
    if retry:
        # A run Revive executes that stopped after it went past its parked action (``case_resume_fail`` with
        # ``stopped_run``): the retry continues it from its latest checkpoint, with a fresh count of continuations.
        stopped = list(
            Run.objects.filter(
                case_runs__case=case,
                case_runs__resumed_at__isnull=False,
                state=Run.State.ACTIVE,
                hosted_at__isnull=False,
            )
            .order_by("pk")
            .values_list("pk", flat=True)
            .distinct()
        )
        if stopped:
            Run.objects.filter(pk__in=stopped).update(continuations=0, hosted_at=timezone.now())
            for run_id in stopped:
                run_continue_owe(run_id=run_id, case=case, continuation=1, retry=True)
            owed += stopped
    return owed


@transaction.atomic
def case_runs_release(*, case_id: str | int, actor: str) -> list[str]:
    """Release again the runs of a ``resuming`` case that no case blocks any more (the watchdog's backstop of
    ``case_resume_begin``); returns the runs owed a delivery."""
    case = _lock_case_runs_then_case(case_id)
    if case.state != CaseState.RESUMING:
        return []
    return _case_release_runs(case, actor=actor)


@transaction.atomic
def case_resume_fail(
    *, case_id: str | int, actor: str, reason: str, detail: dict[str, Any] | None = None, stopped_run: str | None = None
) -> RecoveryCase:
    """The resume of a released case could not be completed (delivery exhausted, a run stalled past its re-drives):
    the case shows ``resume_failed`` with the reason, for an operator. Its runs stay released: a run that comes
    back by itself proceeds (``_run_relive``). Repeating it on a failed case only records the reason.

    ``stopped_run``: a run Revive executes itself (``Run.hosted_at``) stopped after it went past its parked action
    and could not be continued. Nobody else will run the rest of it, so a ``resumed`` case goes back to
    ``resume_failed`` too; the operator's retry continues the run (``_case_release_runs``)."""
    case = case_lock(case_id)
    arguments = {"reason": reason[:1000], **(detail or {})}
    stopped = (
        stopped_run is not None
        and case.state == CaseState.RESUMED
        and Run.objects.filter(pk=stopped_run, state=Run.State.ACTIVE, hosted_at__isnull=False).exists()
    )
    if case.state == CaseState.RESUMING or stopped:
        return case_transition(case, to=CaseState.RESUME_FAILED, actor=actor, arguments=arguments)
    audit_record(
        actor=actor,
        action="case.resume_problem",
        entity_type="case",
        entity_id=case.reference or "",
        case=case,
        run_id=case.run_id or "",
        connection_id=case.connection_id,
        arguments=arguments,
        outcome="error",
    )
    return case
