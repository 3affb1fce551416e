"""The console for a team: ownership, notes, four eyes, links out and CSV exports (through the admin's own views)."""

from __future__ import annotations

import csv
import io

import pytest

from audit.models import AuditEvent
from cases import services
from cases.errors import FourEyesRefused
from cases.models import CaseNote, CaseState, RecoveryCase, Run
from console.access import AUDITORS, OPERATORS
from console.selectors import case_audit_events

from .conftest import _staff

LIST = "/admin/cases/recoverycase/"


def case_url(case):
    return f"/admin/cases/recoverycase/{case.pk}/change/"


def listed(listing: str, case) -> bool:
    """The case has a row in the list's table (its id links to its page)."""
    return f'href="/admin/cases/recoverycase/{case.pk}/change/' in listing


def read_csv(response) -> list[list[str]]:
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_take_assign_and_the_my_cases_and_unassigned_filters(operator_client, operator, make_case):
    mine, other = make_case(CaseState.AWAITING_OWNER), make_case(CaseState.AWAITING_OWNER)
    operator_client.post(f"{LIST}{mine.pk}/assign/", {"take": "1"})
    assert RecoveryCase.objects.get(pk=mine.pk).assignee == operator
    bob = _staff("bob-team", OPERATORS)
    operator_client.post(f"{LIST}{other.pk}/assign/", {"assignee": bob.pk})
    assert RecoveryCase.objects.get(pk=other.pk).assignee == bob
    events = AuditEvent.objects.filter(action="case.assigned").order_by("id")
    assert [(e.case_id, e.before["assignee"], e.after["assignee"]) for e in events] == [
        (mine.pk, None, operator.username),
        (other.pk, None, "bob-team"),
    ]
    listing = operator_client.get(LIST + "?assignee=me").content.decode()
    assert listed(listing, mine) and not listed(listing, other)
    assert f'{mine.reference}<br><small class="case-assignee">{operator.username}</small>' in listing
    operator_client.post(f"{LIST}{other.pk}/assign/", {"assignee": ""})
    listing = operator_client.get(LIST + "?assignee=none").content.decode()
    assert listed(listing, other) and not listed(listing, mine)


def test_a_case_goes_only_to_an_operator(operator_client, make_case):
    case = make_case(CaseState.OPENED)
    auditor = _staff("aud-team", AUDITORS)
    response = operator_client.post(f"{LIST}{case.pk}/assign/", {"assignee": auditor.pk}, follow=True)
    assert RecoveryCase.objects.get(pk=case.pk).assignee is None
    assert b"Choose an operator" in response.content


def test_notes_thread_each_note_audited_and_redacted(operator_client, operator, make_case):
    case = make_case(CaseState.AWAITING_OWNER)
    operator_client.post(f"{LIST}{case.pk}/note/", {"body": "Called the owner; back at 14:00."})
    operator_client.post(f"{LIST}{case.pk}/note/", {"body": "They pasted Bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl oops"})
    assert [n.author for n in CaseNote.objects.filter(case=case)] == [f"operator:{operator.username}"] * 2
    page = operator_client.get(case_url(case)).content.decode()
    assert "Called the owner; back at 14:00." in page and "eyJzdWIi" not in page
    noted = AuditEvent.objects.filter(case_id=case.pk, action="case.noted")
    assert noted.count() == 2 and "eyJzdWIi" not in str(list(noted.values_list("arguments", flat=True)))


def test_an_auditor_cannot_assign_or_note_and_the_refusals_are_audited(auditor_client, make_case):
    case = make_case(CaseState.OPENED)
    assert auditor_client.post(f"{LIST}{case.pk}/assign/", {"take": "1"}).status_code == 403
    assert auditor_client.post(f"{LIST}{case.pk}/note/", {"body": "hi"}).status_code == 403
    assert not CaseNote.objects.exists() and RecoveryCase.objects.get(pk=case.pk).assignee is None
    assert sorted(
        AuditEvent.objects.filter(case_id=case.pk, action="console.refused").values_list(
            "arguments__operation", flat=True
        )
    ) == ["assign", "note"]


def test_four_eyes_bars_the_by_hand_reconciler(make_case, settings, held_outbox):
    assert held_outbox is not None  # owed resumes are written, not dispatched
    settings.REVIVE_FOUR_EYES = True
    case = make_case(CaseState.AWAITING_APPROVAL)  # reconciled by hand by operator:seed
    assert services.case_four_eyes(case) == {"operator:seed": "reconciled an action by hand"}
    with pytest.raises(FourEyesRefused) as refused:
        services.case_approve(case_id=case.pk, actor="operator:seed", reason="mine")
    assert refused.value.code == "CASE_FOUR_EYES" and refused.value.status == 403
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.AWAITING_APPROVAL
    assert services.case_approve(case_id=case.pk, actor="operator:other", reason="checked").state == CaseState.RESUMING


