"""Lists of large tables: exact identifier search, estimated page counts (audit.admin_scale)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit import admin_scale
from cases import services
from cases.models import Action

pytestmark = pytest.mark.django_db

LEDGER = "/admin/cases/action/"


@pytest.fixture
def ledger(make_run, make_connection):
    conn = make_connection()
    runs = [make_run(f"run_scale_{i}") for i in range(3)]
    for run in runs:
        for key in ("send_exec_05", "archive_05"):
            services.action_begin(
                run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key=key, generation=1, actor="w"
            )
    return runs


def listed(client, **query) -> list[tuple[str, str]]:
    cl = client.get(LEDGER, query).context["cl"]
    return sorted((a.run_id, a.action_key) for a in cl.result_list)


def test_the_ledger_searches_action_key_run_id_and_idempotency_key_exactly(auditor_client, ledger):
    assert listed(auditor_client, q="send_exec_05") == [(r.pk, "send_exec_05") for r in ledger]
    assert listed(auditor_client, q="run_scale_1") == [("run_scale_1", "archive_05"), ("run_scale_1", "send_exec_05")]
    key = services.idempotency_key_for(run_id="run_scale_2", action_key="archive_05")
    assert listed(auditor_client, q=key) == [("run_scale_2", "archive_05")]
    # exact: no prefix, no other case, no partial match
    for term in ("send_exec", "SEND_EXEC_05", "run_scale", "nothing-like-it"):
        assert listed(auditor_client, q=term) == [], term


def test_page_counts_are_estimated_above_the_threshold_and_exact_below(auditor_client, ledger, monkeypatch):
    assert auditor_client.get(LEDGER).context["cl"].result_count == 6  # exact: a small list
    monkeypatch.setattr(admin_scale, "EXACT_COUNT_UP_TO", 0)
    with CaptureQueriesContext(connection) as queries:
        estimated = auditor_client.get(LEDGER).context["cl"].result_count
    assert estimated >= 1  # the planner's figure, whatever its statistics say
    assert not [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
    page = auditor_client.get(LEDGER, {"q": "nothing-like-it"})
    assert page.status_code == 200 and page.context["cl"].result_count == 0


# ---- deep pages: the ids first, then the rows (audit.admin_scale.EstimatedCountPaginator.page)

CASES = "/admin/cases/recoverycase/"


def case_page(client, **query) -> tuple[list[int], list[str]]:
    """The case ids a list page shows, in order, and the SQL it ran."""
    with CaptureQueriesContext(connection) as queries:
        response = client.get(CASES, query)
    assert response.status_code == 200
    return [c.pk for c in response.context["cl"].result_list], [q["sql"] for q in queries]


def test_a_deep_page_shows_the_rows_of_its_place_in_the_list(operator_client):
    from .conftest import bulk_cases

    bulk_cases(130)
    everything, _ = case_page(operator_client, all="")
    per_page = len(case_page(operator_client)[0])
    assert per_page < 130  # several pages
    shown = []
    for number in range(1, -(-130 // per_page) + 1):
        ids, sql = case_page(operator_client, p=number)
        shown += ids
        if number > 1:  # the skipped rows are walked for their ids only; the page's rows are read by id
            offsets = [s for s in sql if "OFFSET" in s.upper()]
            assert len(offsets) == 1 and offsets[0].upper().startswith('SELECT "CASES_RECOVERYCASE"."ID" AS'), offsets
    assert shown == everything  # every case once, in the list's order (urgency, age, id)


def test_a_deep_page_of_the_ledger_shows_the_rows_of_its_place_in_the_list(auditor_client, ledger):
    from .conftest import bulk_cases

    bulk_cases(110)
    cl = auditor_client.get(LEDGER, {"all": ""}).context["cl"]
    everything = [a.pk for a in cl.result_list]
    shown = []
    page = 1
    while len(shown) < len(everything):
        shown += [a.pk for a in auditor_client.get(LEDGER, {"p": page}).context["cl"].result_list]
        page += 1
    assert shown == everything == sorted(everything, reverse=True)


def test_a_deep_page_runs_the_same_statements_whatever_the_number_of_cases(operator_client):
    from .conftest import bulk_cases

    bulk_cases(120)
    small = case_page(operator_client, p=2)[1]
    bulk_cases(380)
    large = case_page(operator_client, p=2)[1]
    deeper = case_page(operator_client, p=8)[1]
    assert len(small) == len(large) == len(deeper)


# ---- a broad case search: an action key more actions share than the direct lookups collect


@pytest.mark.parametrize("limit", [3, 5000])  # 3: every term below is broad; 5000: none is
def test_a_broad_action_key_finds_the_same_cases_walking_the_list(operator_client, monkeypatch, limit):
    from console import selectors

    from .conftest import bulk_cases

    shared = bulk_cases(12)  # every run has an action send_exec_05
    other = bulk_cases(1)[0]
    Action.objects.filter(pk=other.action_id).update(action_key="archive_05")
    monkeypatch.setattr(selectors, "SEARCH_DIRECT_LIMIT", limit)
    ids, sql = case_page(operator_client, q="send_exec_05", all="")
    assert sorted(ids) == sorted(c.pk for c in shared)
    # the list's order is kept: the same as the unsearched list restricted to the matches
    full = [pk for pk in case_page(operator_client, all="")[0] if pk in set(ids)]
    assert ids == full
    walked = [s for s in sql if "IS NOT NULL" in s.upper() and "ORDER BY" in s.upper()]
    assert bool(walked) == (limit == 3)  # the walk: correlated tests while the list is read in its order
    # exact terms still find exactly their case on the walk
    for term in (shared[4].reference, shared[4].run_id, shared[4].connection_id):
        assert case_page(operator_client, q=term)[0] == [shared[4].pk], term
    assert case_page(operator_client, q="archive_05")[0] == [other.pk]


def test_a_broad_search_runs_the_same_statements_whatever_the_number_of_cases(operator_client, monkeypatch):
    from console import selectors

    from .conftest import bulk_cases

    monkeypatch.setattr(selectors, "SEARCH_DIRECT_LIMIT", 3)
    bulk_cases(10)
    small = case_page(operator_client, q="send_exec_05")
    bulk_cases(120)
    large = case_page(operator_client, q="send_exec_05")
    assert len(small[1]) == len(large[1])
    assert len(large[0]) == len(case_page(operator_client)[0])  # a full page of matches
