"""Statement budgets, counted on the wire (libpq's trace: BEGIN, COMMIT, SAVEPOINT and health checks included).

Deterministic, never timed: each test asserts how many statements PostgreSQL receives for one
operation. Django's query capture would miss transaction control and the health check; the trace
(bench/pgtrace.py) sees every message the client sends.
"""

from __future__ import annotations

import json

import pytest
from django.db import connection

from audit.models import AuditEvent
from bench.pgtrace import count_statements
from bench.profile_request import wsgi_call
from cases import services
from cases.models import Action, CaseState, RecoveryCase
from tests.conftest import DEAD_GRANT

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def persistent_connections():
    """Production's connection handling (CONN_MAX_AGE > 0, health checks on) for the requests of one test."""
    connection.close()
    saved = connection.settings_dict["CONN_MAX_AGE"], connection.settings_dict["CONN_HEALTH_CHECKS"]
    connection.settings_dict["CONN_MAX_AGE"], connection.settings_dict["CONN_HEALTH_CHECKS"] = 600, True
    yield
    connection.settings_dict["CONN_MAX_AGE"], connection.settings_dict["CONN_HEALTH_CHECKS"] = saved
    connection.close()


def own_transaction(trace) -> list[str]:
    """The statements up to the first COMMIT: the operation's own transaction, not what its on-commit hooks start."""
    return (
        trace.statements[: trace.statements.index("COMMIT") + 1] if "COMMIT" in trace.statements else trace.statements
    )


def begin_and_commit(
    app, key: str, run_id: str, conn_id: str, action_key: str, generation: int = 1
) -> tuple[dict, dict]:
    base = f"/api/v1/runs/{run_id}/actions/{action_key}"
    status, begun = wsgi_call(
        app, "POST", f"{base}/begin", {"checkpoint_id": "01", "connection_id": conn_id, "generation": generation}, key
    )
    assert status == 200, begun
    status, committed = wsgi_call(
        app, "POST", f"{base}/commit", {"generation": generation, "result": {"sent": action_key}}, key
    )
    assert status == 200, committed
    return json.loads(begun), json.loads(committed)


def test_begin_and_commit_over_the_worker_api_take_at_most_four_statements(
    persistent_connections, make_run, make_connection, worker_key
):
    from revive_site.wsgi import application  # what gunicorn serves: the worker API's lean handler

    run, conn = make_run(), make_connection()
    begin_and_commit(
        application, worker_key, run.pk, conn.pk, "warm"
    )  # the key cache, the connection, the prepared statements
    with count_statements() as begin_trace:
        status, begun = wsgi_call(
            application,
            "POST",
            f"/api/v1/runs/{run.pk}/actions/send/begin",
            {"checkpoint_id": "01", "connection_id": conn.pk, "generation": 1},
            worker_key,
        )
    with count_statements() as commit_trace:
        status, committed = wsgi_call(
            application,
            "POST",
            f"/api/v1/runs/{run.pk}/actions/send/commit",
            {"generation": 1, "result": {"sent": True}},
            worker_key,
        )
    assert json.loads(begun)["decision"] == "execute" and json.loads(committed)["state"] == "committed"
    total = len(begin_trace) + len(commit_trace)
    assert total <= 4, f"begin:\n{begin_trace.summary()}\ncommit:\n{commit_trace.summary()}"
    # Today: one statement each, no BEGIN/COMMIT, no health check, no API-key lookup.
    assert (len(begin_trace), len(commit_trace)) == (1, 1), (
        f"begin:\n{begin_trace.summary()}\ncommit:\n{commit_trace.summary()}"
    )
    action = Action.objects.get(run=run, action_key="send")
    assert (action.state, action.generation, action.attempts, action.result) == ("committed", 1, 1, {"sent": True})


