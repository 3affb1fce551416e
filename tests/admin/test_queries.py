"""The console runs a constant number of queries whatever the page size or the size of a case (no N+1)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from cases import services
from cases.models import CaseState, RecoveryCase
from tests.conftest import DEAD_GRANT

from .conftest import bulk_cases

pytestmark = pytest.mark.django_db

LIST_ALL = "/admin/cases/recoverycase/?all="


def queries(client, url: str) -> tuple[int, bytes]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, response.status_code
    return len(ctx.captured_queries), response.content


@pytest.mark.parametrize(
    "url",
    [
        LIST_ALL,
        LIST_ALL + "&state=open",
        LIST_ALL + "&q=CASERV-0001",
        LIST_ALL + "&provider=entra&tenant=tid-1&age=24h&o=8",
    ],
)
def test_the_case_list_runs_the_same_queries_for_10_and_500_cases(operator_client, url):
    bulk_cases(10)
    small, page = queries(operator_client, url)
    if "q=" not in url:
        assert page.count(b'class="action-checkbox"') >= 1
    bulk_cases(490)
    large, page = queries(operator_client, url)
    assert RecoveryCase.objects.count() == 500
    assert small == large <= 12
    if url == LIST_ALL:
        assert page.count(b'name="_selected_action"') == 500  # every case is on the page


def test_the_case_page_runs_the_same_queries_with_10_and_500_cases_in_the_database(operator_client, make_case):
    case = make_case(CaseState.AWAITING_APPROVAL)
    bulk_cases(9)
    small, _ = queries(operator_client, f"/admin/cases/recoverycase/{case.pk}/change/")
    bulk_cases(490)
    large, page = queries(operator_client, f"/admin/cases/recoverycase/{case.pk}/change/")
    assert small == large <= 25
    assert case.reference.encode() in page


def test_the_case_page_runs_the_same_queries_for_a_case_blocking_1_or_20_runs(operator_client, make_case, make_run):
    case = make_case(CaseState.OPENED)
    url = f"/admin/cases/recoverycase/{case.pk}/change/"
    one, _ = queries(operator_client, url)
    for _ in range(19):
        run = make_run()
        services.credential_failure_report(
            run_id=run.pk,
            connection_id=case.connection_id,
            generation=1,
            provider_error=DEAD_GRANT,
            checkpoint_id="07",
            actor="worker:test",
        )
        services.action_begin(
            run_id=run.pk,
            checkpoint_id="07",
            connection_id=case.connection_id,
            action_key="send_exec_07",
            generation=1,
            actor="worker:test",
        )
    twenty, page = queries(operator_client, url)
    assert case.runs.count() == 20
    assert one == twenty
    assert page.count(b"send_exec_07") >= 19


def test_the_dashboard_runs_the_same_queries_for_10_and_500_cases(operator_client):
    bulk_cases(10)
    small, _ = queries(operator_client, "/admin/")
    bulk_cases(490)
    large, page = queries(operator_client, "/admin/")
    assert small == large
    assert b'id="recovery-dashboard"' in page


def test_the_urgency_ordering_is_served_by_its_index(operator_client):
    """With 5,000 cases (and fresh statistics), the list's ORDER BY ... LIMIT reads the urgency index, no sort."""
    for _ in range(10):
        bulk_cases(500)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE cases_recoverycase")
    from console.selectors import console_case_queryset

    qs = console_case_queryset().order_by("urgency", "opened_at", "pk")[:100]
    plan = qs.explain()
    assert "case_urgency_age_idx" in plan, plan
