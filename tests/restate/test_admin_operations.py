"""The admin's doctor-and-recovery panel and its three Restate forms, against the real restate-server of conftest.py.

Each form is reviewed first (nothing changes, nothing is recorded), then
confirmed; only the confirmed POST calls the service, and each confirmed or
refused attempt writes one operations audit row with the operator's name.
"""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connections
from django.test import Client

from audit.models import OperationAudit

from .conftest import WORKFLOW, free_port

PANEL = "/admin/audit/operationspanel/"
OPERATIONS = ["force-redeploy", "cleanup-stale-deployments", "recover-stuck-workflow"]

pytestmark = pytest.mark.django_db


def form_url(operation: str) -> str:
    return f"{PANEL}restate/{operation}/"


def _staff(username: str, *permissions: tuple[str, str]) -> User:
    user = User.objects.create_user(username, f"{username}@example.com", "pw", is_staff=True)
    for app_label, codename in permissions:
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


@pytest.fixture
def operator_client(client) -> Client:
    client.force_login(_staff("olga", ("cases", "operate_case")))
    return client


@pytest.fixture
def auditor_client(client) -> Client:
    client.force_login(_staff("arne", ("audit", "view_operationaudit")))
    return client


class _HiddenInputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "input" and attributes.get("type") == "hidden" and attributes.get("name"):
            self.values[attributes["name"]] = attributes.get("value") or ""


def review_then_confirm(client: Client, operation: str, data: dict):
    """Submit the form, check the review step changed nothing, then confirm with what the page carries."""
    rows_before = OperationAudit.objects.count()
    review = client.post(form_url(operation), data)
    assert review.status_code == 200, review.content
    page = review.content.decode()
    assert 'name="confirm"' in page, page
    assert OperationAudit.objects.count() == rows_before
    hidden = _HiddenInputs()
    hidden.feed(page)
    return review, client.post(form_url(operation), {**hidden.values, "confirm": "yes"})


def _only_row() -> OperationAudit:
    [row] = OperationAudit.objects.all()
    return row


# --------------------------------------------------------------------------- who sees what


def test_the_panel_shows_both_doctors_and_the_forms_to_an_operator(operator_client, restate):
    response = operator_client.get(PANEL)

    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="revive-doctor"' in page and 'id="restate-doctor"' in page
    assert "runtime restate" in page and "postgresql" in page
    assert restate.primary.url in page
    for operation in OPERATIONS:
        assert f'href="{form_url(operation)}"' in page
    assert "Doctor and recovery" in operator_client.get("/admin/").content.decode()


def test_read_only_staff_see_the_panel_but_not_the_forms(auditor_client, restate):
    page = auditor_client.get(PANEL)
    assert page.status_code == 200 and 'id="restate-doctor"' in page.content.decode()
    assert "restate/force-redeploy/" not in page.content.decode()

    assert auditor_client.get(form_url("force-redeploy")).status_code == 403
    refused = auditor_client.post(
        form_url("force-redeploy"), {"service_url": restate.primary.url, "force": "True", "confirm": "yes"}
    )

    assert refused.status_code == 403
    row = _only_row()
    assert (row.actor, row.role, row.outcome, row.error_code) == (
        "operator:arne",
        "staff",
        "refused",
        "PERMISSION_DENIED",
    )
    assert row.route == form_url("force-redeploy")
    assert row.arguments == {"serviceUrl": restate.primary.url, "force": True}


def test_staff_without_a_permission_cannot_open_the_panel(client):
    assert client.get(PANEL).status_code == 302  # to the admin login
    client.force_login(_staff("pia"))
    assert client.get(PANEL).status_code == 403
    assert client.get(form_url("recover-stuck-workflow")).status_code == 403


def test_an_unknown_operation_is_404(operator_client):
    assert operator_client.get(form_url("drop-everything")).status_code == 404


# --------------------------------------------------------------------------- the three forms


def test_force_redeploy_registers_only_after_confirmation(operator_client, restate):
    primary_id = restate.admin.register_deployment(restate.primary.url, force=False).id
    second = restate.start_service()
    prefilled = operator_client.get(form_url("force-redeploy"), {"service_url": second.url})
    assert f'value="{second.url}"' in prefilled.content.decode()

    review, confirmed = review_then_confirm(
        operator_client, "force-redeploy", {"service_url": second.url, "force": "on", "reason": "INC-42"}
    )

    assert f"Stays registered, neither drained nor deleted: {primary_id}" in review.content.decode()
    assert confirmed.status_code == 302 and confirmed.url == PANEL
    urls = restate.deployment_urls()
    assert second.url in urls.values() and urls[primary_id] == restate.primary.url
    row = _only_row()
    assert (row.actor, row.role, row.outcome, row.reason) == (
        "operator:olga",
        "staff+operate_case",
        "succeeded",
        "INC-42",
    )
    assert row.arguments == {"serviceUrl": second.url, "force": True}
    assert row.route == form_url("force-redeploy") and row.finished_at >= row.started_at
    after = operator_client.get(PANEL).content.decode()
    [new_id] = [d for d, url in urls.items() if url == second.url]
    assert f"as deployment {new_id}" in after and row.request_id in after


