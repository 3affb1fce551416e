"""Hardening of the worker API: refusals kept in the audit log, no 500 from any input, one error shape under /api/."""

from __future__ import annotations

import json

import pytest

from audit.models import AuditEvent
from cases import services
from tests.cases.test_api import CONN, RUN, assert_error, endpoints

BEGIN = {"checkpoint_id": "05", "connection_id": CONN, "generation": 1}


@pytest.fixture
def world(make_connection, make_run):
    make_connection(CONN)
    make_run(RUN)


# --------------------------------------------------------------------------- refusals kept


def _executing_then_fenced(api):
    assert api.post(f"/runs/{RUN}/actions/send/begin", BEGIN).json()["decision"] == "execute"
    services.lease_advance(connection_id=CONN, from_generation=1, actor="t")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "route, body, what",
    [
        ("commit", {"generation": 1, "result": {"id": "m1"}}, "commit"),
        ("ambiguous", {"generation": 1, "reason": "timeout"}, "ambiguous"),
        ("reconcile", {"generation": 1, "found": True, "evidence": {"lookup": "x"}}, "reconcile"),
    ],
)
def test_a_fenced_write_keeps_exactly_one_audit_row(api, world, route, body, what):
    """The refusal is raised out of the write's transaction, which rolls back; its audit row is written after it."""
    _executing_then_fenced(api)
    assert_error(api.post(f"/runs/{RUN}/actions/send/{route}", body), 409, "LEASE_FENCED")
    rows = AuditEvent.objects.filter(action=f"{what}.fenced")
    assert rows.count() == 1
    row = rows.get()
    assert (row.outcome, row.run_id, row.connection_id) == ("refused", RUN, CONN)
    assert row.arguments == {"generation": 1, "current_generation": 2}


@pytest.mark.django_db(transaction=True)
def test_begin_and_reports_keep_their_fenced_row_too(api, world):
    _executing_then_fenced(api)
    assert api.post(f"/runs/{RUN}/actions/other/begin", BEGIN).json()["decision"] == "fenced"
    report = {"connection_id": CONN, "generation": 1, "error": {"status": 400, "body": {"error": "invalid_grant"}}}
    assert api.post(f"/runs/{RUN}/credential-failures", report).json()["outcome"] == "reacquire"
    assert AuditEvent.objects.filter(action="begin.fenced").count() == 1
    assert AuditEvent.objects.filter(action="report.fenced").count() == 1


def test_a_commit_claimed_under_another_generation_keeps_its_row(api, world, make_run):
    """Advanced to 2, begun at 2; a commit presenting 2 on an action claimed at 1 is refused and recorded once."""
    services.lease_advance(connection_id=CONN, from_generation=1, actor="t")
    begin2 = dict(BEGIN, generation=2)
    assert api.post(f"/runs/{RUN}/actions/send/begin", begin2).json()["decision"] == "execute"
    from cases.models import Action

    Action.objects.filter(action_key="send").update(generation=1)
    assert_error(api.post(f"/runs/{RUN}/actions/send/commit", {"generation": 2}), 409, "LEASE_FENCED")
    assert AuditEvent.objects.filter(action="commit.fenced", outcome="refused").count() == 1


# --------------------------------------------------------------------------- no 500 from any input

UNSTORABLE = ["a\u0000b", "a\ud800b", "\udfff"]

