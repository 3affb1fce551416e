"""An operator's decisions on a case -- approve, reject, abandon, retry, reopen -- and who last decided it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from revive_site.errors import ValidationFailed

from .. import selectors, signals
from ..errors import CaseAlreadyDecided, CaseTransitionNotAllowed, FourEyesRefused
from ..models import CaseState, OutboxItem, RecoveryCase, Run
from ..transitions import CASE_TRANSITIONS
from .approvals import case_four_eyes
from .cases import _case_release_runs, case_transition
from .common import _lock_case_runs_then_case, case_lock
from .owed import RESUME_RUN, runs_abandon_owe


def _required_text(value: str | None, *, name: str) -> str:
    text = (value or "").strip()
    if not text:
        raise ValidationFailed(f"A {name} is required.", data={"field": name})
    return text[:2000]


@dataclass(frozen=True)
class CaseDecision:
    """Who moved a case by a decision (approve, reject, abandon, retry, reconcile by hand), and when."""

    what: str
    actor: str
    at: Any

    def refusal(self, case: RecoveryCase) -> CaseAlreadyDecided:
        return CaseAlreadyDecided(
            f"{case.reference} was already {self.what} by {self.actor} at {self.at:%Y-%m-%d %H:%M:%S} UTC.",
            data={
                "case_id": case.reference,
                "state": case.state,
                "decision": self.what,
                "decided_by": self.actor,
                "decided_at": self.at.isoformat(),
            },
        )


def case_last_decision(case: RecoveryCase) -> CaseDecision | None:
    """The audited move that put ``case`` in its current state (the latest ``case.<state>`` event), if any."""
    from audit.models import AuditEvent

    event = (
        AuditEvent.objects.filter(case_id=case.pk, action=f"case.{case.state}")
        .order_by("-occurred_at", "-id")
        .only("actor", "occurred_at", "arguments")
        .first()
    )
    if event is None:
        return None
    args = event.arguments or {}
    what = (
        "approved"
        if args.get("approved")
        else "rejected"
        if args.get("rejected")
        else "reopened"
        if args.get("reopened")
        else "abandoned"
        if case.state == CaseState.ABANDONED
        else f"moved to {case.state}"
    )
    return CaseDecision(what=what, actor=event.actor, at=event.occurred_at)


def _approval(case: RecoveryCase) -> CaseDecision | None:
    from audit.models import AuditEvent

    event = (
        AuditEvent.objects.filter(case_id=case.pk, action="case.resuming", arguments__approved=True)
        .order_by("-occurred_at", "-id")
        .only("actor", "occurred_at")
        .first()
    )
    return CaseDecision(what="approved", actor=event.actor, at=event.occurred_at) if event else None


def _decided_elsewhere(case: RecoveryCase, decision: CaseDecision | None, *, actor: str) -> RecoveryCase:
    """The conditional transition found its source state gone: the same actor repeating gets the case back
    (every write path is safe to repeat); anyone else is told who decided and when."""
    if decision is None:
        raise CaseTransitionNotAllowed(
            f"Case {case.reference} is {case.state}.", data={"case_id": case.reference, "state": case.state}
        )
    if decision.actor == actor:
        return case
    raise decision.refusal(case)


@transaction.atomic
def case_approve(*, case_id: str | int, actor: str, reason: str) -> RecoveryCase:
    """An operator releases a case waiting in ``awaiting_approval``: it moves to ``resuming``, its runs are unparked,
    and each released run is owed its resume in this transaction exactly as on the automatic path. Approving an
    already approved case returns it unchanged.

    The move is conditional on the state read under the row lock: of two operators approving at once, one
    approves and the other gets ``CASE_ALREADY_DECIDED`` naming the first; the same operator repeating gets the
    case back unchanged.
    """
    reason = _required_text(reason, name="reason")
    case = _lock_case_runs_then_case(case_id)
    if case.state == CaseState.AWAITING_APPROVAL and settings.REVIVE_FOUR_EYES:
        barred = case_four_eyes(case)
        if actor in barred:
            raise FourEyesRefused(
                f"{actor} {barred[actor]} on {case.reference}: another operator must approve its resume.",
                data={"case_id": case.reference, "barred": sorted(barred)},
            )
    if case.state != CaseState.AWAITING_APPROVAL:
        if case.state in (CaseState.RESUMING, CaseState.RESUMED, CaseState.CLOSED, CaseState.RESUME_FAILED):
            approval = _approval(case)
            if approval is not None:
                return _decided_elsewhere(case, approval, actor=actor)
        raise _not_allowed(case, "only a case awaiting approval can be approved", to=CaseState.RESUMING)
    ambiguous = [f"{r}/{k}" for r, k in selectors.case_ambiguous_actions(case).values_list("run_id", "action_key")]
    arguments: dict[str, Any] = {"approved": True, "reason": reason}
    if ambiguous:
        arguments["reconcile_in_worker"] = ambiguous
    # Held after a resume had been delivered (``_hold_for_approval``): the runs are owed a fresh delivery.
    held_after_resume = OutboxItem.objects.filter(kind=RESUME_RUN, case=case).exists()
    case_transition(case, to=CaseState.RESUMING, actor=actor, arguments=arguments)
    _case_release_runs(case, actor=actor, retry=held_after_resume)
    return case


@transaction.atomic
def case_reject(*, case_id: str | int, actor: str, reason: str) -> RecoveryCase:
    """An operator refuses a resume waiting for approval: the case is abandoned with the reason."""
    reason = _required_text(reason, name="reason")
    case = case_lock(case_id)
    if case.state == CaseState.ABANDONED:
        return _decided_elsewhere(case, case_last_decision(case), actor=actor)
    if case.state != CaseState.AWAITING_APPROVAL:
        approval = _approval(case)
        if approval is not None:
            raise approval.refusal(case)
        raise _not_allowed(case, "only a case awaiting approval can be rejected", to=CaseState.ABANDONED)
    return _case_abandon_locked(case, actor=actor, arguments={"rejected": True, "reason": reason})


@transaction.atomic
def case_abandon(*, case_id: str | int, actor: str, reason: str) -> RecoveryCase:
    """Give up on a case: it stops blocking its runs (they stay parked for their owners) and its owner link is revoked.
    A case another operator abandoned (or rejected) meanwhile is refused with who did it."""
    reason = _required_text(reason, name="reason")
    case = case_lock(case_id)
    if case.state == CaseState.ABANDONED:
        return _decided_elsewhere(case, case_last_decision(case), actor=actor)
    if CaseState.ABANDONED not in CASE_TRANSITIONS[case.state]:
        raise_moved(case)
    return _case_abandon_locked(case, actor=actor, arguments={"reason": reason})


def _not_allowed(case: RecoveryCase, rule: str, *, to: str) -> CaseTransitionNotAllowed:
    """A wrong-state refusal that names the decision which last moved the case."""
    data: dict[str, Any] = {"case_id": case.reference, "state": case.state, "to": to}
    message = f"Case {case.reference} is {case.state}; {rule}."
    decision = case_last_decision(case)
    if decision is not None:
        message += f" It was {decision.what} by {decision.actor} at {decision.at:%Y-%m-%d %H:%M:%S} UTC."
        data.update(decided_by=decision.actor, decided_at=decision.at.isoformat())
    return CaseTransitionNotAllowed(message, data=data)


def raise_moved(case: RecoveryCase) -> None:
    """Refuse a decision on a case whose state no longer allows it, naming the last decision that moved it."""
    decision = case_last_decision(case)
    if decision is not None:
        raise decision.refusal(case)
    raise CaseTransitionNotAllowed(
        f"Case {case.reference} is {case.state}.", data={"case_id": case.reference, "state": case.state}
    )


@transaction.atomic
def case_retry_resume(*, case_id: str | int, actor: str) -> RecoveryCase:
    """An operator retries a ``resume_failed`` case; of two retrying at once, the second is told who retried.
    The caller dispatches the resume (``cases.resume.case_resume_dispatch``) in the same transaction."""
    case = case_lock(case_id)
    if case.state != CaseState.RESUME_FAILED:
        if case.state == CaseState.RESUMING:
            decision = case_last_decision(case)
            return _decided_elsewhere(case, decision, actor=actor)
        raise_moved(case)
    return case


def _case_abandon_locked(case: RecoveryCase, *, actor: str, arguments: dict[str, Any]) -> RecoveryCase:
    case_transition(case, to=CaseState.ABANDONED, actor=actor, arguments=arguments)
    # Same transaction: reauth's receiver revokes the owner's active link.
    signals.case_abandoned.send(sender=RecoveryCase, case=case, reason="case_abandoned", actor=actor)
    runs_abandon_owe(case=case, reason=arguments.get("reason", ""))
    return case


@transaction.atomic
def case_reopen(*, case_id: str | int, actor: str, reason: str) -> RecoveryCase:
    """Undo a reject or abandon while the case's runs are still parked, so a mistaken click strands no run.

    A case whose connection was never re-authorized goes back to ``awaiting_owner`` (resend the owner link from
    there); one re-authorized before it was abandoned or rejected goes to ``awaiting_approval``, so an operator
    decides its resume again. Refused once no run is parked any more, or while another case is open for the same
    connection generation. Repeating it returns the reopened case.

    The abandonment's notices to the runs (``runs_abandon_owe``) wait ``REVIVE_ABANDON_NOTICE_DELAY_SECONDS``: a
    reopen before then cancels them (each notice finds its case reopened and tells nothing). A run already told is
    ``abandoned``, not parked -- it cannot be un-told -- so it neither counts here nor comes back.
    """
    from django.db import IntegrityError

    reason = _required_text(reason, name="reason")
    case = case_lock(case_id)
    if case.state != CaseState.ABANDONED:
        decision = case_last_decision(case)
        if decision is not None and decision.what == "reopened":
            return _decided_elsewhere(case, decision, actor=actor)
        raise _not_allowed(case, "only an abandoned or rejected case can be reopened", to=CaseState.AWAITING_OWNER)
    parked = list(Run.objects.filter(case_runs__case=case, state=Run.State.PARKED).values_list("pk", flat=True))
    if not parked:
        raise CaseTransitionNotAllowed(
            f"Case {case.reference} has no parked run left; there is nothing to reopen it for.",
            data={"case_id": case.reference, "state": case.state},
        )
    reauthorized = case.connection.current_generation > case.rejected_generation
    to = CaseState.AWAITING_APPROVAL if reauthorized else CaseState.AWAITING_OWNER
    try:
        with transaction.atomic():
            case_transition(
                case,
                to=to,
                actor=actor,
                closed_at=None,
                arguments={"reopened": True, "reason": reason, "parked_runs": parked},
            )
    except IntegrityError as exc:
        raise CaseTransitionNotAllowed(
            f"Another case is open for {case.connection_id} generation {case.rejected_generation}; "
            f"{case.reference} stays abandoned.",
            data={"case_id": case.reference, "state": CaseState.ABANDONED},
        ) from exc
    return case