def test_the_one_statement_path_writes_what_the_locked_path_writes(make_run, make_connection):
    """Same answer (lock_seconds included), same ledger row (the lock's expiry too) and the same audit events (the
    request's trace id too), whichever path took the action."""
    from dataclasses import asdict
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from audit.context import work_context_bind, work_context_reset
    from audit.models import AuditEvent

    trace = "0af7651916cd43dd8448eb211c80319c"
    conn = make_connection()
    runs, answers, locks = {}, {}, {}
    for path in ("fast", "locked"):
        run = make_run()
        runs[path] = run
        begin, commit = (
            (services.action_begin, services.action_commit)
            if path == "fast"
            else (services.actions._action_begin_locked, services.actions._action_commit_locked)
        )
        token = work_context_bind(trace_id=trace)
        try:
            before = timezone.now()
            answers[path] = asdict(
                begin(
                    run_id=run.pk,
                    checkpoint_id="07",
                    connection_id=conn.pk,
                    action_key="send",
                    generation=1,
                    params={"to": "ada"},
                    actor="worker:w",
                )
            )
            after = timezone.now()
            until = Action.objects.get(run=run).lock_expires_at
            locks[path] = (
                before + timedelta(seconds=settings.REVIVE_ACTION_LOCK_TIMEOUT)
                <= until
                <= after + timedelta(seconds=settings.REVIVE_ACTION_LOCK_TIMEOUT)
            )
            commit(
                run_id=run.pk, action_key="send", generation=1, result={"id": 7}, external_ref="msg-7", actor="worker:w"
            )
        finally:
            work_context_reset(token)

    def answer(path):
        a = answers[path]
        return {
            **a,
            "idempotency_key": a["idempotency_key"]
            == services.idempotency_key_for(run_id=runs[path].pk, action_key="send"),
        }

    def ledger(run):
        a = Action.objects.get(run=run)
        return (
            a.action_key,
            a.idempotency_key == services.idempotency_key_for(run_id=run.pk, action_key="send"),
            a.connection_id,
            a.checkpoint.checkpoint_id,
            a.checkpoint.label,
            a.params_hash,
            a.state,
            a.generation,
            a.attempts,
            a.result,
            a.external_ref,
            a.error,
            a.evidence,
            a.reconciled_by,
            a.lock_expires_at,
        )

    def events(run):
        return [
            (
                e.actor,
                e.action,
                e.entity_type,
                e.entity_id.replace(run.pk, "RUN"),
                e.case_id,
                e.case_reference,
                e.connection_id,
                e.before,
                e.after,
                e.arguments,
                e.outcome,
                e.trace_id,
            )
            for e in AuditEvent.objects.filter(run_id=run.pk).exclude(action="run.registered").order_by("id")
        ]

    assert answer("fast") == answer("locked")
    assert answers["fast"]["lock_seconds"] == settings.REVIVE_ACTION_LOCK_TIMEOUT
    assert locks == {"fast": True, "locked": True}
    assert ledger(runs["fast"]) == ledger(runs["locked"])
    assert events(runs["fast"]) == events(runs["locked"])
    assert [e[1] for e in events(runs["fast"])] == ["checkpoint.recorded", "action.executing", "action.committed"]
    assert {e[-1] for e in events(runs["fast"])} == {trace}


def test_failing_an_action_opens_a_case_within_budget(make_run, make_connection):
    run, conn = make_run(), make_connection()
    services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="t"
    )
    with count_statements() as trace:
        answer = services.action_fail(
            run_id=run.pk, action_key="send", generation=1, provider_error=DEAD_GRANT, actor="t"
        )
    assert answer.outcome == "parked" and RecoveryCase.objects.get().state in (
        CaseState.OPENED,
        CaseState.AWAITING_OWNER,
    )
    own = own_transaction(trace)
    assert len(own) <= 12, f"fail opening a case: {len(own)} statements, budget 12\n" + "\n".join(
        f"  {s[:140]}" for s in own
    )


def test_reconnect_completion_within_budget(make_run, make_connection):
    from reauth.custody import Grant
    from reauth.identity import ProviderIdentity
    from reauth.models import ReconnectRequest
    from reauth.services import reconnect_request_complete

    run = make_run()
    conn = make_connection(provider_subject="oid-ada", provider_tenant="tid-contoso")
    services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="t"
    )
    services.action_fail(run_id=run.pk, action_key="send", generation=1, provider_error=DEAD_GRANT, actor="t")
    request = ReconnectRequest.objects.get()
    with count_statements() as trace:
        reconnect_request_complete(
            public_id=request.public_id,
            presented=ProviderIdentity(subject="oid-ada", tenant="tid-contoso"),
            grant=Grant(access_token="at"),
            actor="owner:ada",
        )
    # The reconnect's own transaction; what its on-commit hook then starts (reconcile, resume) is counted elsewhere.
    own = own_transaction(trace)
    assert RecoveryCase.objects.get().resumed_generation == 2
    assert len(own) <= 12, f"reconnect completion: {len(own)} statements, budget 12\n" + "\n".join(
        f"  {s[:140]}" for s in own
    )


