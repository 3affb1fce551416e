"""The recovery lab in a real browser: a staff member opens /lab/, injects one fault, and watches the case's incident
record and recovery timeline (the console's own template) fill in up to the
fourth live transition (Playwright + Debian's Chromium, against the live server on PostgreSQL)."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

from audit.models import AuditEvent
from cases.runtimes import reset_adapters
from lab.access import LAB_GROUP, sync_lab_group

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def signed_in(chromium, live_server, *, staff: bool, lab: bool = True):
    user = get_user_model().objects.create_user(f"operator-{staff}-{lab}", password="x", is_staff=staff)
    if lab:
        sync_lab_group(apps)
        user.groups.add(Group.objects.get(name=LAB_GROUP))
    client = Client()
    client.force_login(user)
    context = chromium.new_context()
    context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}])
    return context


def test_staff_runs_a_scenario_and_sees_the_four_live_transitions(chromium, live_server, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    reset_adapters()
    context = signed_in(chromium, live_server, staff=True)
    page = context.new_page()
    page.goto(f"{live_server.url}/lab/")
    assert page.locator("#case-story").inner_text() == ""
    page.select_option("select[name=scenario]", "revoked")
    page.click("button[type=submit]")
    # While the scenario runs, the case's timeline fills in, drawn by the console's template.
    page.wait_for_selector("#case-story #timeline-table tbody tr[data-action='case.opened']", timeout=120_000)
    running = page.locator("#case-story #timeline-table tbody tr").count()
    assert page.locator("#status.ok, #status.bad").count() == 0  # drawn while the scenario still runs
    page.wait_for_selector("#status.ok, #status.bad", timeout=180_000)
    assert "as expected" in page.locator("#status").inner_text(), page.locator("#lines").inner_text()
    story = page.locator("#case-story")
    rows = story.locator("#timeline-table tbody tr")
    assert rows.count() > running  # more rows arrived as the recovery went on
    assert story.locator("svg.revive-timeline g.tl-row").count() == rows.count()
    actions = [rows.nth(i).get_attribute("data-action") for i in range(rows.count())]
    for done in ("case.opened", "case.reauthorized", "case.resumed"):
        assert done in actions, actions
    assert story.locator("#live-transition").inner_text().startswith("04 / 04")
    assert story.locator("#generation").inner_text() == "01 rejected → 02 current"
    assert story.locator("#duplicates").inner_text() == "0 observed"
    assert story.locator("#case-state").inner_text() == "resumed"
    assert story.locator("#case-id a").count() == 0  # the lab permission alone does not open the console
    assert (
        page.evaluate("getComputedStyle(document.querySelector('#incident-record dl')).display") == "grid"
    )  # console CSS
    context.close()
    reset_adapters()


def test_the_lab_is_not_for_anyone_else(chromium, live_server):
    context = signed_in(chromium, live_server, staff=False)
    page = context.new_page()
    page.goto(f"{live_server.url}/lab/")
    assert "/admin/login/" in page.url  # staff only
    context.close()
    anonymous = Client(enforce_csrf_checks=True)
    assert anonymous.post("/lab/run", {"scenario": "revoked"}).status_code in (302, 403)  # refused, nothing started
    staff = Client(enforce_csrf_checks=True)
    staff.force_login(get_user_model().objects.create_user("op-csrf", password="x", is_staff=True))
    assert staff.post("/lab/run", {"scenario": "revoked"}).status_code == 403  # CSRF on


def test_staff_without_the_lab_permission_get_403_and_the_refusal_is_audited(chromium, live_server):
    context = signed_in(chromium, live_server, staff=True, lab=False)
    page = context.new_page()
    response = page.goto(f"{live_server.url}/lab/")
    assert response.status == 403
    assert page.locator("select[name=scenario]").count() == 0
    context.close()
    staff = Client()
    staff.force_login(get_user_model().objects.get(username="operator-True-False"))
    assert staff.post("/lab/run", {"scenario": "revoked"}).status_code == 403
    refused = AuditEvent.objects.filter(action="console.refused", entity_type="lab")
    assert [e.arguments["method"] for e in refused.order_by("id")] == ["GET", "POST"]
    assert refused.first().actor == "operator:operator-True-False"
    assert not AuditEvent.objects.filter(entity_type="case").exists()  # nothing started


def test_superusers_use_the_lab_without_the_group(client):
    root = get_user_model().objects.create_user("root-lab", password="x", is_staff=True, is_superuser=True)
    client.force_login(root)
    assert client.get("/lab/").status_code == 200