def test_the_review_step_alone_changes_nothing(operator_client, restate):
    second = restate.start_service()
    review = operator_client.post(form_url("force-redeploy"), {"service_url": second.url, "force": "on"})
    assert review.status_code == 200 and "Confirm: force redeploy" in review.content.decode()
    assert second.url not in restate.deployment_urls().values()
    assert not OperationAudit.objects.exists()


def test_cleanup_keeps_the_matching_deployment_and_removes_the_other(operator_client, restate):
    primary_id = restate.admin.register_deployment(restate.primary.url, force=False).id
    stale_id = restate.register(restate.start_service())

    review, confirmed = review_then_confirm(
        operator_client, "cleanup-stale-deployments", {"service_url": restate.primary.url}
    )

    page = review.content.decode()
    assert f"Keep: {primary_id}" in page
    assert f"Drain (wait, bounded, for invocations pinned to it), then delete: {stale_id}" in page
    assert confirmed.status_code == 302, confirmed.content
    restate.wait_deployments({primary_id})
    row = _only_row()
    assert row.outcome == "succeeded" and row.arguments == {"serviceUrl": restate.primary.url, "forceDrain": False}


def test_cleanup_with_a_url_that_matches_none_shows_the_error_and_records_it(operator_client, restate):
    primary_id = restate.admin.register_deployment(restate.primary.url, force=False).id
    unknown = f"http://127.0.0.1:{free_port()}/unknown"

    review, confirmed = review_then_confirm(
        operator_client, "cleanup-stale-deployments", {"service_url": unknown, "force_drain": "on"}
    )

    assert "the call will fail with RESTATE_DEPLOYMENT_NOT_FOUND" in review.content.decode()
    assert confirmed.status_code == 200
    assert "RESTATE_DEPLOYMENT_NOT_FOUND: No registered Restate deployment" in confirmed.content.decode()
    assert set(restate.deployment_urls()) == {primary_id}
    row = _only_row()
    assert (row.outcome, row.error_code) == ("failed", "RESTATE_DEPLOYMENT_NOT_FOUND")
    assert row.arguments == {"serviceUrl": unknown, "forceDrain": True}
    assert row.request_id in confirmed.content.decode()


def test_recover_a_terminal_failed_workflow_from_the_panel(operator_client, restate):
    key = restate.new_key("invitation")
    failed_id = restate.wait_status(restate.submit(key, "fail"), "completed")["id"]
    panel = operator_client.get(PANEL).content.decode()
    link = f"{form_url('recover-stuck-workflow')}?service_name={WORKFLOW}&amp;service_key={key}"
    assert link in panel

    review, confirmed = review_then_confirm(
        operator_client, "recover-stuck-workflow", {"service_name": WORKFLOW, "service_key": key}
    )

    assert f"Recent terminal failure of this key: {failed_id}" in review.content.decode()
    assert confirmed.status_code == 302, confirmed.content
    assert restate.invocation(failed_id) is None
    rerun = restate.call(WORKFLOW, key, "run", {"mode": "succeed"})
    assert rerun.json() == {"previousAttempts": None, "attempts": 1}
    row = _only_row()
    assert row.outcome == "succeeded" and row.arguments == {"serviceName": WORKFLOW, "serviceKey": key}


def test_recover_a_running_workflow_shows_why_it_is_blocked(operator_client, restate):
    key = restate.new_key()
    invocation_id = restate.submit(key, "hang")
    restate.wait_pinned(invocation_id)

    _, confirmed = review_then_confirm(
        operator_client, "recover-stuck-workflow", {"service_name": WORKFLOW, "service_key": key}
    )

    assert confirmed.status_code == 200
    page = confirmed.content.decode()
    assert "RESTATE_WORKFLOW_RETRY_BLOCKED: Workflow retry is blocked by an active invocation" in page
    assert "active-invocation" in page and invocation_id in page
    assert restate.invocation(invocation_id)["status"] not in {"completed", "killed", "cancelled"}
    row = _only_row()
    assert (row.outcome, row.error_code) == ("failed", "RESTATE_WORKFLOW_RETRY_BLOCKED")


def test_a_failed_registration_is_shown_and_its_credentials_are_redacted(operator_client, restate):
    port = free_port()
    dead = f"http://user:secret@127.0.0.1:{port}/v1"

    _, confirmed = review_then_confirm(operator_client, "force-redeploy", {"service_url": dead, "force": "on"})

    assert confirmed.status_code == 200
    assert "RESTATE_DEPLOYMENT_REGISTRATION_FAILED" in confirmed.content.decode()
    row = _only_row()
    assert (row.outcome, row.error_code) == ("failed", "RESTATE_DEPLOYMENT_REGISTRATION_FAILED")
    assert row.arguments == {"serviceUrl": f"http://REDACTED@127.0.0.1:{port}/v1", "force": True}
    assert "secret" not in f"{row.arguments} {row.error} {row.reason}"


