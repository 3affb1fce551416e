"""The team console in Chromium (Playwright, live server on PostgreSQL): a bulk resend that waits for its
confirmation page, taking a case and writing a note, four eyes, the links out, the audit-log link, the CSV exports
and a decision another operator already took."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from cases import services
from cases.models import CaseNote, CaseState, RecoveryCase
from reauth.models import ReconnectRequest

from .test_browser import enqueued, log_in, shot  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LIST = "/admin/cases/recoverycase/"


def test_a_bulk_resend_lists_each_case_and_waits_for_confirmation(chromium, live_server, make_case, operator, enqueued):
    waiting = [make_case(CaseState.OPENED) for _ in range(2)]
    skipped = make_case(CaseState.AWAITING_APPROVAL)
    page = log_in(chromium, live_server, operator)
    page.goto(f"{live_server.url}{LIST}")
    for case in [*waiting, skipped]:
        page.check(f"#result_list input[name=_selected_action][value='{case.pk}']")
    page.select_option("select[name=action]", "operate_resend_link")
    page.click("button[name=index]")
    page.wait_for_selector("#operation-effects")
    shot(page, "bulk-resend-confirm")
    assert page.locator("tr.will-happen").count() == 2
    assert "e-mails a new link to" in page.inner_text("tr.will-happen >> nth=0")
    assert "Skipped:" in page.inner_text(f"tr.skipped[data-case='{skipped.reference}']")
    assert not ReconnectRequest.objects.filter(created_by__startswith="operator:").exists()  # nothing yet
    page.click("input[name=confirm]")
    page.wait_for_selector(".messagelist")
    assert (
        ReconnectRequest.objects.filter(case__in=waiting, state="active", created_by__startswith="operator:").count()
        == 2
    )
    assert AuditEvent.objects.filter(case_id=skipped.pk, action="console.refused").exists()


def test_take_a_case_write_a_note_and_export(chromium, live_server, make_case, operator, settings):
    settings.REVIVE_RUNTIME_UI_URLS = {"langgraph": "https://studio.example/threads/{run}"}
    case = make_case(CaseState.AWAITING_APPROVAL)
    page = log_in(chromium, live_server, operator)
    page.goto(f"{live_server.url}{LIST}{case.pk}/change/")
    assert page.title().endswith("Revive console") and "Django administration" not in page.content()
    page.click("#take-case")
    page.wait_for_selector(".messagelist .success")
    assert page.inner_text("#assignee") == operator.username
    page.fill("#note-form textarea[name=body]", "Checked ticket T-1 with the service desk.")
    page.click("#note-form input[type=submit]")
    page.wait_for_selector("#notes-thread li.note")
    assert "Checked ticket T-1" in page.inner_text("#notes-thread")
    assert page.locator(f"#links-out a[href='https://studio.example/threads/{case.run_id}']").count() == 1
    shot(page, "case-taken-noted")
    assert CaseNote.objects.filter(case=case).count() == 1

    page.click("#audit-link")
    page.wait_for_selector("#result_list")
    listed = page.locator("#result_list tbody tr").count()
    assert listed == services_case_events(case)
    assert "action.reconciled_committed" in page.inner_text("#result_list")

    page.goto(f"{live_server.url}{LIST}?assignee=me")
    assert page.locator("#result_list tbody tr").count() == 1
    with page.expect_download() as download:
        page.click("#export-csv")
    body = open(download.value.path()).read()
    assert (
        body.splitlines()[0].startswith("case_id,namespace,state")
        and case.reference in body
        and len(body.splitlines()) == 2
    )
    with page.expect_download() as trail:
        page.goto(f"{live_server.url}{LIST}{case.pk}/change/")
        page.click("#audit-csv")
    assert "case.noted" in open(trail.value.path()).read()


def services_case_events(case) -> int:
    from console.selectors import case_audit_events

    return case_audit_events(case_id=case.pk).count()


def test_four_eyes_and_a_decision_already_taken(chromium, live_server, make_case, operator, settings, enqueued):
    settings.REVIVE_FOUR_EYES = True
    case = make_case(CaseState.AWAITING_APPROVAL)  # reconciled by hand by operator:seed
    page = log_in(chromium, live_server, operator)
    page.goto(f"{live_server.url}{LIST}{case.pk}/change/")
    assert "operator:seed reconciled an action by hand" in page.inner_text("#four-eyes")
    # Another operator approves while this page is open.
    services.case_approve(case_id=case.pk, actor="operator:bob", reason="checked")
    page.fill("#op-approve textarea[name=reason]", "looks fine")
    page.click("#op-approve input[type=submit]")
    page.wait_for_selector(".messagelist .error")
    message = page.inner_text(".messagelist")
    assert "approved by operator:bob at" in message, message
    shot(page, "already-approved")
    assert AuditEvent.objects.filter(
        case_id=case.pk, action="console.refused", actor=f"operator:{operator.username}"
    ).exists()
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.RESUMING


def test_reopen_a_case_rejected_by_mistake(chromium, live_server, make_case, operator):
    case = make_case(CaseState.AWAITING_APPROVAL)
    services.case_reject(case_id=case.pk, actor="operator:bob", reason="misclick")
    page = log_in(chromium, live_server, operator)
    page.goto(f"{live_server.url}{LIST}{case.pk}/change/")
    assert page.inner_text("#case-state") == "abandoned"
    page.fill("#op-reopen textarea[name=reason]", "Rejected by mistake; the ticket is fine.")
    page.click("#op-reopen input[type=submit]")
    page.wait_for_selector(".messagelist .success")
    assert page.inner_text("#case-state") == "awaiting_approval"
    assert page.locator("#op-approve").count() == 1
    shot(page, "case-reopened")


def test_a_namespace_webhook_set_in_the_console_is_signed_and_posted_when_a_case_waits(
    chromium, live_server, superuser, make_case, settings
):
    """A superuser gives the namespace its own on-call address and webhook in the console; the next case that waits
    for approval is POSTed there, signed with the global secret, and the case page shows the notification."""
    import json

    from cases import webhooks
    from cases.namespaces import namespace_ensure
    from tests.reauth.test_reconnect_notifications import Receiver
    from tests.runtimes.conftest import wait_for

    secret = "whsec-browser-test-not-a-real-secret"
    settings.REVIVE_OPERATOR_WEBHOOK_SECRET = secret
    namespace_ensure(name="default", actor="test")
    receiver = Receiver()
    try:
        page = log_in(chromium, live_server, superuser)
        page.goto(f"{live_server.url}/admin/cases/namespace/default/change/")
        page.fill("#id_operator_emails", "oncall@revive.example")
        page.fill("#id_operator_webhook_url", receiver.url)
        page.click("input[name=_save]")
        page.wait_for_selector(".messagelist .success")
        changed = AuditEvent.objects.get(action="namespace.notifications_changed")
        assert "/hooks/revive" not in json.dumps([changed.before, changed.after, changed.arguments])  # the host only

        case = make_case(CaseState.AWAITING_APPROVAL)  # committed: the outbox dispatches (Celery eager here)
        [(headers, body)] = wait_for(lambda: receiver.requests, "the namespace's webhook to be called", timeout=60)
        assert webhooks.verify(secret, body, headers["X-Revive-Signature"])
        payload = json.loads(body)
        assert (payload["case"], payload["event"], payload["namespace"]) == (
            case.reference,
            "case.awaiting_approval",
            "default",
        )
        page.goto(f"{live_server.url}{LIST}{case.pk}/change/")
        wait_for(lambda: "case.notified" in page.content(), "the notification on the case page", timeout=60)
        shot(page, "case-notified")
    finally:
        receiver.close()
