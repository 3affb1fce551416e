"""The recovery pipeline after a reconnect: the watchdog, the release of runs blocked on several connections under
real concurrency, short action locks with heartbeats, and a stale refusal settling its action."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from audit.models import AuditEvent
from cases import pipeline, services
from cases.errors import ActionInProgress, ActionStateConflict
from cases.models import Action, CaseRun, CaseState, OutboxItem, RecoveryCase, Run
from console import selectors
from tests.cases.test_concurrency import run_concurrently
from tests.conftest import DEAD_GRANT, worker_passes


def parked_on_send(run, conn) -> RecoveryCase:
    """The seed's shape: ``send`` is begun, the provider rejects the credential, the run parks on ``send``."""
    services.action_begin(
        run_id=run.pk,
        checkpoint_id="05",
        connection_id=conn.pk,
        action_key="send",
        generation=conn.current_generation,
        actor="worker",
    )
    answer = services.action_fail(
        run_id=run.pk, action_key="send", generation=conn.current_generation, provider_error=DEAD_GRANT, actor="worker"
    )
    return RecoveryCase.objects.get(reference=answer.case_reference)


def delivered(case: RecoveryCase, at=None) -> None:
    """Its owed resume deliveries happened (as the delivery step records them)."""
    OutboxItem.objects.filter(case=case, kind=services.RESUME_RUN).update(state=OutboxItem.State.DONE)
    CaseRun.objects.filter(case=case).update(resume_sent_at=at or timezone.now())


def released(case: RecoveryCase) -> RecoveryCase:
    """Reconnected and released, its resume delivered."""
    services.case_reauthorize(case_id=case.pk, actor="owner")
    services.case_resume_begin(case_id=case.pk, actor="system")
    delivered(case)
    return RecoveryCase.objects.get(pk=case.pk)


def stalled(case: RecoveryCase, seconds: float) -> None:
    """Delivered, then nothing happened for ``seconds``: move the last resume and the ledger back in time."""
    then = timezone.now() - timedelta(seconds=seconds)
    delivered(case, at=then)
    Action.objects.filter(run__case_runs__case=case).update(updated_at=then)


# --------------------------------------------------------------------------- the watchdog


@pytest.mark.django_db
def test_a_resumed_run_that_stalls_is_redriven_then_its_case_fails_visibly(
    make_run, make_connection, held_outbox, settings
):
    settings.REVIVE_RESUME_MAX_ATTEMPTS = 2
    run, conn = make_run(), make_connection()
    case = released(parked_on_send(run, conn))
    # The resumed worker began the parked action again, then died: it stays executing until its lock runs out.
    services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=2, actor="worker"
    )
    assert pipeline.runs_watch().redriven == []  # still within REVIVE_RUN_STALL_SECONDS: not stalled

    stall = settings.REVIVE_RUN_STALL_SECONDS + 1
    Action.objects.filter(run=run).update(lock_expires_at=timezone.now() - timedelta(seconds=1))
    stalled(case, stall)
    assert pipeline.runs_watch().redriven == [run.pk]
    # The dead attempt was reaped (ambiguous: to be reconciled, never re-executed blindly) and the resume owed again.
    assert Action.objects.get(run=run, action_key="send").state == Action.State.AMBIGUOUS
    redrive = OutboxItem.objects.filter(kind=services.RESUME_RUN).order_by("pk").last()
    assert redrive.payload == {"run_id": run.pk, "case_id": case.pk, "generation": 2, "attempt": 1}
    assert AuditEvent.objects.filter(action="run.redriven", run_id=run.pk).count() == 1
    assert pipeline.runs_watch().redriven == []  # a re-drive resets the clock

    stalled(case, stall)
    assert pipeline.runs_watch().redriven == [run.pk]
    stalled(case, stall)
    assert pipeline.runs_watch().failed == [run.pk]
    case.refresh_from_db()
    assert case.state == CaseState.RESUME_FAILED and Run.objects.get(pk=run.pk).state == Run.State.PARKED
    event = AuditEvent.objects.get(action="case.resume_failed", case_id=case.pk)
    assert "made no progress past its parked action" in event.arguments["reason"]
    # Visible: first in the console's list (most urgent) and in the case's timeline with the reason.
    assert selectors.console_case_queryset().order_by("urgency", "opened_at").first().pk == case.pk
    detail = selectors.console_case_detail(case_id=case.pk)
    assert any("made no progress" in row.detail for row in detail.timeline if row.action == "case.resume_failed")


