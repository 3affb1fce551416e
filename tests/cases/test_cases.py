"""Recovery cases: opening, joining, answers per failure class, and the case state machine."""

import pytest

from audit.models import AuditEvent
from cases import services
from cases.errors import CaseTransitionNotAllowed
from cases.models import CaseRun, CaseState, CredentialGeneration, RecoveryCase, Run
from tests.conftest import DEAD_GRANT

pytestmark = pytest.mark.django_db


def report(run, conn, error, generation=1):
    return services.credential_failure_report(
        run_id=run.pk,
        connection_id=conn.pk,
        generation=generation,
        provider_error=error,
        checkpoint_id="05",
        actor="test",
    )


def test_dead_grant_opens_a_case_rejects_the_generation_and_parks_the_run(make_run, make_connection):
    run, conn = make_run(), make_connection()
    ans = report(run, conn, DEAD_GRANT)
    case = RecoveryCase.objects.get()
    assert ans.outcome == "parked" and ans.case_reference == case.reference == f"CASERV-{case.pk:04d}"
    assert (case.state, case.failure_class, case.provider_code, case.owner_required) == (
        "opened",
        "dead_grant",
        "AADSTS700082",
        True,
    )
    assert CredentialGeneration.objects.get(connection=conn, number=1).state == "rejected"
    assert Run.objects.get(pk=run.pk).state == "parked"
    lease = services.lease_acquire(connection_id=conn.pk)
    assert (lease.generation, lease.usable, lease.case_reference) == (1, False, case.reference)


def test_further_failures_on_the_same_generation_join_the_case(make_run, make_connection):
    conn = make_connection()
    runs = [make_run() for _ in range(3)]
    answers = [report(r, conn, DEAD_GRANT) for r in runs]
    assert len({a.case_reference for a in answers}) == 1
    case = RecoveryCase.objects.get()
    assert set(case.runs.values_list("pk", flat=True)) == {r.pk for r in runs}


def test_a_run_beginning_with_a_rejected_generation_joins_the_case(make_run, make_connection):
    conn = make_connection()
    first, second = make_run(), make_run()
    ans = report(first, conn, DEAD_GRANT)
    res = services.action_begin(
        run_id=second.pk, checkpoint_id="01", connection_id=conn.pk, action_key="a", generation=1, actor="t"
    )
    assert (res.decision, res.case_reference) == ("parked", ans.case_reference)
    assert CaseRun.objects.filter(run=second).exists()


def test_failure_with_a_superseded_generation_answers_reacquire(make_run, make_connection):
    run, conn = make_run(), make_connection()
    services.lease_advance(connection_id=conn.pk, from_generation=1, actor="test")
    ans = report(run, conn, DEAD_GRANT, generation=1)
    assert (ans.outcome, ans.current_generation) == ("reacquire", 2)
    assert not RecoveryCase.objects.exists()


@pytest.mark.parametrize(
    "error, outcome, retry_after",
    [
        ({"status": 429, "body": {"error": "too_many_requests"}, "headers": {"Retry-After": "7"}}, "retry", 7.0),
        ({"status": 503, "body": "Service Unavailable"}, "retry", 5.0),
        ({"status": None, "error_kind": "timeout"}, "retry", 5.0),
        ({"status": 401, "body": {"error": "invalid_token"}}, "refresh", None),
    ],
)
def test_transient_and_refreshable_failures_open_no_case(make_run, make_connection, error, outcome, retry_after):
    run, conn = make_run(), make_connection()
    ans = report(run, conn, error)
    assert (ans.outcome, ans.retry_after) == (outcome, retry_after)
    assert not RecoveryCase.objects.exists()
    assert Run.objects.get(pk=run.pk).state == "active"


def test_misconfiguration_opens_an_operator_only_case(make_run, make_connection):
    run, conn = make_run(), make_connection()
    ans = report(
        run,
        conn,
        {
            "status": 401,
            "body": {
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided.",
                "error_codes": [7000215],
            },
        },
    )
    case = RecoveryCase.objects.get()
    assert ans.outcome == "parked"
    assert (case.failure_class, case.owner_required) == ("misconfiguration", False)


def test_interaction_required_opens_an_owner_case(make_run, make_connection):
    run, conn = make_run(), make_connection()
    report(
        run,
        conn,
        {
            "status": 400,
            "body": {
                "error": "interaction_required",
                "error_description": "AADSTS50076: MFA required",
                "error_codes": [50076],
            },
        },
    )
    assert RecoveryCase.objects.get().failure_class == "interaction_required"


def test_provider_error_keeps_no_body_headers_or_token(make_run, make_connection):
    run, conn = make_run(), make_connection()
    error = dict(
        DEAD_GRANT,
        headers={"Authorization": "Bearer sekrit-token-value"},
        body=dict(DEAD_GRANT["body"], refresh_token="rt-sekrit-value"),
    )
    report(run, conn, error)
    dump = str(list(AuditEvent.objects.values())) + str(list(RecoveryCase.objects.values()))
    assert "sekrit" not in dump


