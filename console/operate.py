"""What an operator can do to a case from the console, each through the same services as the API.

An ``Operation`` says which cases it applies to (``refusal`` answers why not,
in words an operator reads), what it asks for (a reason, a note, or nothing: ``console.forms``)
and how it is carried out. The admin offers every operation on one case (its
page) and on a selection (the list's actions); both call ``perform``, which
re-checks the case, calls the service as ``operator:<username>`` and turns
every domain error into a message instead of a server error. A refused call is
audited too, with the operator's identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.db import transaction

from audit.services import audit_record
from cases import selectors, services, signals
from cases.models import OPEN_CASE_STATES, Action, CaseState, RecoveryCase, Run
from cases.resume import case_resume_dispatch
from revive_site.errors import DomainError

from .forms import ConfirmForm, ReasonForm, ReconcileForm
from .selectors import console_ambiguous_actions

PERMISSION = "cases.operate_case"


def operator_actor(user) -> str:
    return f"operator:{user.get_username()}"


# --------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Operation:
    name: str
    label: str
    form: type[ConfirmForm]
    refusal: Callable[[RecoveryCase], str | None]
    run: Callable[..., str]
    danger: bool = False
    effect: Callable[[RecoveryCase], str] | None = None
    """What carrying it out will do to one case, in words (the confirmation page lists it per case)."""

    def effect_on(self, case: RecoveryCase) -> str:
        return self.effect(case) if self.effect else self.label

    def form_for(self, data=None, *, cases: list[RecoveryCase]) -> ConfirmForm:
        actions = console_ambiguous_actions(case_ids=[c.pk for c in cases]) if self.form is ReconcileForm else None
        return self.form(data, actions=actions)


def _only(*states: str, what: str) -> Callable[[RecoveryCase], str | None]:
    def refusal(case: RecoveryCase) -> str | None:
        if case.state in states:
            return None
        return f"{case.reference} is {case.get_state_display().lower()}: {what}."

    return refusal


def _resend_refusal(case: RecoveryCase) -> str | None:
    if not case.owner_required:
        return f"{case.reference} is a {case.get_failure_class_display().lower()} case: it has no owner link to resend."
    if case.state not in (CaseState.OPENED, CaseState.AWAITING_OWNER):
        return f"{case.reference} is {case.get_state_display().lower()}: only a case waiting for its owner gets a new link."
    if not case.reconnect_requests.exists():
        return f"{case.reference} has no owner link to replace."
    return None


def _reconcile_refusal(case: RecoveryCase) -> str | None:
    if case.state not in OPEN_CASE_STATES:
        return (
            f"{case.reference} is {case.get_state_display().lower()}: only an open case's actions are reconciled here."
        )
    if not selectors.case_ambiguous_actions(case).exists():
        # Of two operators reconciling at once, the second may only get here after the first committed: say who.
        by = (
            Action.objects.filter(run__case_runs__case=case)
            .exclude(reconciled_by="")
            .order_by("-updated_at")
            .values_list("reconciled_by", flat=True)
            .first()
        )
        if by:
            return f"{case.reference} has no ambiguous action left to reconcile: reconciled by {by}."
        return f"{case.reference} has no ambiguous action to reconcile."
    return None


def _abandon_refusal(case: RecoveryCase) -> str | None:
    if CaseState.ABANDONED in services.CASE_TRANSITIONS[case.state]:
        return None
    return f"{case.reference} is {case.get_state_display().lower()}: it can no longer be abandoned."


def _reopen_refusal(case: RecoveryCase) -> str | None:
    if case.state != CaseState.ABANDONED:
        return f"{case.reference} is {case.get_state_display().lower()}: only an abandoned or rejected case can be reopened."
    if not Run.objects.filter(case_runs__case=case, state=Run.State.PARKED).exists():
        return f"{case.reference} has no parked run left to reopen it for."
    return None


def _reopen(case: RecoveryCase, *, actor: str, form: forms.Form) -> str:
    case = services.case_reopen(case_id=case.pk, actor=actor, reason=form.cleaned_data["reason"])
    return f"{case.reference} reopened: it is {case.state}."


def _reopen_effect(case: RecoveryCase) -> str:
    again = "awaiting_approval" if case.connection.current_generation > case.rejected_generation else "awaiting_owner"
    return f"goes back to {again}; its parked run(s) wait for it again"


def _approve(case: RecoveryCase, *, actor: str, form: forms.Form) -> str:
    case = services.case_approve(case_id=case.pk, actor=actor, reason=form.cleaned_data["reason"])
    return f"{case.reference} approved: it is {case.state} and its runs' resume is on its way."


def _reject(case: RecoveryCase, *, actor: str, form: forms.Form) -> str:
    case = services.case_reject(case_id=case.pk, actor=actor, reason=form.cleaned_data["reason"])
    return f"{case.reference} rejected: it is {case.state}."


def _abandon(case: RecoveryCase, *, actor: str, form: forms.Form) -> str:
    case = services.case_abandon(case_id=case.pk, actor=actor, reason=form.cleaned_data["reason"])
    return f"{case.reference} abandoned."


def _resend(case: RecoveryCase, *, actor: str, form: forms.Form) -> str:
    # The owner's links belong to reauth, which answers this signal (cases does not import reauth).
    answers = [answer for _, answer in signals.owner_link_resend.send(sender=RecoveryCase, case=case, actor=actor)]
    request = answers[0] if answers else "none"
    return f"{case.reference}: a new owner link is on its way to {case.connection.owner_email} (request {request})."


def _retry(case: RecoveryCase, *, actor: str, form: forms.Form) -> str:
    with transaction.atomic():
        services.case_retry_resume(case_id=case.pk, actor=actor)
        runs = case_resume_dispatch(case_id=case.pk, actor=actor)
    case.refresh_from_db(fields=["state"])
    return f"{case.reference} is {case.state}: resume re-sent to {len(runs)} run(s)."


def _reconcile(case: RecoveryCase, *, actor: str, form: ReconcileForm, done: set[int] | None = None) -> str:
    """Settle the chosen ambiguous actions of this case's runs; once none is left, continue the resume."""
    found = form.cleaned_data["outcome"] == "found"
    note = form.cleaned_data["note"].strip()
    ref = form.cleaned_data.get("external_ref", "").strip()
    evidence: dict[str, Any] = {"by_hand": True, "note": note}
    if ref:
        evidence["external_ref"] = ref
    mine = set(selectors.case_ambiguous_actions(case).values_list("pk", flat=True))
    # An action another operator reconciled since this form was shown goes to the service too, which tells who
    # (``ActionAlreadyReconciled``) instead of this operator being told "nothing left to settle".
    mine |= set(
        Action.objects.filter(
            run__case_runs__case=case, state__in=(Action.State.RECONCILED_COMMITTED, Action.State.RECONCILED_ABSENT)
        )
        .exclude(reconciled_by__in=("", actor))
        .values_list("pk", flat=True)
    )
    settled = []
    for action in form.chosen():
        if action.pk not in mine or (done is not None and action.pk in done):
            continue
        services.action_reconcile(
            run_id=action.run_id,
            action_key=action.action_key,
            found=found,
            evidence=evidence,
            external_ref=ref if found else "",
            generation=None,
            actor=actor,
        )
        settled.append(f"{action.run_id}/{action.action_key}")
        if done is not None:
            done.add(action.pk)
    case.refresh_from_db(fields=["state"])
    left = selectors.case_ambiguous_actions(case).count()
    if not left and case.state in (CaseState.REAUTHORIZED, CaseState.RECONCILING):
        with transaction.atomic():
            case_resume_dispatch(case_id=case.pk, actor=actor)
        case.refresh_from_db(fields=["state"])
    verdict = "found" if found else "absent"
    summary = ", ".join(settled) if settled else "nothing left to settle"
    return f"{case.reference}: reconciled {summary} as {verdict}; {left} ambiguous left; the case is {case.state}."