@pytest.mark.django_db
def test_a_run_that_moves_is_not_redriven_and_its_case_finishes_when_it_is_past(make_run, make_connection, held_outbox):
    run, conn = make_run(), make_connection()
    case = released(parked_on_send(run, conn))
    stalled(case, settings.REVIVE_RUN_STALL_SECONDS + 1)
    worker_passes(run.pk, conn.pk, "prepare")  # another action: progress, though not yet past ``send``
    assert pipeline.runs_watch().redriven == [] and RecoveryCase.objects.get(pk=case.pk).state == CaseState.RESUMING
    worker_passes(run.pk, conn.pk, "send")
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.RESUMED
    assert pipeline.runs_watch().redriven == []


# --------------------------------------------------------------------------- releasing runs blocked on two connections


@pytest.mark.django_db(transaction=True)
def test_two_connections_reconnected_at_the_same_instant_never_strand_a_run_blocked_on_both(
    make_run, make_connection, held_outbox
):
    """50 times: two owners reconnect two connections at once, and both pipelines release their cases at once.
    Every run blocked on both connections must come out active with one resume owed (the issue's race)."""
    for trial in range(50):
        a, b = make_connection(), make_connection()
        runs = [make_run() for _ in range(2)]
        cases = {}
        for conn in (a, b):
            for run in runs:
                answer = services.credential_failure_report(
                    run_id=run.pk,
                    connection_id=conn.pk,
                    generation=1,
                    provider_error=DEAD_GRANT,
                    checkpoint_id="05",
                    action_key=None,
                    actor="worker",
                )
                cases[conn.pk] = answer.case_reference

        def reconnect_and_release(conn_id):
            case = pipeline.recovery_reauthorized(case_id=cases[conn_id], actor=f"owner:{conn_id}")
            return pipeline.step_reconcile(case_id=case.pk, generation=2)

        results, errors = run_concurrently(
            [lambda c=a.pk: reconnect_and_release(c), lambda c=b.pk: reconnect_and_release(c)]
        )
        assert errors == [None, None], (trial, errors)
        states = dict(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("pk", "state"))
        assert set(states.values()) == {Run.State.ACTIVE}, (trial, states)
        assert set(RecoveryCase.objects.filter(reference__in=cases.values()).values_list("state", flat=True)) == {
            CaseState.RESUMING
        }
        owed = sorted(
            p["run_id"]
            for p in OutboxItem.objects.filter(kind=services.RESUME_RUN, run_id__in=states).values_list(
                "payload", flat=True
            )
        )
        assert owed == sorted(states), (trial, owed)  # each run owed exactly one delivery, by whichever came last


@pytest.mark.django_db
def test_the_watchdog_releases_a_run_left_parked_although_no_case_blocks_it(make_run, make_connection, held_outbox):
    run, conn = make_run(), make_connection()
    case = released(parked_on_send(run, conn))
    Run.objects.filter(pk=run.pk).update(state=Run.State.PARKED)  # as a lost race would have left it
    CaseRun.objects.filter(case=case).update(resume_sent_at=None)
    assert pipeline.runs_watch().released == [run.pk]
    assert Run.objects.get(pk=run.pk).state == Run.State.ACTIVE


# --------------------------------------------------------------------------- action locks


@pytest.mark.django_db
def test_a_heartbeat_extends_the_lock_and_in_progress_says_when_to_retry(make_run, make_connection):
    run, conn = make_run(), make_connection()
    begun = services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="worker"
    )
    assert (begun.decision, begun.lock_seconds) == ("execute", settings.REVIVE_ACTION_LOCK_TIMEOUT)
    with pytest.raises(ActionInProgress) as busy:
        services.action_begin(
            run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="worker-2"
        )
    assert 1 <= busy.value.data["retry_after"] <= settings.REVIVE_ACTION_LOCK_TIMEOUT

    Action.objects.filter(run=run).update(lock_expires_at=timezone.now() + timedelta(seconds=2))
    beat = services.action_heartbeat(run_id=run.pk, action_key="send", generation=1, actor="worker")
    assert beat.lock_expires_at > timezone.now() + timedelta(seconds=settings.REVIVE_ACTION_LOCK_TIMEOUT - 5)


