"""Decisions are single and attributed: two operators deciding one case at once, with real threads on PostgreSQL.

Each pair goes through the console's own path (``console.operate.perform``, as the case page's and the list's forms
do): one decision lands, the other is told who decided and when, and its refusal is in the audit log.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User

from audit.models import AuditEvent
from cases import services
from cases.models import Action, CaseState, RecoveryCase
from console import operate
from tests.cases.test_concurrency import run_concurrently

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def no_delivery(held_outbox):
    """Owed resumes are written to the outbox, not dispatched."""
    return held_outbox


def _users(*names):
    return [User.objects.create_user(n, is_staff=True) for n in names]


def _decide(op_name, case, user, **data):
    op = operate.OPERATIONS[op_name]
    form = op.form_for(data, cases=[case])
    assert form.is_valid(), form.errors
    return lambda: operate.perform(op, [case], user=user, form=form)[0]


def _race(op_a, op_b, case, **data):
    ann, bob = _users("ann", "bob")
    results, errors = run_concurrently([_decide(op_a, case, ann, **data), _decide(op_b, case, bob, **data)])
    assert errors == [None, None], errors
    return results


@pytest.mark.parametrize("first,second", [("approve", "approve"), ("approve", "reject"), ("reject", "approve")])
def test_two_operators_deciding_one_waiting_case_get_one_decision_and_one_attributed_refusal(
    make_case, no_delivery, first, second
):
    case = make_case(CaseState.AWAITING_APPROVAL)
    results = _race(first, second, case, reason="checked the ticket")
    assert sorted(o.ok for o in results) == [False, True]
    winner = "operator:ann" if results[0].ok else "operator:bob"
    loser = "operator:bob" if results[0].ok else "operator:ann"
    lost = next(o for o in results if not o.ok)
    assert re.search(
        rf"(approved|rejected|abandoned) by {winner} at \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC", lost.message
    ), lost.message
    decisions = AuditEvent.objects.filter(case_id=case.pk, action__in=["case.resuming", "case.abandoned"])
    assert [e.actor for e in decisions] == [winner]
    refused = AuditEvent.objects.get(case_id=case.pk, action="console.refused")
    assert refused.actor == loser and winner in refused.arguments["why"]


def test_two_approvals_one_approved_one_already_approved_by(make_case, no_delivery):
    case = make_case(CaseState.AWAITING_APPROVAL)
    results = _race("approve", "approve", case, reason="ok")
    won = next(o for o in results if o.ok)
    lost = next(o for o in results if not o.ok)
    assert "approved" in won.message
    winner = "operator:ann" if results[0].ok else "operator:bob"
    assert re.search(rf"approved by {winner}", lost.message)
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.RESUMING
    assert AuditEvent.objects.filter(case_id=case.pk, action="case.resuming").count() == 1


def test_two_abandons_abandon_once(make_case):
    case = make_case(CaseState.AWAITING_OWNER)
    results = _race("abandon", "abandon", case, reason="duplicate incident")
    assert sorted(o.ok for o in results) == [False, True]
    winner = "operator:ann" if results[0].ok else "operator:bob"
    assert f"abandoned by {winner}" in next(o for o in results if not o.ok).message
    assert AuditEvent.objects.filter(case_id=case.pk, action="case.abandoned").count() == 1


def test_two_retries_resend_once(make_case, no_delivery):
    case = make_case(CaseState.RESUME_FAILED)
    results = _race("retry_resume", "retry_resume", case)
    assert sorted(o.ok for o in results) == [False, True]
    winner = "operator:ann" if results[0].ok else "operator:bob"
    assert f"by {winner}" in next(o for o in results if not o.ok).message
    assert (
        AuditEvent.objects.filter(case_id=case.pk, action="case.resuming", actor__startswith="operator:").count() == 1
    )


def test_two_by_hand_reconciliations_settle_once(make_case, no_delivery):
    case = make_case(CaseState.RECONCILING)
    ambiguous = Action.objects.get(run__case_runs__case=case, state=Action.State.AMBIGUOUS)
    results = _race(
        "reconcile",
        "reconcile",
        case,
        actions=[str(ambiguous.pk)],
        outcome="found",
        note="ticket T-9 exists",
        external_ref="T-9",
    )
    assert sorted(o.ok for o in results) == [False, True]
    winner = "operator:ann" if results[0].ok else "operator:bob"
    assert f"by {winner}" in next(o for o in results if not o.ok).message
    assert Action.objects.get(pk=ambiguous.pk).reconciled_by == winner
    assert AuditEvent.objects.filter(entity_type="action", action="action.reconciled_committed").count() == 1


def test_the_same_operator_repeating_a_decision_gets_the_case_back(make_case, no_delivery):
    case = make_case(CaseState.AWAITING_APPROVAL)
    services.case_approve(case_id=case.pk, actor="operator:ann", reason="ok")
    assert services.case_approve(case_id=case.pk, actor="operator:ann", reason="ok").state == CaseState.RESUMING