def _runs(case: RecoveryCase) -> int:
    return case.case_runs.count()


def _approve_effect(case: RecoveryCase) -> str:
    return f"moves to resuming and sends the resume to its {_runs(case)} parked run(s)"


def _abandon_effect(case: RecoveryCase) -> str:
    live = case.reconnect_requests.filter(state="active").count()
    links = f"; revokes its {live} live owner link(s)" if live else ""
    return f"becomes abandoned; its {_runs(case)} run(s) stay parked{links}"


def _resend_effect(case: RecoveryCase) -> str:
    latest = case.reconnect_requests.order_by("-created_at", "-id").first()
    old = f"revokes owner link {str(latest.public_id)[:8]}… ({latest.state})" if latest else "issues an owner link"
    return f"{old} and e-mails a new link to {case.connection.owner_email}"


def _reconcile_effect(case: RecoveryCase) -> str:
    n = selectors.case_ambiguous_actions(case).count()
    return f"settles the chosen ones of its {n} ambiguous action(s) with your note as evidence"


def _retry_effect(case: RecoveryCase) -> str:
    return f"moves to resuming and re-sends the resume to its {_runs(case)} run(s)"


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in [
        Operation(
            "approve",
            "Approve resume",
            ReasonForm,
            _only(CaseState.AWAITING_APPROVAL, what="only a case awaiting approval can be approved"),
            _approve,
            effect=_approve_effect,
        ),
        Operation(
            "reject",
            "Reject resume (abandon the case)",
            ReasonForm,
            _only(CaseState.AWAITING_APPROVAL, what="only a case awaiting approval can be rejected"),
            _reject,
            danger=True,
            effect=_abandon_effect,
        ),
        Operation("resend_link", "Resend the owner link", ConfirmForm, _resend_refusal, _resend, effect=_resend_effect),
        Operation(
            "reconcile",
            "Reconcile ambiguous actions by hand",
            ReconcileForm,
            _reconcile_refusal,
            _reconcile,
            effect=_reconcile_effect,
        ),
        Operation(
            "abandon", "Abandon the case", ReasonForm, _abandon_refusal, _abandon, danger=True, effect=_abandon_effect
        ),
        Operation("reopen", "Reopen the case", ReasonForm, _reopen_refusal, _reopen, effect=_reopen_effect),
        Operation(
            "retry_resume",
            "Retry the failed resume",
            ConfirmForm,
            _only(CaseState.RESUME_FAILED, what="only a case whose resume failed can be retried"),
            _retry,
            effect=_retry_effect,
        ),
    ]
}


