"""Lists of large tables: exact identifier search, estimated page counts (audit.admin_scale)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit import admin_scale
from cases import services

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
