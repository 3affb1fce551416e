"""Resume approvals: the policy table, where the resume path stops for it, and approve / reject / abandon."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from cases import services
from cases.errors import CaseAlreadyDecided, CaseTransitionNotAllowed
from cases.models import CaseState, RecoveryCase, Run
from cases.runtimes import ResumeResult, RunStatus, RuntimeAdapter, reset_adapters
from cases.services import Reconciliation, resume_approval_required
from reauth.models import ReconnectRequest
from revive_site.errors import ValidationFailed
from tests.conftest import worker_passes

pytestmark = pytest.mark.django_db

BY_HAND = Reconciliation(action="run_7f2/ticket_04", actor="operator:ann", evidence={"note": "found T-1"})
BY_RECONCILER = Reconciliation(
    action="run_7f2/send_exec_05",
    actor="reconciler:cases.x:find",
    evidence={"reconciler": "cases.x:find", "message_id": "m-1"},
)
BY_WORKER = Reconciliation(
    action="run_7f2/send_exec_05", actor="worker:w1", evidence={"source": "sdk reconcile callback", "found": False}
)
NO_EVIDENCE = Reconciliation(action="run_7f2/send_exec_05", actor="worker:w1", evidence={})
ONLY_WHO = Reconciliation(
    action="run_7f2/send_exec_05", actor="reconciler:cases.x:find", evidence={"reconciler": "cases.x:find"}
)
NULL_EVIDENCE = Reconciliation(action="run_7f2/send_exec_05", actor="system", evidence=None)


@pytest.mark.parametrize(
    "policy, reconciliations, required",
    [
        ("never", [], False),
        ("never", [BY_HAND, NO_EVIDENCE], False),
        ("always", [], True),
        ("always", [BY_RECONCILER], True),
        ("ambiguous", [], False),
        ("ambiguous", [BY_RECONCILER], False),
        ("ambiguous", [BY_WORKER], False),
        ("ambiguous", [BY_HAND], True),
        ("ambiguous", [NO_EVIDENCE], True),
        ("ambiguous", [ONLY_WHO], True),
        ("ambiguous", [NULL_EVIDENCE], True),
        ("ambiguous", [BY_RECONCILER, BY_WORKER, BY_HAND], True),
    ],
)
def test_approval_policy_table(policy, reconciliations, required):
    decision = resume_approval_required(policy=policy, reconciliations=reconciliations)
    assert (decision.policy, decision.required) == (policy, required)
    assert bool(decision.reasons) == required


def test_the_reasons_name_the_action_and_who_settled_it():
    decision = resume_approval_required(policy="ambiguous", reconciliations=[BY_HAND, NO_EVIDENCE])
    assert decision.reasons == (
        "run_7f2/ticket_04 was reconciled by hand (operator:ann)",
        "run_7f2/send_exec_05 was reconciled without evidence (worker:w1)",
    )


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown resume approval policy"):
        resume_approval_required(policy="sometimes", reconciliations=[])


def test_the_default_policy_is_ambiguous():
    from django.conf import settings

    assert settings.REVIVE_RESUME_APPROVAL == "ambiguous"


# --------------------------------------------------------------------------- where the resume path stops


@pytest.mark.parametrize(
    "policy, actor, evidence, expected",
    [
        ("ambiguous", "operator:ann", {"note": "checked the ticket system"}, CaseState.AWAITING_APPROVAL),
        ("ambiguous", "reconciler:x", {"reconciler": "x", "ticket": "T-1"}, CaseState.RESUMING),
        ("ambiguous", "worker:w1", {}, CaseState.AWAITING_APPROVAL),
        ("never", "operator:ann", {"note": "checked"}, CaseState.RESUMING),
        ("always", "reconciler:x", {"reconciler": "x", "ticket": "T-1"}, CaseState.AWAITING_APPROVAL),
    ],
)
def test_resume_begin_applies_the_policy_after_reconciliation(settings, make_case, policy, actor, evidence, expected):
    settings.REVIVE_RESUME_APPROVAL = policy
    case = make_case(CaseState.RECONCILING)
    services.action_reconcile(run_id=case.run_id, action_key="ticket_04", found=True, evidence=evidence, actor=actor)
    case = services.case_resume_begin(case_id=case.pk, actor="system:test")
    assert case.state == expected
    run_state = Run.objects.get(pk=case.run_id).state
    assert run_state == ("active" if expected == CaseState.RESUMING else "parked")
    if expected == CaseState.AWAITING_APPROVAL:
        event = AuditEvent.objects.filter(case_id=case.pk, action="case.awaiting_approval").get()
        assert event.arguments["policy"] == policy and event.arguments["reasons"]


@pytest.mark.parametrize(
    "policy, expected",
    [("never", CaseState.RESUMING), ("ambiguous", CaseState.RESUMING), ("always", CaseState.AWAITING_APPROVAL)],
)
def test_a_case_with_nothing_reconciled_waits_only_under_always(settings, make_case, policy, expected):
    settings.REVIVE_RESUME_APPROVAL = policy
    case = make_case(CaseState.REAUTHORIZED)
    assert services.case_resume_begin(case_id=case.pk, actor="system:test").state == expected


def test_a_reconciliation_from_before_the_case_opened_does_not_count(make_run, make_connection):
    """The ambiguous detour of an earlier incident, settled without evidence, does not hold this case."""
    run, conn = make_run(), make_connection()
    services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="w"
    )
    services.action_mark_ambiguous(run_id=run.pk, action_key="send", generation=1, reason="t", actor="w")
    services.action_reconcile(run_id=run.pk, action_key="send", found=False, evidence={}, generation=1, actor="w")
    services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="w"
    )
    from tests.conftest import DEAD_GRANT

    ref = services.action_fail(
        run_id=run.pk, action_key="send", generation=1, provider_error=DEAD_GRANT, actor="w"
    ).case_reference
    services.case_reauthorize(case_id=ref, actor="owner")
    assert services.case_resume_begin(case_id=ref, actor="system").state == CaseState.RESUMING


def test_resume_begin_and_dispatch_leave_a_case_awaiting_approval_alone(make_case):
    from cases.resume import case_resume_dispatch

    case = make_case(CaseState.AWAITING_APPROVAL)
    assert (
        services.case_resume_begin(case_id=case.pk, actor="system", defer_ambiguous=True).state
        == CaseState.AWAITING_APPROVAL
    )
    assert case_resume_dispatch(case_id=case.pk, actor="operator:x") == []
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.AWAITING_APPROVAL


# --------------------------------------------------------------------------- approve


def test_approve_releases_the_runs_and_owes_the_same_resume_as_the_automatic_path(
    make_case, held_outbox, django_capture_on_commit_callbacks
):
    case = make_case(CaseState.AWAITING_APPROVAL)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        approved = services.case_approve(case_id=case.reference, actor="operator:ann", reason="ticket T-1 verified")
    assert approved.state == CaseState.RESUMING
    assert Run.objects.get(pk=case.run_id).state == "active"
    # (run, case, generation): the outbox row the automatic release writes, dispatched on commit
    assert callbacks and held_outbox.resumes() == [(case.run_id, case.pk, 2)] and len(held_outbox.dispatched) == 1
    event = AuditEvent.objects.get(case_id=case.pk, action="case.resuming")
    assert (event.actor, event.arguments["approved"], event.arguments["reason"]) == (
        "operator:ann",
        True,
        "ticket T-1 verified",
    )
    assert AuditEvent.objects.filter(case_id=case.pk, action="run.unparked", actor="operator:ann").count() == 1


class RecordingAdapter(RuntimeAdapter):
    runtime = "langgraph"
    delivered: list = []

    def park(self, run, case):
        return {}

    def resume(self, case, new_generation, *, run, request):
        RecordingAdapter.delivered.append((run.pk, request.case_ids, new_generation))
        return ResumeResult(detail={"recorded": True})

    def status(self, run):
        return RunStatus(state="waiting")


def test_an_approved_case_is_resumed_through_its_runtime_adapter(
    make_case, settings, django_capture_on_commit_callbacks
):
    settings.REVIVE_RUNTIME_ADAPTERS = {**settings.REVIVE_RUNTIME_ADAPTERS, "langgraph": f"{__name__}.RecordingAdapter"}
    reset_adapters()
    RecordingAdapter.delivered = []
    try:
        case = make_case(CaseState.AWAITING_APPROVAL)
        with django_capture_on_commit_callbacks(execute=True):
            services.case_approve(case_id=case.pk, actor="operator:ann", reason="verified by hand")
    finally:
        reset_adapters()
    assert RecordingAdapter.delivered == [(case.run_id, (case.reference,), 2)]
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.RESUMING  # delivered, not yet past its action
    assert worker_passes(case.run_id, case.connection_id, "send_exec_05") == "execute"
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.RESUMED


def test_approve_again_returns_the_case_to_its_approver_and_names_them_to_anyone_else(
    make_case, held_outbox, django_capture_on_commit_callbacks
):
    case = make_case(CaseState.AWAITING_APPROVAL)
    with django_capture_on_commit_callbacks(execute=True):
        services.case_approve(case_id=case.pk, actor="operator:ann", reason="ok")
    with django_capture_on_commit_callbacks(execute=True):
        again = services.case_approve(case_id=case.pk, actor="operator:ann", reason="ok")
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(CaseAlreadyDecided) as refused:
        services.case_approve(case_id=case.pk, actor="operator:bob", reason="ok too")
    assert refused.value.code == "CASE_ALREADY_DECIDED" and refused.value.status == 409
    assert refused.value.data["decided_by"] == "operator:ann" and refused.value.data["decision"] == "approved"
    assert "already approved by operator:ann" in refused.value.message
    assert again.state == CaseState.RESUMING and len(held_outbox.resumes()) == 1 and len(held_outbox.dispatched) == 1
    assert AuditEvent.objects.filter(case_id=case.pk, action="case.resuming").count() == 1


@pytest.mark.parametrize(
    "state",
    [
        CaseState.OPENED,
        CaseState.REAUTHORIZED,
        CaseState.RECONCILING,
        CaseState.RESUMING,
        CaseState.RESUME_FAILED,
        CaseState.ABANDONED,
    ],
)
def test_approve_refuses_a_case_not_awaiting_approval(make_case, state):
    case = make_case(state)
    with pytest.raises(CaseTransitionNotAllowed, match="only a case awaiting approval"):
        services.case_approve(case_id=case.pk, actor="operator:ann", reason="go")
    assert RecoveryCase.objects.get(pk=case.pk).state == state


@pytest.mark.parametrize("service", [services.case_approve, services.case_reject, services.case_abandon])
@pytest.mark.parametrize("reason", ["", "   ", None])
def test_a_reason_is_required(make_case, service, reason):
    case = make_case(CaseState.AWAITING_APPROVAL)
    with pytest.raises(ValidationFailed):
        service(case_id=case.pk, actor="operator:ann", reason=reason)
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.AWAITING_APPROVAL


# --------------------------------------------------------------------------- reject and abandon


def test_reject_abandons_the_case_with_the_reason(make_case):
    case = make_case(CaseState.AWAITING_APPROVAL)
    rejected = services.case_reject(case_id=case.pk, actor="operator:ann", reason="the ticket was created twice")
    assert rejected.state == CaseState.ABANDONED and rejected.closed_at is not None
    event = AuditEvent.objects.get(case_id=case.pk, action="case.abandoned")
    assert event.actor == "operator:ann"
    assert event.arguments == {"rejected": True, "reason": "the ticket was created twice"}
    assert services.case_reject(case_id=case.pk, actor="operator:ann", reason="again").state == CaseState.ABANDONED


@pytest.mark.parametrize("state", [CaseState.OPENED, CaseState.REAUTHORIZED, CaseState.RESUMING])
def test_reject_refuses_a_case_not_awaiting_approval(make_case, state):
    case = make_case(state)
    with pytest.raises(CaseTransitionNotAllowed):
        services.case_reject(case_id=case.pk, actor="operator:ann", reason="no")


def test_abandon_revokes_the_owner_link(make_case):
    case = make_case(CaseState.OPENED)
    assert ReconnectRequest.objects.filter(case=case, state="active").count() == 1
    services.case_abandon(case_id=case.pk, actor="operator:ann", reason="owner left the company")
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.ABANDONED
    assert list(ReconnectRequest.objects.filter(case=case).values_list("state", "revoked_reason")) == [
        ("revoked", "case_abandoned")
    ]


@pytest.mark.parametrize(
    "state, allowed",
    [
        (CaseState.OPENED, True),
        (CaseState.AWAITING_OWNER, True),
        (CaseState.REAUTHORIZED, True),
        (CaseState.RECONCILING, True),
        (CaseState.AWAITING_APPROVAL, True),
        (CaseState.RESUME_FAILED, True),
        (CaseState.RESUMING, False),
        (CaseState.RESUMED, False),
        (CaseState.CLOSED, False),
    ],
)
def test_abandon_follows_the_transition_table(make_case, state, allowed):
    case = make_case(state)
    if allowed:
        assert services.case_abandon(case_id=case.pk, actor="operator:ann", reason="r").state == CaseState.ABANDONED
    else:
        with pytest.raises(CaseTransitionNotAllowed):
            services.case_abandon(case_id=case.pk, actor="operator:ann", reason="r")
        assert RecoveryCase.objects.get(pk=case.pk).state == state


def test_a_settling_by_hand_still_counts_after_the_action_executes_again_and_no_audit_row_is_read(
    make_case, held_outbox
):
    """The policy and the four-eyes rule read what the action keeps: the by-hand settling of ``ticket_04`` still
    holds the case once the action ran again and committed (its row now says ``committed``), and deciding reads no
    audit row."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from cases.models import Action

    assert held_outbox is not None  # owed resumes are written, not dispatched
    case = make_case(CaseState.RECONCILING)
    services.action_reconcile(
        run_id=case.run_id, action_key="ticket_04", found=False, evidence={"note": "not sent"}, actor="operator:ann"
    )
    assert services.case_resume_begin(case_id=case.pk, actor="system:test").state == CaseState.AWAITING_APPROVAL
    case = services.case_approve(case_id=case.pk, actor="operator:bob", reason="checked the ticket system")
    gen = case.connection.current_generation
    begin = services.action_begin(
        run_id=case.run_id,
        checkpoint_id="05",
        connection_id=case.connection_id,
        action_key="ticket_04",
        generation=gen,
        actor="worker:test",
    )
    assert begin.decision == "execute"
    services.action_commit(run_id=case.run_id, action_key="ticket_04", generation=gen, actor="worker:test")
    assert Action.objects.get(run_id=case.run_id, action_key="ticket_04").state == "committed"

    with CaptureQueriesContext(connection) as queries:
        decision = services.case_resume_approval(case)
        barred = services.case_four_eyes(case)
    assert decision.required
    assert decision.reasons == (f"{case.run_id}/ticket_04 was reconciled by hand (operator:ann)",)
    assert barred == {"operator:ann": "reconciled an action by hand"}
    assert queries.captured_queries
    assert not [q["sql"] for q in queries.captured_queries if "audit_auditevent" in q["sql"]]


def test_the_migrations_backfill_rebuilds_each_settling_from_the_audit_log(make_case, held_outbox):
    """``cases/0015`` fills ``Action.reconciliations`` of open cases' runs from the audit log once: on a real row
    (an action settled by hand) it rebuilds what ``action_reconcile`` writes."""
    import importlib

    from django.apps import apps

    from cases.models import Action

    assert held_outbox is not None
    case = make_case(CaseState.RECONCILING)
    services.action_reconcile(
        run_id=case.run_id, action_key="ticket_04", found=False, evidence={"note": "not sent"}, actor="operator:ann"
    )
    action = Action.objects.get(run_id=case.run_id, action_key="ticket_04")
    written = action.reconciliations
    assert [e["actor"] for e in written] == ["operator:ann"]
    Action.objects.filter(pk=action.pk).update(reconciliations=[])  # as before the migration

    importlib.import_module("cases.migrations.0015_action_reconciliations").backfill(apps, None)
    rebuilt = Action.objects.get(pk=action.pk).reconciliations
    assert [(e["actor"], e["evidence"]) for e in rebuilt] == [(e["actor"], e["evidence"]) for e in written]
    assert services.case_resume_approval(case).required