def test_releasing_runs_costs_the_same_whatever_their_number(make_run, make_connection):
    """Per released run O(1) and set-based: releasing 8 runs costs what releasing 2 does (one UPDATE unparks them all,
    one INSERT audits them, their deliveries are owed together)."""
    from cases.models import OutboxItem

    counts = {}
    for runs in (2, 8):
        conn = make_connection()
        for _ in range(runs):
            services.credential_failure_report(
                run_id=make_run().pk,
                connection_id=conn.pk,
                generation=1,
                provider_error=DEAD_GRANT,
                checkpoint_id="05",
                actor="t",
            )
        case = RecoveryCase.objects.get(connection=conn)
        services.case_reauthorize(case_id=case.pk, actor="t")
        with count_statements() as trace:
            services.case_resume_begin(case_id=case.pk, actor="t")
        # What the release itself owes, whatever the deliveries then did (these runs have no runtime to reach):
        # every run unparked once, audited once, owed one delivery.
        assert AuditEvent.objects.filter(case_id=case.pk, action="run.unparked").count() == runs
        assert OutboxItem.objects.filter(case=case, kind="run.resume").count() == runs
        own = own_transaction(trace)
        assert sum(s.startswith("UPDATE") for s in own) >= 1
        counts[runs] = len(own)
    assert counts[8] == counts[2], f"releasing runs: {counts[2]} statements for 2, {counts[8]} for 8"


@pytest.mark.parametrize("model", ["cases.Action", "cases.Checkpoint", "audit.AuditEvent"])
def test_the_one_statement_inserts_name_every_column_of_the_rows_they_write(model):
    """cases/hotpath.py writes these rows in SQL: a field added to the model must be added there too (Django sets
    defaults in Python, so a column the statement leaves out would be NULL or refused)."""
    import re

    from django.apps import apps

    from cases import hotpath

    table = apps.get_model(model)._meta.db_table
    found = re.search(
        rf"INSERT INTO {table} \(([^)]*)\)", hotpath.BEGIN_SQL.replace("{AUDIT_COLUMNS}", hotpath.AUDIT_COLUMNS)
    )
    assert found, f"no INSERT INTO {table} in the begin statement"
    named = {c.strip() for c in found.group(1).split(",")}
    columns = {f.column for f in apps.get_model(model)._meta.concrete_fields if not f.primary_key}
    assert named == columns, f"missing: {columns - named}, unknown: {named - columns}"


def test_a_failure_that_finds_its_case_opened_meanwhile_joins_it(make_run, make_connection):
    """Opening a case is one INSERT that steps aside (ON CONFLICT DO NOTHING, no savepoint) for the case another
    transaction opened or reopened after this one read none: the run joins that case and nothing of a second case
    (audit event, reconnect request, owed notification) is written."""
    from django.db import transaction

    from cases.models import CaseRun, OutboxItem
    from cases.services import failures
    from reauth.models import ReconnectRequest

    first, second, conn = make_run(), make_run(), make_connection()
    services.credential_failure_report(
        run_id=first.pk, connection_id=conn.pk, generation=1, provider_error=DEAD_GRANT, checkpoint_id="05", actor="t"
    )
    case = RecoveryCase.objects.get()
    with transaction.atomic():
        answer = failures._handle_failure(
            c=failures._classify(conn.provider, DEAD_GRANT),
            status=DEAD_GRANT.get("status"),
            run=second,
            conn=conn,
            generation=1,
            checkpoint=None,
            action=None,
            actor="t",
            open_case_for_unknown=True,
            known=failures._Known(open_case_id=None, superseded=False),  # as read before the other case committed
        )
    assert (answer.outcome, answer.case_reference) == ("parked", case.reference)
    assert RecoveryCase.objects.count() == 1
    assert set(CaseRun.objects.filter(case=case).values_list("run_id", flat=True)) == {first.pk, second.pk}
    assert AuditEvent.objects.filter(action="case.opened").count() == 1
    assert ReconnectRequest.objects.count() == 1
    assert OutboxItem.objects.filter(kind="reauth.notify_owner").count() == 1


def test_a_case_reference_is_written_by_its_insert_whatever_the_number_of_digits(make_connection):
    conn = make_connection()
    for pk in (7, 12345):
        case = RecoveryCase.objects.create(
            pk=pk, namespace_id=conn.namespace_id, connection=conn, rejected_generation=pk, provider="entra"
        )
        assert case.reference == f"CASERV-{pk:04d}"  # returned by the INSERT
        assert RecoveryCase.objects.get(pk=pk).reference == f"CASERV-{pk:04d}"


def test_owing_a_step_twice_keeps_one_row_and_dispatches_it_once(monkeypatch):
    from django.db import transaction

    from cases import outbox
    from cases.models import OutboxItem
    from cases.services.owed import RECONCILE_CASE

    sent: list[list[int]] = []
    monkeypatch.setattr(outbox, "_dispatch_after_commit", lambda ids, countdown=None: sent.append(ids))
    with transaction.atomic():
        first = outbox.outbox_put(kind=RECONCILE_CASE, key="k:1", payload={"case_id": 1, "generation": 2})
        again = outbox.outbox_put(kind=RECONCILE_CASE, key="k:1", payload={"case_id": 9, "generation": 9})
    assert first.pk == again.pk and again.payload == {"case_id": 1, "generation": 2}
    assert OutboxItem.objects.filter(key="k:1").count() == 1
    assert sent == [[first.pk]]