def test_reauthorize_advances_the_generation_by_exactly_one_and_is_idempotent(make_run, make_connection):
    run, conn = make_run(), make_connection()
    ans = report(run, conn, DEAD_GRANT)
    for _ in range(2):
        case = services.case_reauthorize(case_id=ans.case_reference, actor="owner")
    conn.refresh_from_db()
    assert conn.current_generation == 2
    assert (case.state, case.resumed_generation) == ("reauthorized", 2)
    assert list(CredentialGeneration.objects.filter(connection=conn).values_list("number", "state")) == [
        (1, "superseded"),
        (2, "issued"),
    ]
    assert AuditEvent.objects.filter(action="lease.advanced").count() == 1


def test_a_case_is_resumed_only_once_its_run_is_past_the_action_it_was_parked_on(make_run, make_connection):
    run, conn = make_run(), make_connection()
    services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="w"
    )
    ans = services.action_fail(run_id=run.pk, action_key="send", generation=1, provider_error=DEAD_GRANT, actor="w")
    services.case_reauthorize(case_id=ans.case_reference, actor="owner")
    services.case_resume_begin(case_id=ans.case_reference, actor="system")
    assert Run.objects.get(pk=run.pk).state == "active"
    assert RecoveryCase.objects.get().state == "resuming"
    # Another action committing, or the parked one merely beginning, is not "past" it.
    other = services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="log", generation=2, actor="w"
    )
    services.action_commit(run_id=run.pk, action_key="log", generation=2, actor="w")
    res = services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=2, actor="w"
    )
    assert (other.decision, res.decision) == ("execute", "execute")
    assert RecoveryCase.objects.get().state == "resuming"
    services.action_commit(run_id=run.pk, action_key="send", generation=2, actor="w")
    assert RecoveryCase.objects.get().state == "resumed"
    assert AuditEvent.objects.filter(action="case.resumed").count() == 1
    assert AuditEvent.objects.get(action="run.resumed").after["how"] == "committed"


def test_run_blocked_on_two_connections_stays_parked_until_both_are_released(make_run, make_connection):
    run, a, b = make_run(), make_connection(), make_connection()
    ca = report(run, a, DEAD_GRANT).case_reference
    cb = report(run, b, DEAD_GRANT).case_reference
    for ref in (ca,):
        services.case_reauthorize(case_id=ref, actor="owner")
        services.case_resume_begin(case_id=ref, actor="system")
    assert Run.objects.get(pk=run.pk).state == "parked"
    services.case_reauthorize(case_id=cb, actor="owner")
    services.case_resume_begin(case_id=cb, actor="system")
    assert Run.objects.get(pk=run.pk).state == "active"


def test_ambiguous_actions_send_the_case_to_reconciling_first(make_run, make_connection, settings):
    settings.REVIVE_RESUME_APPROVAL = "never"  # a hand reconciliation waits for approval by default (tests/admin)
    run, conn = make_run(), make_connection()
    services.action_begin(
        run_id=run.pk, checkpoint_id="04", connection_id=conn.pk, action_key="ticket", generation=1, actor="w"
    )
    services.action_mark_ambiguous(run_id=run.pk, action_key="ticket", generation=1, reason="timeout", actor="w")
    ref = report(run, conn, DEAD_GRANT).case_reference
    services.case_reauthorize(case_id=ref, actor="owner")
    assert services.case_resume_begin(case_id=ref, actor="system").state == "reconciling"
    assert Run.objects.get(pk=run.pk).state == "parked"
    services.action_reconcile(
        run_id=run.pk, action_key="ticket", found=True, evidence={"ticket": "T-1"}, actor="operator:ann"
    )
    assert services.case_resume_begin(case_id=ref, actor="system").state == "resuming"


ALL = [s.value for s in CaseState]


@pytest.mark.parametrize("start", ALL)
@pytest.mark.parametrize("to", ALL)
def test_case_transition_table(make_run, make_connection, start, to):
    run, conn = make_run(), make_connection()
    ref = report(run, conn, DEAD_GRANT).case_reference
    RecoveryCase.objects.filter(reference=ref).update(state=start)
    allowed = to in services.CASE_TRANSITIONS[start]
    before = AuditEvent.objects.count()
    from django.db import transaction

    if allowed:
        with transaction.atomic():
            services.case_transition(services.case_lock(ref), to=to, actor="test")
        assert RecoveryCase.objects.get(reference=ref).state == to
        assert AuditEvent.objects.count() == before + 1
    else:
        with pytest.raises(CaseTransitionNotAllowed), transaction.atomic():
            services.case_transition(services.case_lock(ref), to=to, actor="test")
        assert RecoveryCase.objects.get(reference=ref).state == start
        assert AuditEvent.objects.count() == before