# (path, body) with one text field replaced by each unstorable string; the field the 422 must name.
TEXT_FIELDS = [
    ("/runs", lambda v: {"run_id": "r2", "runtime": "langgraph", "workflow_name": v}, "workflow_name"),
    (
        "/runs",
        lambda v: {"run_id": "r2", "runtime": "langgraph", "workflow_name": "w", "runtime_ref": {"thread": v}},
        "runtime_ref",
    ),
    (
        "/runs",
        lambda v: {"run_id": "r2", "runtime": "langgraph", "workflow_name": "w", "runtime_ref": {v: 1}},
        "runtime_ref",
    ),
    (f"/runs/{RUN}/checkpoints", lambda v: {"checkpoint_id": "05", "label": v}, "label"),
    (f"/runs/{RUN}/checkpoints", lambda v: {"checkpoint_id": "05", "runtime_ref": {"a": [1, {"b": v}]}}, "runtime_ref"),
    (f"/runs/{RUN}/actions/send/begin", lambda v: dict(BEGIN, params={"to": v}), "params"),
    (f"/runs/{RUN}/actions/send/commit", lambda v: {"generation": 1, "result": {"id": v}}, "result"),
    (f"/runs/{RUN}/actions/send/commit", lambda v: {"generation": 1, "external_ref": v}, "external_ref"),
    (f"/runs/{RUN}/actions/send/ambiguous", lambda v: {"generation": 1, "reason": v}, "reason"),
    (
        f"/runs/{RUN}/actions/send/reconcile",
        lambda v: {"generation": 1, "found": True, "evidence": {"note": v}},
        "evidence",
    ),
    (
        f"/runs/{RUN}/actions/send/fail",
        lambda v: {"generation": 1, "error": {"status": 400, "body": {"error": v}}},
        "error",
    ),
    (
        f"/runs/{RUN}/credential-failures",
        lambda v: {"connection_id": CONN, "generation": 1, "error": {"status": 400, "body": {"error_description": v}}},
        "error",
    ),
]


@pytest.mark.django_db
@pytest.mark.parametrize("text", UNSTORABLE, ids=["nul", "lone-high", "lone-low"])
@pytest.mark.parametrize("path, make, field", TEXT_FIELDS)
def test_text_the_database_cannot_store_is_a_422_naming_the_field(api, client, world, path, make, field, text):
    assert api.post(f"/runs/{RUN}/actions/send/begin", BEGIN).json()["decision"] == "execute"
    raw = json.dumps(make(text))  # ensure_ascii: NUL and lone surrogates travel as \u escapes, as a client sends them
    resp = client.post(f"/api/v1{path}", data=raw, content_type="application/json", HTTP_X_API_KEY=api.key)
    assert_error(resp, 422, "VALIDATION_ERROR")
    assert any(field in e["loc"] for e in resp.json()["data"]["errors"]), resp.json()
    from cases.models import Action

    assert Action.objects.get(action_key="send").state == "executing"  # nothing half-written


@pytest.mark.django_db
@pytest.mark.parametrize("generation", [True, False, "1", 1.0, 1.5, None, [1], {"n": 1}])
@pytest.mark.parametrize("route", ["begin", "commit", "fail", "ambiguous", "reconcile"])
def test_generation_is_a_strict_integer(api, world, route, generation):
    body = {
        "begin": dict(BEGIN),
        "commit": {},
        "fail": {"error": {"status": 503}},
        "ambiguous": {"reason": "x"},
        "reconcile": {"found": False, "evidence": {}},
    }[route]
    body["generation"] = generation
    resp = api.post(f"/runs/{RUN}/actions/send/{route}", body)
    assert_error(resp, 422, "VALIDATION_ERROR")
    assert resp.json()["data"]["errors"][0]["loc"][-1] == "generation"


@pytest.mark.django_db
@pytest.mark.parametrize("found", ["true", 1, None])
def test_found_is_a_strict_boolean(api, world, found):
    assert_error(
        api.post(f"/runs/{RUN}/actions/send/reconcile", {"generation": 1, "found": found, "evidence": {}}),
        422,
        "VALIDATION_ERROR",
    )


@pytest.mark.django_db
@pytest.mark.parametrize("prefix", ["/api/v1", "/api/v2/admin/operator", "/api"])
def test_an_unknown_api_path_is_a_json_404(client, api, prefix):
    resp = client.get(f"{prefix}/nothing-here", HTTP_X_API_KEY=api.key)
    assert resp.status_code == 404
    body = resp.json()
    assert (body["code"], body["data"]) == ("NOT_FOUND", {}) and body["message"]  # the operator API adds its requestId


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
@pytest.mark.parametrize("path", sorted({p for m, p, b in endpoints() if m == "post"}))
def test_a_wrong_method_is_a_json_405_with_allow(client, api, world, method, path):
    resp = getattr(client, method)(f"/api/v1{path}", HTTP_X_API_KEY=api.key)
    assert_error(resp, 405, "METHOD_NOT_ALLOWED")
    assert resp["Allow"] == "POST"