# --------------------------------------------------------------------------- bad input, CSRF


BAD_INPUTS = [
    ("force-redeploy", {"service_url": "not a url", "force": "on"}, "service_url"),
    ("force-redeploy", {"service_url": "ftp://host/v1"}, "service_url"),
    ("force-redeploy", {"service_url": "http://host:99999/v1"}, "service_url"),
    ("cleanup-stale-deployments", {"service_url": ""}, "service_url"),
    ("cleanup-stale-deployments", {"service_url": "http:///no-host"}, "service_url"),
    ("recover-stuck-workflow", {"service_name": "bad name", "service_key": "k1"}, "service_name"),
    ("recover-stuck-workflow", {"service_name": WORKFLOW, "service_key": "a/b"}, "service_key"),
    ("recover-stuck-workflow", {"service_name": WORKFLOW}, "service_key"),
]


@pytest.mark.parametrize(("operation", "data", "field"), BAD_INPUTS)
def test_bad_input_shows_form_errors_and_a_confirmed_one_is_recorded(operator_client, operation, data, field):
    review = operator_client.post(form_url(operation), data)
    assert review.status_code == 200
    assert 'class="errorlist' in review.content.decode() and 'name="confirm"' not in review.content.decode()
    assert field in review.context["form"].errors
    assert not OperationAudit.objects.exists()  # nothing was attempted yet

    confirmed = operator_client.post(form_url(operation), {**data, "confirm": "yes"})

    assert confirmed.status_code == 200
    assert field in confirmed.context["form"].errors
    row = _only_row()
    assert (row.outcome, row.error_code, row.actor) == ("failed", "VALIDATION_ERROR", "operator:olga")
    assert field in row.error


def test_the_recovery_forms_keep_csrf_on(restate):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(_staff("cora", ("cases", "operate_case")))
    second = restate.start_service()

    response = strict.post(form_url("force-redeploy"), {"service_url": second.url, "force": "True", "confirm": "yes"})

    assert response.status_code == 403
    assert second.url not in restate.deployment_urls().values()
    assert not OperationAudit.objects.exists()


def test_a_superuser_may_operate(client, restate):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    primary_id = restate.admin.register_deployment(restate.primary.url, force=False).id

    _, confirmed = review_then_confirm(client, "force-redeploy", {"service_url": restate.primary.url})

    assert confirmed.status_code == 302
    assert primary_id in restate.deployment_urls()
    row = _only_row()
    assert (row.actor, row.role, row.outcome) == ("operator:root", "superuser", "succeeded")
    assert row.arguments == {"serviceUrl": restate.primary.url, "force": False}  # the box was left unticked


# --------------------------------------------------------------------------- in a browser


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser_page():
    import os
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup --test (apt-get install -y chromium)", pytrace=False)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's ORM calls stay plain synchronous calls.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
            page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            try:
                yield page
            finally:
                browser.close()
                # The test's ORM calls ran while Playwright's loop was current, on a connection of their own.
                connections.close_all()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_an_operator_recovers_a_stuck_workflow_by_clicking_through(browser_page, live_server, restate, tmp_path):
    _staff("olga", ("cases", "operate_case"))
    key = restate.new_key("invitation")
    failed_id = restate.wait_status(restate.submit(key, "fail"), "completed")["id"]
    page = browser_page

    page.goto(f"{live_server.url}/admin/login/?next={PANEL}")
    page.fill("input[name=username]", "olga")
    page.fill("input[name=password]", "pw")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}{PANEL}")
    page.screenshot(path=tmp_path / "panel.png", full_page=True)
    row = page.locator("tr", has_text=failed_id)
    row.get_by_role("link", name="recover").click()

    assert page.input_value("input[name=service_key]") == key
    page.fill("textarea[name=reason]", "INC-7: provider outage is over")
    page.click("input[type=submit][value=Review]")
    page.screenshot(path=tmp_path / "confirm.png", full_page=True)
    assert f"Recent terminal failure of this key: {failed_id}" in page.content()
    page.get_by_role("button", name="Confirm: recover a stuck workflow").click()

    page.wait_for_url(f"{live_server.url}{PANEL}")
    page.screenshot(path=tmp_path / "done.png", full_page=True)
    assert "Recover a stuck workflow: purged the terminal-failed invocations" in page.content()
    assert restate.invocation(failed_id) is None
    row = _only_row()
    assert (row.actor, row.outcome, row.reason) == ("operator:olga", "succeeded", "INC-7: provider outage is over")
