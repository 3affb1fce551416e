"""An abandoned (or rejected) case owes each run it leaves parked a notice through the run's runtime: delayed so a
reopen can still take the case back, never for a run another open case holds, bounded and visible when it fails.
(The runtimes receiving it are in tests/runtimes/test_abandon.py.)"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from cases import outbox, services
from cases.models import CaseRun, CaseState, OutboxItem, Run, Runtime

pytestmark = pytest.mark.django_db


def notices(case) -> list[OutboxItem]:
    return list(OutboxItem.objects.filter(kind=services.ABANDON_RUN, case=case).order_by("pk"))


def events(run_id: str, action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(run_id=run_id, action=action))


def test_a_rejected_case_owes_its_parked_run_a_delayed_notice_that_a_reopen_cancels(make_case, settings):
    settings.REVIVE_ABANDON_NOTICE_DELAY_SECONDS = 600
    case = make_case(CaseState.AWAITING_APPROVAL)
    services.case_reject(case_id=case.pk, actor="operator:bob", reason="misclick")
    [notice] = notices(case)
    assert notice.run_id == case.run_id and notice.payload["reason"] == "misclick"
    assert notice.not_before > timezone.now() + timedelta(seconds=590)

    assert outbox.outbox_dispatch(notice.pk).outcome == "busy"  # too early: no attempt is spent
    notice.refresh_from_db()
    assert notice.attempts == 0 and Run.objects.get(pk=case.run_id).state == Run.State.PARKED

    services.case_reopen(case_id=case.pk, actor="operator:bob", reason="rejected by mistake")
    OutboxItem.objects.filter(pk=notice.pk).update(not_before=timezone.now() - timedelta(seconds=1))
    assert outbox.outbox_dispatch(notice.pk).outcome == "done"
    assert Run.objects.get(pk=case.run_id).state == Run.State.PARKED  # the reopened case's run was never told
    assert not events(case.run_id, "run.abandoned") and not events(case.run_id, "run.abandoned_told")

    services.case_reject(case_id=case.pk, actor="operator:bob", reason="now for real")
    assert [n.payload["reason"] for n in notices(case)] == ["misclick", "now for real"]  # a new notice


def test_a_run_another_open_case_holds_is_owed_no_notice_and_stays_parked(make_case, settings):
    settings.REVIVE_ABANDON_NOTICE_DELAY_SECONDS = 0
    first = make_case(CaseState.AWAITING_OWNER)
    other = make_case(CaseState.AWAITING_OWNER)  # another connection's case, holding the first case's run too
    CaseRun.objects.create(case=other, run_id=first.run_id)
    services.case_abandon(case_id=first.pk, actor="operator:ann", reason="gave up")
    assert not notices(first)
    assert Run.objects.get(pk=first.run_id).state == Run.State.PARKED
    # A notice owed before the other case held the run is not delivered either: the claim looks again.
    assert services.run_abandon_claim(run_id=first.run_id, case_id=first.pk, actor="test").outcome == "held"
    assert Run.objects.get(pk=first.run_id).state == Run.State.PARKED


def test_a_runtime_that_cannot_be_told_leaves_the_run_parked_and_says_so(make_case, make_run, settings):
    settings.REVIVE_ABANDON_NOTICE_DELAY_SECONDS = 0
    # A LangGraph.js graph lives in its worker, which resumes its own thread: Revive cannot reach it.
    run = make_run(
        runtime=Runtime.LANGGRAPH, runtime_ref={"thread_id": "t-js", "graph": "briefing", "resumed_by": "worker"}
    )
    case = make_case(CaseState.AWAITING_OWNER, run=run)
    services.case_abandon(case_id=case.pk, actor="operator:ann", reason="owner left")
    [notice] = notices(case)
    assert outbox.outbox_dispatch(notice.pk).outcome == "done"
    assert Run.objects.get(pk=run.pk).state == Run.State.PARKED
    [event] = events(run.pk, "run.abandon_not_told")
    assert event.outcome == "error" and "cannot be told" in event.arguments["error"]
    assert (
        services.case_reopen(case_id=case.pk, actor="operator:ann", reason="owner is back").state
        == CaseState.AWAITING_OWNER
    )


def test_a_notice_that_cannot_be_delivered_is_retried_with_bounds_then_visible(make_case, make_run, settings):
    """A LangGraph thread that never reached its wait: ``RunNotWaiting``, retried, then the row fails."""
    settings.REVIVE_ABANDON_NOTICE_DELAY_SECONDS = 0
    settings.REVIVE_RESUME_MAX_RETRIES = 1
    settings.REVIVE_LANGGRAPH_GRAPHS = {"adapter-test": "tests.runtimes.test_langgraph_adapter:graph"}
    from cases.runtimes import reset_adapters

    reset_adapters()
    run = make_run(
        runtime=Runtime.LANGGRAPH, runtime_ref={"thread_id": f"t-{uuid.uuid4().hex[:8]}", "graph": "adapter-test"}
    )
    case = make_case(CaseState.AWAITING_OWNER, run=run)
    services.case_abandon(case_id=case.pk, actor="operator:ann", reason="owner left")
    [notice] = notices(case)
    try:
        assert outbox.outbox_dispatch(notice.pk).outcome == "retry"
        OutboxItem.objects.filter(pk=notice.pk).update(claimed_until=None)
        assert outbox.outbox_dispatch(notice.pk).outcome == "failed"
    finally:
        reset_adapters()
    notice.refresh_from_db()
    assert (notice.state, notice.attempts) == (
        OutboxItem.State.FAILED,
        2,
    ) and "not reached its wait" in notice.last_error
    # Claimed before the runtime was asked: Revive holds it abandoned, and the timeline says the runtime was not told.
    assert Run.objects.get(pk=run.pk).state == Run.State.ABANDONED
    assert [
        e.action for e in AuditEvent.objects.filter(run_id=run.pk, action__startswith="run.abandon").order_by("pk")
    ] == ["run.abandoned", "run.abandon_not_told"]
    assert not events(run.pk, "run.abandoned_told")


def test_a_run_told_abandoned_takes_no_further_action_and_cannot_be_reopened(make_case, api, settings):
    settings.REVIVE_ABANDON_NOTICE_DELAY_SECONDS = 0
    case = make_case(CaseState.AWAITING_OWNER)
    services.case_abandon(case_id=case.pk, actor="operator:ann", reason="owner left")
    claim = services.run_abandon_claim(run_id=case.run_id, case_id=case.pk, actor="system:resume", reason="owner left")
    assert claim.outcome == "claimed"
    assert services.run_abandon_claim(run_id=case.run_id, case_id=case.pk, actor="system:resume").outcome == "claimed"
    assert len(events(case.run_id, "run.abandoned")) == 1

    answer = api.post(
        f"/runs/{case.run_id}/actions/send_exec_05/begin",
        {"checkpoint_id": "05", "connection_id": case.connection_id, "generation": 1},
    )
    assert answer.status_code == 409
    assert answer.json()["code"] == "RUN_ABANDONED" and answer.json()["data"]["case_id"] == case.reference
    with pytest.raises(Exception, match="no parked run left"):
        services.case_reopen(case_id=case.pk, actor="operator:ann", reason="too late")