@pytest.mark.django_db
@pytest.mark.parametrize("raw", ["{not json", "", "[1, 2", "\u00ff\u00fe", "null"])
def test_an_unparseable_body_is_a_json_400_or_422(client, api, world, raw):
    resp = client.post(
        f"/api/v1/runs/{RUN}/actions/send/begin", data=raw, content_type="application/json", HTTP_X_API_KEY=api.key
    )
    assert resp.status_code in (400, 422), resp.content
    assert resp.json()["code"] == {400: "BAD_REQUEST", 422: "VALIDATION_ERROR"}[resp.status_code]


# --------------------------------------------------------------------------- the case's class, by rule

MISCONFIGURED = {
    "status": 401,
    "body": {
        "error": "invalid_client",
        "error_codes": [7000215],
        "error_description": "AADSTS7000215: Invalid client secret provided.",
    },
}


def _report(run_id, conn_id, error):
    return services.credential_failure_report(
        run_id=run_id, connection_id=conn_id, generation=1, provider_error=error, actor="worker:t"
    )


@pytest.mark.django_db
@pytest.mark.parametrize("order", [("misconfig", "dead"), ("dead", "misconfig")])
def test_the_case_class_is_the_most_actionable_whatever_the_order(make_connection, make_run, order):
    from reauth.models import ReconnectRequest
    from tests.conftest import DEAD_GRANT

    conn = make_connection()
    errors = {"misconfig": MISCONFIGURED, "dead": DEAD_GRANT}
    answers = [_report(make_run().pk, conn.pk, errors[name]) for name in order]
    assert {a.case_reference for a in answers} == {answers[0].case_reference}
    from cases.models import RecoveryCase

    case = RecoveryCase.objects.get(reference=answers[0].case_reference)
    assert (case.failure_class, case.owner_required, case.provider_code) == ("dead_grant", True, "AADSTS700082")
    assert ReconnectRequest.objects.filter(case=case, state="active").count() == 1
    assert case.case_runs.count() == 2


def test_the_class_order_puts_every_owner_class_before_every_operator_class():
    from cases.services import CASE_CLASS_ORDER, OWNER_CLASSES
    from classifier import FailureClass

    owner = [c for c in CASE_CLASS_ORDER if c in OWNER_CLASSES]
    assert list(CASE_CLASS_ORDER[: len(owner)]) == owner and set(owner) == set(OWNER_CLASSES)
    case_classes = set(FailureClass) - {FailureClass.TRANSIENT, FailureClass.REFRESHABLE}  # these open no case
    assert set(CASE_CLASS_ORDER) == case_classes


@pytest.mark.django_db
def test_a_less_actionable_report_does_not_lower_the_class(make_connection, make_run):
    from cases.models import RecoveryCase
    from tests.conftest import DEAD_GRANT

    conn = make_connection()
    first = _report(make_run().pk, conn.pk, DEAD_GRANT)
    _report(make_run().pk, conn.pk, MISCONFIGURED)
    case = RecoveryCase.objects.get(reference=first.case_reference)
    assert case.failure_class == "dead_grant" and case.owner_required
    assert not AuditEvent.objects.filter(action="case.reclassified").exists()


@pytest.mark.django_db(transaction=True)
def test_racing_misconfiguration_and_dead_grant_reports_always_reach_the_owner(make_connection, make_run):
    """Five rounds of mixed reports on one (connection, generation), started at one instant on PostgreSQL."""
    from cases.models import RecoveryCase
    from reauth.models import ReconnectRequest
    from tests.cases.test_concurrency import run_concurrently
    from tests.conftest import DEAD_GRANT

    for _ in range(5):
        conn = make_connection()
        reports = [(make_run().pk, MISCONFIGURED) for _ in range(3)] + [(make_run().pk, DEAD_GRANT) for _ in range(3)]
        results, errors = run_concurrently([lambda r=r, e=e: _report(r, conn.pk, e) for r, e in reports])
        assert errors == [None] * len(reports)
        assert {a.outcome for a in results} == {"parked"}
        case = RecoveryCase.objects.get(connection=conn)
        assert (case.failure_class, case.owner_required) == ("dead_grant", True)
        assert ReconnectRequest.objects.filter(case=case, state="active").count() == 1
        assert case.case_runs.count() == len(reports)
