"""The /lab/ page draws its session's case with the console's own template (``cases/_case_story.html``): the same
incident record and recovery timeline, only for the lab permission, only the session's case, and links into the
console only for a viewer who may open them there."""

from __future__ import annotations

import re

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.urls import reverse

from cases.models import CaseState
from lab import views
from lab.access import LAB_GROUP, sync_lab_group
from tests.admin.conftest import make_case, operator, superuser  # noqa: F401  (the console's case fixtures)

pytestmark = pytest.mark.django_db

SESSION = "labtest01"


def lab_user(username: str, *, lab: bool = True):
    user = get_user_model().objects.create_user(username, password="x", is_staff=True)
    if lab:
        sync_lab_group(apps)
        user.groups.add(Group.objects.get(name=LAB_GROUP))
    return user


@pytest.fixture
def lab_session(monkeypatch):
    """A lab session as ``views.start`` records it, whose scenario's run is ``run_ids``."""
    session = {
        "scenario": "revoked",
        "provider": "oidc",
        "runtime": "langgraph",
        "first_event": 0,
        "lines": [],
        "results": [],
        "run_ids": [],
        "done": False,
        "error": "",
        "started": 0.0,
        "user": "x",
    }
    monkeypatch.setitem(views._sessions, SESSION, session)
    return session


def between(html: str, start: str, end: str) -> str:
    a = html.index(start)
    return html[a : html.index(end, a) + len(end)]


def without_ages(html: str) -> str:  # "(3s ago)" ticks between two renders
    return re.sub(r"<small>\([^)]*ago\)</small>", "", html)


def test_the_lab_draws_the_sessions_case_as_the_console_does(client, superuser, make_case, lab_session):  # noqa: F811
    case = make_case(CaseState.AWAITING_APPROVAL)
    lab_session["run_ids"].append(case.run_id)
    client.force_login(superuser)
    console = client.get(reverse("admin:cases_recoverycase_change", args=[case.pk])).content.decode()
    client.force_login(lab_user("lab-only"))
    state = client.get(reverse("lab:session", args=[SESSION])).json()
    assert state["case_pk"] == case.pk
    fragment = client.get(state["case_html"])
    assert fragment.status_code == 200
    lab = fragment.content.decode()

    table = between(console, '<table id="timeline-table">', "</table>")
    assert table.count("<tr class=") >= 10 and 'data-action="case.opened"' in table
    assert between(lab, '<table id="timeline-table">', "</table>") == table  # the same event rows
    drawing = '<svg xmlns="http://www.w3.org/2000/svg" class="revive-timeline"'
    assert between(lab, drawing, "</svg>") == between(console, drawing, "</svg>")  # the same drawing
    assert between(lab, '<table id="ledger-table">', "</table>") == between(
        console, '<table id="ledger-table">', "</table>"
    )
    record = without_ages(between(console, '<section class="incident" id="incident-record"', "</section>"))
    assert f'id="case-id">{case.reference}<' in record and 'id="live-transition">03 / 04' in record
    assert without_ages(between(lab, '<section class="incident" id="incident-record"', "</section>")) == record
    # The lab permission alone does not open the console: no link into it, nothing else of the console's page.
    assert 'href="/admin/' not in lab
    assert 'id="operations"' not in lab and 'id="notes"' not in lab and "csrfmiddlewaretoken" not in lab


def test_a_viewer_who_may_open_the_console_gets_its_links(client, superuser, make_case, lab_session):  # noqa: F811
    case = make_case(CaseState.OPENED)
    lab_session["run_ids"].append(case.run_id)
    client.force_login(superuser)  # superusers use the lab without the group, and see the console
    lab = client.get(reverse("lab:case", args=[SESSION, case.pk])).content.decode()
    change = reverse("admin:cases_recoverycase_change", args=[case.pk])
    assert f'id="case-id"><a href="{change}">{case.reference}</a><' in lab
    assert client.get(change).status_code == 200


def test_only_the_lab_permission_and_only_the_sessions_case(client, make_case, lab_session):  # noqa: F811
    mine, other = make_case(CaseState.OPENED), make_case(CaseState.OPENED)
    lab_session["run_ids"].append(mine.run_id)
    client.force_login(lab_user("staff-no-lab", lab=False))
    assert client.get(reverse("lab:case", args=[SESSION, mine.pk])).status_code == 403
    client.force_login(lab_user("lab-user"))
    assert client.get(reverse("lab:case", args=[SESSION, mine.pk])).status_code == 200
    assert client.get(reverse("lab:case", args=[SESSION, other.pk])).status_code == 404  # not this session's case
    assert client.get(reverse("lab:case", args=["no-such-session", mine.pk])).status_code == 404
    lab_session["run_ids"].clear()  # before the scenario's run has started, the session has no case
    assert client.get(reverse("lab:case", args=[SESSION, mine.pk])).status_code == 404
    assert client.get(reverse("lab:session", args=[SESSION])).json()["case_html"] is None