@pytest.mark.django_db
def test_an_executing_action_whose_worker_stopped_beating_is_reconciled_at_the_next_begin(make_run, make_connection):
    run, conn = make_run(), make_connection()
    services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="worker"
    )
    Action.objects.filter(run=run).update(lock_expires_at=timezone.now() - timedelta(seconds=1))
    again = services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="worker-2"
    )
    assert again.decision == "reconcile" and Action.objects.get(run=run).state == Action.State.AMBIGUOUS
    with pytest.raises(ActionStateConflict):  # the dead attempt's worker learns it at its next beat
        services.action_heartbeat(run_id=run.pk, action_key="send", generation=1, actor="worker")


def test_the_heartbeat_route(api, make_run, make_connection):
    make_run("run_hb"), make_connection("conn_hb")
    begun = api.post(
        "/runs/run_hb/actions/send/begin", {"checkpoint_id": "05", "connection_id": "conn_hb", "generation": 1}
    )
    assert begun.json()["lock_seconds"] == settings.REVIVE_ACTION_LOCK_TIMEOUT
    beat = api.post("/runs/run_hb/actions/send/heartbeat", {"generation": 1})
    assert beat.status_code == 200 and beat.json()["state"] == "executing"
    bad = api.post("/runs/run_hb/actions/send/heartbeat", {"generation": 0})
    assert bad.status_code == 422 and bad.json()["code"] == "VALIDATION_ERROR"
    services.action_commit(run_id="run_hb", action_key="send", generation=1, actor="worker")
    late = api.post("/runs/run_hb/actions/send/heartbeat", {"generation": 1})
    assert late.status_code == 409 and late.json()["code"] == "ACTION_TRANSITION_NOT_ALLOWED"


@pytest.mark.django_db
def test_a_refusal_reported_with_a_stale_generation_still_settles_the_action(make_run, make_connection):
    """The worker executing ``send`` with generation 1 hears the provider refuse after the reconnect advanced the
    connection: it is told to reacquire, and ``send`` is ``failed`` (nothing happened), so the retry with
    generation 2 executes at once instead of meeting ACTION_IN_PROGRESS for a whole lock period."""
    run, other, conn = make_run(), make_run(), make_connection()
    services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="worker"
    )
    services.case_reauthorize(case_id=parked_on_send(other, conn).pk, actor="owner")
    answer = services.action_fail(
        run_id=run.pk, action_key="send", generation=1, provider_error=DEAD_GRANT, actor="worker"
    )
    assert answer.outcome == "reacquire" and Action.objects.get(run=run).state == Action.State.FAILED
    retry = services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=2, actor="worker"
    )
    assert retry.decision == "execute"


def resuming_on_an_ambiguous_send(run, conn) -> RecoveryCase:
    """The send timed out (ambiguous), the credential died, the owner reconnected: the case resumes with the
    settling left to the worker, whose begin answers ``reconcile``."""
    services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="worker"
    )
    services.action_mark_ambiguous(run_id=run.pk, action_key="send", generation=1, reason="timeout", actor="worker")
    answer = services.credential_failure_report(
        run_id=run.pk,
        connection_id=conn.pk,
        generation=1,
        provider_error=DEAD_GRANT,
        checkpoint_id="05",
        action_key="send",
        actor="worker",
    )
    case = RecoveryCase.objects.get(reference=answer.case_reference)
    services.case_reauthorize(case_id=case.pk, actor="owner")
    services.case_resume_begin(case_id=case.pk, actor="system", defer_ambiguous=True)
    delivered(case)
    begun = services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=2, actor="worker"
    )
    assert begun.decision == "reconcile"
    return RecoveryCase.objects.get(pk=case.pk)


@pytest.mark.django_db
def test_a_run_parked_on_an_ambiguous_action_is_past_it_once_the_resumed_worker_finds_the_effect(
    make_run, make_connection, held_outbox
):
    """The lab's timeout scenario: the send timed out (ambiguous), then the credential died while looking it up.
    After the reconnect the worker's reconcile callback finds the message with the new generation: that is the
    run going past its parked action (no further begin follows)."""
    run, conn = make_run(), make_connection()
    case = resuming_on_an_ambiguous_send(run, conn)
    assert case.state == CaseState.RESUMING
    services.action_reconcile(
        run_id=run.pk, action_key="send", found=True, evidence={"message": "msg-1"}, generation=2, actor="worker"
    )
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.RESUMED