@dataclass
class Outcome:
    case: RecoveryCase
    ok: bool
    message: str


def audit_refusal(case: RecoveryCase, *, operation: str, actor: str, why: str) -> None:
    """Every refusal leaves a trace: wrong state, lost race, bulk skip, missing permission."""
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="console.refused",
            entity_type="case",
            entity_id=case.reference or str(case.pk),
            case=case,
            run_id=case.run_id or "",
            connection_id=case.connection_id,
            outcome="refused",
            arguments={"operation": operation, "state": case.state, "why": why},
        )


def refusal_for(op: Operation, case: RecoveryCase) -> str | None:
    """Why ``op`` does not apply to ``case``, naming the decision that last moved the case (who, when)."""
    why = op.refusal(case)
    if why is None:
        return None
    decision = services.case_last_decision(case)
    if decision is not None:
        why += f" It was {decision.what} by {decision.actor} at {decision.at:%Y-%m-%d %H:%M:%S} UTC."
    return why


def perform(op: Operation, cases: list[RecoveryCase], *, user, form: forms.Form) -> list[Outcome]:
    """Carry out ``op`` on each case (checked again, fresh from the database) and say what happened to each."""
    actor = operator_actor(user)
    outcomes = []
    done: set[int] = set()
    for stale in cases:
        case = RecoveryCase.objects.select_related("connection").filter(pk=stale.pk).first()
        if case is None:
            continue
        why = refusal_for(op, case)
        if why is not None:
            audit_refusal(case, operation=op.name, actor=actor, why=why)
            outcomes.append(Outcome(case, False, why))
            continue
        try:
            kwargs = {"done": done} if op.run is _reconcile else {}
            outcomes.append(Outcome(case, True, op.run(case, actor=actor, form=form, **kwargs)))
        except DomainError as exc:
            message = f"{case.reference}: {exc.message} ({exc.code})"
            audit_refusal(case, operation=op.name, actor=actor, why=message)
            outcomes.append(Outcome(case, False, message))
    return outcomes


def available(case: RecoveryCase) -> list[Operation]:
    """The operations that apply to ``case`` as it is now (the case page offers these)."""
    return [op for op in OPERATIONS.values() if op.refusal(case) is None]