def test_without_four_eyes_the_reconciler_may_approve(make_case, settings, held_outbox):
    assert held_outbox is not None  # owed resumes are written, not dispatched
    settings.REVIVE_FOUR_EYES = False
    case = make_case(CaseState.AWAITING_APPROVAL)
    assert services.case_approve(case_id=case.pk, actor="operator:seed", reason="ok").state == CaseState.RESUMING


def test_links_out_render_from_the_url_templates(operator_client, make_case, settings):
    case = make_case(CaseState.OPENED)
    Run.objects.filter(pk=case.run_id).update(runtime="temporal", runtime_ref={"workflow_id": "wf 1", "run_id": "r-9"})
    settings.REVIVE_RUNTIME_UI_URLS = {
        "temporal": "https://temporal.example/workflows/{workflow_id}/{run_id}",
        "langgraph": "https://studio.example/{missing}",
    }
    settings.REVIVE_PROVIDER_ADMIN_URLS = {case.provider: "https://admin.example/{tenant}/users/{subject}"}
    page = operator_client.get(case_url(case)).content.decode()
    assert 'href="https://temporal.example/workflows/wf%201/r-9"' in page
    conn = case.connection
    assert f'href="https://admin.example/{conn.provider_tenant}/users/{conn.provider_subject}"' in page


def test_csv_of_the_filtered_list_and_of_one_case_trail(operator_client, auditor_client, make_case):
    waiting, opened = make_case(CaseState.AWAITING_APPROVAL), make_case(CaseState.OPENED)
    rows = read_csv(auditor_client.get(LIST + "export.csv?state=awaiting_approval"))
    assert rows[0][:2] == ["case_id", "namespace"] and [r[0] for r in rows[1:]] == [waiting.reference]
    everything = read_csv(auditor_client.get(LIST + "export.csv"))
    assert {r[0] for r in everything[1:]} == {waiting.reference, opened.reference}
    trail = read_csv(auditor_client.get(f"{LIST}{waiting.pk}/audit.csv"))
    actions = [r[2] for r in trail[1:]]
    assert "case.opened" in actions and "action.reconciled_committed" in actions and "case.awaiting_approval" in actions
    assert len(trail) - 1 == case_audit_events(case_id=waiting.pk).count()  # the same events as the timeline


def test_no_export_without_view_permission(client, make_case, django_user_model):
    case = make_case(CaseState.OPENED)
    client.force_login(django_user_model.objects.create_user("nobody-csv", is_staff=True))
    assert client.get(LIST + "export.csv").status_code == 403
    assert client.get(f"{LIST}{case.pk}/audit.csv").status_code == 403


def test_reopen_a_rejected_case_while_its_runs_are_parked(operator_client, make_case):
    case = make_case(CaseState.AWAITING_APPROVAL)
    services.case_reject(case_id=case.pk, actor="operator:bob", reason="misclick")
    assert Run.objects.get(pk=case.run_id).state == Run.State.PARKED
    confirm = operator_client.get(f"{LIST}{case.pk}/operate/reopen/").content.decode()
    assert "goes back to awaiting_approval" in confirm
    operator_client.post(f"{LIST}{case.pk}/operate/reopen/", {"apply": "1", "reason": "rejected by mistake"})
    reopened = RecoveryCase.objects.get(pk=case.pk)
    assert reopened.state == CaseState.AWAITING_APPROVAL and reopened.closed_at is None
    event = AuditEvent.objects.filter(case_id=case.pk, action="case.awaiting_approval").latest("id")
    assert event.arguments["reopened"] is True and event.arguments["reason"] == "rejected by mistake"


def test_reopen_an_abandoned_case_goes_back_to_its_owner_and_needs_a_reason(make_case):
    case = make_case(CaseState.ABANDONED)
    with pytest.raises(Exception, match="reason is required"):
        services.case_reopen(case_id=case.pk, actor="operator:ann", reason=" ")
    assert (
        services.case_reopen(case_id=case.pk, actor="operator:ann", reason="owner called back").state
        == CaseState.AWAITING_OWNER
    )
    assert services.case_reopen(case_id=case.pk, actor="operator:ann", reason="again").state == CaseState.AWAITING_OWNER


def test_no_reopen_once_no_run_is_parked(make_case):
    case = make_case(CaseState.ABANDONED)
    Run.objects.filter(pk=case.run_id).update(state=Run.State.ACTIVE)
    with pytest.raises(Exception, match="no parked run left"):
        services.case_reopen(case_id=case.pk, actor="operator:ann", reason="too late")
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.ABANDONED