@pytest.mark.django_db
def test_a_reconciliation_without_evidence_holds_the_resume_for_approval_before_anything_executes_again(
    api, make_run, make_connection, held_outbox, django_capture_on_commit_callbacks
):
    """Under the default policy ``ambiguous`` the worker's ``"evidence": {}`` is no evidence: the case waits for an
    operator, ``begin`` answers ``parked``, and only the approval owes the run a fresh resume."""
    run, conn = make_run("run_noev"), make_connection("conn_noev")
    case = resuming_on_an_ambiguous_send(run, conn)
    assert case.state == CaseState.RESUMING

    settled = api.post("/runs/run_noev/actions/send/reconcile", {"found": False, "evidence": {}, "generation": 2})
    assert settled.status_code == 200 and settled.json()["state"] == "reconciled_absent"
    case.refresh_from_db()
    assert case.state == CaseState.AWAITING_APPROVAL and Run.objects.get(pk=run.pk).state == "parked"
    held = AuditEvent.objects.filter(case_id=case.pk, action="case.awaiting_approval").latest("id")
    assert "without evidence" in held.arguments["reasons"][0] and held.arguments["held_run"] == "run_noev"
    again = api.post(
        "/runs/run_noev/actions/send/begin", {"checkpoint_id": "05", "connection_id": "conn_noev", "generation": 2}
    )
    assert again.json()["decision"] == "parked" and again.json()["case_id"] == case.reference
    assert held_outbox.resumes() == [("run_noev", case.pk, 2)]  # the first delivery only

    with django_capture_on_commit_callbacks(execute=True):
        services.case_approve(case_id=case.pk, actor="operator:ann", reason="checked the mailbox: not sent")
    assert held_outbox.resumes() == [("run_noev", case.pk, 2)] * 2  # a fresh delivery, not the spent one
    run.refresh_from_db()
    assert run.state == "active"
    redo = services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=2, actor="worker"
    )
    assert redo.decision == "execute"
    services.action_commit(run_id=run.pk, action_key="send", generation=2, result={"id": "m-2"}, actor="worker")
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.RESUMED


@pytest.mark.django_db
@pytest.mark.parametrize("policy, evidence", [("ambiguous", {"mailbox": "no message with that key"}), ("never", {})])
def test_a_reconciliation_with_evidence_or_under_never_lets_the_resumed_run_go_on(
    policy, evidence, settings, make_run, make_connection, held_outbox
):
    settings.REVIVE_RESUME_APPROVAL = policy
    run, conn = make_run(), make_connection()
    case = resuming_on_an_ambiguous_send(run, conn)
    services.action_reconcile(
        run_id=run.pk, action_key="send", found=False, evidence=evidence, generation=2, actor="worker"
    )
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.RESUMING
    assert (
        services.action_begin(
            run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=2, actor="worker"
        ).decision
        == "execute"
    )


@pytest.mark.django_db
def test_a_released_run_whose_delivery_ended_without_reaching_it_is_redriven(make_run, make_connection, held_outbox):
    run, conn = make_run(), make_connection()
    case = parked_on_send(run, conn)
    services.case_reauthorize(case_id=case.pk, actor="owner")
    services.case_resume_begin(case_id=case.pk, actor="system")
    assert pipeline.runs_watch().redriven == []  # its delivery is still owed: nothing to do
    OutboxItem.objects.filter(kind=services.RESUME_RUN).update(state=OutboxItem.State.DONE)  # ended, e.g. "busy"
    then = timezone.now() - timedelta(seconds=settings.REVIVE_RUN_STALL_SECONDS + 1)
    RecoveryCase.objects.filter(pk=case.pk).update(state_changed_at=then)
    Action.objects.filter(run=run).update(updated_at=then)
    assert pipeline.runs_watch().redriven == [run.pk]
    assert OutboxItem.objects.filter(kind=services.RESUME_RUN, state="pending").count() == 1
