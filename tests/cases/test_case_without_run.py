"""A case a credential system opened before any run hit it (``case_open_from_signal``) has no run: the writes an
operator or a later report makes on it are audited with an empty run id (the audit column is NOT NULL)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from audit.models import AuditEvent
from cases import services
from cases.models import CaseNote, CaseState
from classifier import Classification, FailureClass
from tests.conftest import DEAD_GRANT

pytestmark = pytest.mark.django_db

INTERACTION = Classification(
    failure_class=FailureClass.INTERACTION_REQUIRED,
    provider="entra",
    code="interaction_required",
    description="The owner must sign in again.",
    retry_after=None,
    signature="entra:interaction_required",
)


@pytest.fixture
def signalled_case(make_connection):
    conn = make_connection()
    case, opened = services.case_open_from_signal(
        connection_id=conn.pk, classification=INTERACTION, signal={"source": "test"}, actor="broker:test"
    )
    assert opened and case.run_id is None
    return case


def test_an_operator_assigns_and_notes_a_case_no_run_has_joined(signalled_case):
    operator = get_user_model().objects.create_superuser("op-norun", "op-norun@example.com", "x")
    services.case_assign(case_id=signalled_case.pk, assignee=operator, actor="operator:op-norun")
    services.case_note_add(case_id=signalled_case.pk, body="called the owner", actor="operator:op-norun")

    assert CaseNote.objects.get(case=signalled_case).body == "called the owner"
    events = {e.action: e for e in AuditEvent.objects.filter(case_id=signalled_case.pk)}
    assert events["case.assigned"].run_id == "" and events["case.assigned"].after == {"assignee": "op-norun"}
    assert events["case.noted"].run_id == ""


def test_a_more_actionable_report_reclassifies_a_case_no_run_has_joined(signalled_case, make_run):
    run = make_run()
    answer = services.credential_failure_report(
        run_id=run.pk,
        connection_id=signalled_case.connection_id,
        generation=1,
        provider_error=DEAD_GRANT,
        actor="worker:w",
    )

    assert answer.outcome == services.Outcome.PARKED and answer.case_reference == signalled_case.reference
    signalled_case.refresh_from_db()
    assert signalled_case.failure_class == FailureClass.DEAD_GRANT and signalled_case.run_id == run.pk
    reclassified = AuditEvent.objects.get(case_id=signalled_case.pk, action="case.reclassified")
    assert reclassified.run_id == "" and reclassified.before["failure_class"] == FailureClass.INTERACTION_REQUIRED
    assert signalled_case.state == CaseState.OPENED
