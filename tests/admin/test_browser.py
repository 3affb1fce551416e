"""The console as a person uses it: Playwright driving Debian's Chromium against a live server.

An operator logs in, filters to ``awaiting_approval``, opens the case, reads its timeline, approves it and sees it
move to ``resuming``; an auditor reads the same case but cannot act. The resume a Celery worker would deliver
next is intercepted at the queue, so the case is seen in ``resuming`` (the state it holds until the runtime
acknowledges) and the test checks what was enqueued.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cases.models import CaseState, RecoveryCase

from .conftest import PASSWORD

SCREENSHOTS = os.environ.get("REVIVE_SCREENSHOTS", "")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def enqueued(held_resumes):
    """The run resumes the console's approval owes (instead of a Celery worker delivering them)."""
    return held_resumes


def shot(page, name: str) -> None:
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def log_in(chromium, live_server, user):
    page = chromium.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#recovery-dashboard")
    return page


def open_waiting_case(page, live_server, case, other):
    page.goto(f"{live_server.url}/admin/cases/recoverycase/")
    assert page.locator(f"text={other.reference}").count() == 1
    page.click("#changelist-filter a:text-is('Awaiting Approval')")
    page.wait_for_url("**/admin/cases/recoverycase/?state=awaiting_approval")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1
    assert "awaiting_approval" in rows.first.inner_text() and page.locator(f"text={other.reference}").count() == 0
    shot(page, "list-awaiting-approval")
    page.click(f"#result_list a:text-is('{case.reference}')")
    page.wait_for_selector("#incident-record")


def read_timeline(page, case):
    assert page.inner_text("#case-id") == case.reference
    assert page.inner_text("#case-state") == "awaiting_approval"
    assert page.inner_text("#checkpoint") == "05 / prepare brief"
    assert page.inner_text("#duplicates") == "0 observed"
    assert page.inner_text("#live-transition").startswith("03 / 04")
    timeline = page.inner_text("#timeline-table")
    for expected in [
        "Provider signal: grant rejected (AADSTS700082)",
        "Owner link sent",
        "Generation advanced",
        "Reconciled ",
        "operator:seed",
        "Waiting for an operator's approval",
    ]:
        assert expected in timeline, expected
    drawn = page.locator("svg.revive-timeline g.tl-row")
    assert drawn.count() == page.locator("#timeline-table tbody tr").count() > 0
    assert page.locator("svg.revive-timeline").is_visible()


def test_an_operator_filters_reads_and_approves_a_case(chromium, live_server, make_case, operator, enqueued):
    case = make_case(CaseState.AWAITING_APPROVAL)
    other = make_case(CaseState.AWAITING_OWNER)
    page = log_in(chromium, live_server, operator)
    shot(page, "dashboard")
    open_waiting_case(page, live_server, case, other)
    read_timeline(page, case)
    shot(page, "case-awaiting-approval")

    page.fill("#op-approve textarea[name=reason]", "Ticket T-1 exists once in the service desk; safe to continue.")
    page.click("#op-approve input[type=submit]")
    page.wait_for_selector(".messagelist .success")
    assert "approved" in page.inner_text(".messagelist")
    assert page.inner_text("#case-state") == "resuming"
    assert f"Approved by operator:{operator.username}: resume sent" in page.inner_text("#timeline-table")
    shot(page, "case-resuming")

    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.RESUMING
    assert enqueued.resumes() == [(case.run_id, case.pk, 2)]


def test_an_auditor_reads_a_case_but_cannot_act(chromium, live_server, make_case, auditor, enqueued):
    case = make_case(CaseState.AWAITING_APPROVAL)
    other = make_case(CaseState.AWAITING_OWNER)
    page = log_in(chromium, live_server, auditor)
    page.goto(f"{live_server.url}/admin/cases/recoverycase/")
    assert page.locator("select[name=action]").count() == 0  # no actions for a read-only user
    open_waiting_case(page, live_server, case, other)
    read_timeline(page, case)
    assert page.locator("#read-only").is_visible()
    assert page.locator("#operations form").count() == 0
    shot(page, "case-auditor")

    response = page.goto(f"{live_server.url}/admin/cases/recoverycase/{case.pk}/operate/approve/")
    assert response.status == 403
    page.goto(f"{live_server.url}/admin/audit/auditevent/?q={case.reference}")
    assert case.reference in page.inner_text("#result_list")
    assert page.locator("a.addlink").count() == 0

    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.AWAITING_APPROVAL
    assert enqueued.resumes() == []
