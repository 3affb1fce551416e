"""The resume services and tasks with a scripted runtime adapter: which runs get a resume, when, how often, and what
happens when the runtime keeps failing. (The real runtimes are in test_langgraph/test_temporal/test_restate.)"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django import db
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.models import AuditEvent
from cases import outbox, pipeline, resume, services
from cases.models import Action, CaseRun, CaseState, OutboxItem, RecoveryCase, Run
from cases.runtimes import RunGone, RunNotWaiting, RuntimeAdapter, RuntimeUnavailable, reset_adapters
from cases.runtimes.base import ResumeResult, RunStatus
from cases.tasks import reconcile_case, resume_run
from revive_site.celery import app as celery_app
from tests.conftest import DEAD_GRANT, worker_passes


class ScriptedAdapter(RuntimeAdapter):
    """Records every delivery; ``script[run_id]`` is a list of exceptions to raise before succeeding."""

    runtime = "langgraph"
    calls: list = []
    script: dict = {}
    delay: float = 0.0

    def park(self, run, case):
        return {"run": run.pk}

    def resume(self, case, new_generation, *, run, request):
        if self.delay:
            time.sleep(self.delay)
        ScriptedAdapter.calls.append((run.pk, tuple(request.case_ids), dict(request.generations)))
        pending = ScriptedAdapter.script.get(run.pk) or []
        if pending:
            raise pending.pop(0)
        return ResumeResult(detail={"scripted": True})

    def status(self, run):
        return RunStatus("waiting")


class HostingAdapter(ScriptedAdapter):
    """Like the LangGraph adapter with the graph in Revive's worker: the delivery executes the run."""

    def hosts(self, run):
        return True

    def resume(self, case, new_generation, *, run, request):
        HostingAdapter.redrives.append(request.redrive)
        return super().resume(case, new_generation, run=run, request=request)

    redrives: list = []


@pytest.fixture(autouse=True)
def scripted(settings):
    settings.REVIVE_RUNTIME_ADAPTERS = {
        **settings.REVIVE_RUNTIME_ADAPTERS,
        "langgraph": "tests.runtimes.test_resume.ScriptedAdapter",
    }
    settings.REVIVE_RECONCILERS = {}
    reset_adapters()
    ScriptedAdapter.calls, ScriptedAdapter.script, ScriptedAdapter.delay = [], {}, 0.0
    assert celery_app.conf.task_always_eager
    yield ScriptedAdapter
    reset_adapters()


def park(run, conn, *, checkpoint="05", action_key=None):
    answer = services.credential_failure_report(
        run_id=run.pk,
        connection_id=conn.pk,
        generation=conn.current_generation,
        provider_error=DEAD_GRANT,
        checkpoint_id=checkpoint,
        action_key=action_key,
        actor="worker",
    )
    assert answer.outcome == "parked"
    return RecoveryCase.objects.get(reference=answer.case_reference)


def reconnect(case, django_capture_on_commit_callbacks):
    """The owner's callback: advance the generation and enqueue reconcile-and-resume (eager here)."""
    with django_capture_on_commit_callbacks(execute=True):
        case = pipeline.recovery_reauthorized(case_id=case.pk, actor="owner")
    case.refresh_from_db()
    return case


def passes(run, conn) -> None:
    """The resumed worker goes on: its next protected action commits with the new generation. (These runs were
    parked by a report outside an action, so that is the point they were parked at.)"""
    assert worker_passes(run.pk, conn.pk, f"after_resume_{conn.pk}") == "execute"


def state_of(case) -> str:
    return RecoveryCase.objects.get(pk=case.pk).state


def delivered_runs():
    return [c[0] for c in ScriptedAdapter.calls]


@pytest.mark.django_db
def test_one_reconnect_resumes_every_run_of_the_connection_and_not_one_blocked_on_another(
    make_connection, make_run, django_capture_on_commit_callbacks
):
    a, b = make_connection(), make_connection()
    runs = [make_run() for _ in range(3)]
    blocked = make_run()
    case_a = park(runs[0], a)
    for run in runs[1:]:
        park(run, a)
    park(blocked, a)
    case_b = park(blocked, b)

    case_a = reconnect(case_a, django_capture_on_commit_callbacks)
    assert sorted(delivered_runs()) == sorted(r.pk for r in runs)
    assert all(ids == (case_a.reference,) for _, ids, _ in ScriptedAdapter.calls)
    assert Run.objects.get(pk=blocked.pk).state == Run.State.PARKED
    assert case_a.state == CaseState.RESUMING  # the blocked run has not had its resume yet

    ScriptedAdapter.calls.clear()
    case_b = reconnect(case_b, django_capture_on_commit_callbacks)
    # One delivery to the blocked run, naming both cases and the new generations of both connections.
    assert ScriptedAdapter.calls == [(blocked.pk, (case_a.reference, case_b.reference), {a.pk: 2, b.pk: 2})]
    # Delivered is not resumed: each case waits until its runs are past the point they were parked at.
    assert (state_of(case_a), state_of(case_b)) == (CaseState.RESUMING, CaseState.RESUMING)
    for run in runs:
        passes(run, a)
    assert (state_of(case_a), state_of(case_b)) == (CaseState.RESUMING, CaseState.RESUMING)
    passes(blocked, a)
    assert (state_of(case_a), state_of(case_b)) == (CaseState.RESUMED, CaseState.RESUMING)
    passes(blocked, b)
    assert (state_of(case_a), state_of(case_b)) == (CaseState.RESUMED, CaseState.RESUMED)
    assert CaseRun.objects.filter(resumed_at__isnull=True).count() == 0
    assert AuditEvent.objects.filter(action="case.resumed").count() == 2


@pytest.mark.django_db
def test_a_task_run_twice_or_for_a_case_that_moved_on_changes_nothing(
    make_connection, make_run, django_capture_on_commit_callbacks
):
    conn, run = make_connection(), make_run()
    case = reconnect(park(run, conn), django_capture_on_commit_callbacks)
    passes(run, conn)
    assert delivered_runs() == [run.pk] and state_of(case) == CaseState.RESUMED

    assert reconcile_case.delay(case.pk, 2).get() == 0
    assert resume_run.delay(run.pk, case.pk, 2).get() == "nothing"  # the run has had its resume
    assert resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=1).outcome == "stale"
    assert reconcile_case.delay(case.pk, 1).get() == 0  # enqueued for another generation
    assert delivered_runs() == [run.pk]
    assert AuditEvent.objects.filter(action="run.resume_delivered").count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_deliveries_of_one_resume_reach_the_runtime_once(make_connection, make_run, held_outbox):
    conn, run = make_connection(), make_run()
    case = park(run, conn)
    services.case_reauthorize(case_id=case.pk, actor="owner")
    services.case_resume_begin(case_id=case.pk, actor="system")
    ScriptedAdapter.delay = 0.3
    outcomes, barrier = [], threading.Barrier(4)

    def deliver():
        barrier.wait()
        try:
            outcomes.append(resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=2).outcome)
        finally:
            db.connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("delivered") == 1 and set(outcomes) <= {"delivered", "busy", "nothing"}
    assert delivered_runs() == [run.pk]
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.RESUMING
    assert Run.objects.get(pk=run.pk).resume_claimed_until is None


@pytest.mark.django_db
def test_transient_failures_retry_with_backoff_then_deliver(make_connection, make_run):
    conn, run = make_connection(), make_run()
    case = park(run, conn)
    services.case_reauthorize(case_id=case.pk, actor="owner")
    services.case_resume_begin(case_id=case.pk, actor="system")
    ScriptedAdapter.script[run.pk] = [RunNotWaiting("not yet"), RunNotWaiting("not yet"), RuntimeUnavailable("down")]

    first = resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=2, attempt=0)
    assert first.outcome == "retry" and first.countdown <= settings.REVIVE_RESUME_BACKOFF_FIRST
    second = resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=2, attempt=1)
    third = resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=2, attempt=2)
    assert (second.outcome, third.outcome) == ("retry", "retry")
    assert first.countdown < second.countdown < third.countdown  # exponential; "unavailable" starts higher
    last = resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=2, attempt=3)
    assert last.outcome == "delivered" and len(ScriptedAdapter.calls) == 4
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.RESUMING


@pytest.mark.django_db
def test_a_resume_that_keeps_failing_ends_in_resume_failed_and_an_operator_can_retry(
    make_connection, make_run, settings, django_capture_on_commit_callbacks
):
    settings.REVIVE_RESUME_MAX_RETRIES = 3
    conn, run, other = make_connection(), make_run(), make_run()
    case = park(run, conn)
    park(other, conn)
    ScriptedAdapter.script[run.pk] = [RuntimeUnavailable("temporal down")] * 10

    case = reconnect(case, django_capture_on_commit_callbacks)  # eager: the retries run inline
    assert delivered_runs().count(run.pk) == 4  # the first attempt and 3 retries, then no more
    assert delivered_runs().count(other.pk) == 1  # the failing run does not hold the others back
    assert case.state == CaseState.RESUME_FAILED
    assert Run.objects.get(pk=run.pk).state == Run.State.PARKED
    event = AuditEvent.objects.get(action="case.resume_failed")
    assert event.arguments["run_id"] == run.pk and "temporal down" in event.arguments["reason"]

    ScriptedAdapter.script[run.pk] = []
    with django_capture_on_commit_callbacks(execute=True):
        assert resume.case_resume_dispatch(case_id=case.reference, actor="operator:ada") == [run.pk]
    assert state_of(case) == CaseState.RESUMING and delivered_runs().count(run.pk) == 5
    passes(run, conn)
    passes(other, conn)
    assert state_of(case) == CaseState.RESUMED


@pytest.mark.django_db
def test_a_run_that_comes_back_after_its_resume_was_reported_failed_goes_on_and_the_case_follows(
    make_connection, make_run, settings, django_capture_on_commit_callbacks
):
    """The Restate hole: the resume timed out (``resume_failed``), then the runtime completed it after all and the
    run begins with the new generation. It is never answered ``parked`` for that: it proceeds, and the case
    follows it back to ``resuming`` and on to ``resumed``."""
    settings.REVIVE_RESUME_MAX_RETRIES = 0
    conn, run = make_connection(), make_run()
    services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="worker"
    )
    answer = services.action_fail(
        run_id=run.pk, action_key="send", generation=1, provider_error=DEAD_GRANT, actor="worker"
    )
    case = RecoveryCase.objects.get(reference=answer.case_reference)
    ScriptedAdapter.script[run.pk] = [RuntimeUnavailable("restate: service down")]
    case = reconnect(case, django_capture_on_commit_callbacks)
    assert case.state == CaseState.RESUME_FAILED and Run.objects.get(pk=run.pk).state == Run.State.PARKED

    begin = services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=2, actor="worker"
    )
    assert begin.decision == "execute"
    assert Run.objects.get(pk=run.pk).state == Run.State.ACTIVE and state_of(case) == CaseState.RESUMING
    services.action_commit(run_id=run.pk, action_key="send", generation=2, actor="worker")
    assert state_of(case) == CaseState.RESUMED
    # A stale worker is still fenced, and a case still waiting for its owner still parks.
    assert (
        services.action_begin(
            run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="y", generation=1, actor="worker"
        ).decision
        == "fenced"
    )


def test_each_delivery_attempt_and_generation_has_its_own_idempotency_key():
    from cases.runtimes.base import ResumeRequest

    def key(**kw):
        base = dict(run_id="r", case_ids=("C-1",), generations={"c": 2}, rejected={"c": 1})
        return ResumeRequest(**{**base, **kw}).idempotency_key

    assert key() == key()  # a duplicate of one delivery is deduplicated by the runtime
    assert len({key(), key(attempt=1), key(redrive=1), key(generations={"c": 3}, rejected={"c": 2})}) == 4


@pytest.mark.django_db
def test_an_unforeseen_adapter_error_is_retried_not_lost(make_connection, make_run):
    conn, run = make_connection(), make_run()
    case = park(run, conn)
    services.case_reauthorize(case_id=case.pk, actor="owner")
    services.case_resume_begin(case_id=case.pk, actor="system")
    ScriptedAdapter.script[run.pk] = [ConnectionResetError("pool connection lost")]
    first = resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=2)
    assert first.outcome == "retry" and "ConnectionResetError" in first.detail["message"]
    again = resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=2, attempt=1)
    assert again.outcome == "delivered"


@pytest.mark.django_db
def test_a_permanent_failure_fails_at_once(make_connection, make_run, django_capture_on_commit_callbacks):
    conn, run = make_connection(), make_run()
    ScriptedAdapter.script[run.pk] = [RunGone("workflow terminated")]
    case = reconnect(park(run, conn), django_capture_on_commit_callbacks)
    assert delivered_runs() == [run.pk] and case.state == CaseState.RESUME_FAILED


# --------------------------------------------------------------------------- reconciliation


def ambiguous_action(run, conn, key="send_exec_05"):
    services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key=key, generation=1, actor="worker"
    )
    return services.action_mark_ambiguous(run_id=run.pk, action_key=key, generation=1, reason="killed", actor="worker")


FOUND = []


def found_reconciler(request):
    FOUND.append(request)
    return resume.ReconcilerFinding(
        found=True, evidence={"message": "msg-1"}, result={"id": "msg-1"}, external_ref="msg-1"
    )


def absent_reconciler(request):
    return None


def unavailable_reconciler(request):
    raise resume.ReconcilerUnavailable("provider 503")


def broken_reconciler(request):
    raise KeyError("bug")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "reconciler, state",
    [
        ("tests.runtimes.test_resume.found_reconciler", Action.State.RECONCILED_COMMITTED),
        ("tests.runtimes.test_resume:absent_reconciler", Action.State.RECONCILED_ABSENT),
    ],
)
def test_a_registered_reconciler_settles_ambiguous_actions_before_the_run_resumes(
    make_connection, make_run, settings, django_capture_on_commit_callbacks, reconciler, state
):
    settings.REVIVE_RECONCILERS = {"send_exec_*": reconciler}
    conn, run = make_connection(), make_run()
    action = ambiguous_action(run, conn)
    case = reconnect(park(run, conn, action_key=action.action_key), django_capture_on_commit_callbacks)
    action.refresh_from_db()
    assert action.state == state
    assert action.reconciled_by == f"reconciler:{reconciler}"
    assert action.evidence["reconciler"] == reconciler
    assert case.state == CaseState.RESUMING and delivered_runs() == [run.pk]
    order = list(AuditEvent.objects.order_by("pk").values_list("action", flat=True))
    assert order.index(f"action.{state}") < order.index("case.resuming") < order.index("run.resume_delivered")


@pytest.mark.django_db
def test_a_reconciler_that_cannot_reach_the_provider_is_retried(make_connection, make_run, settings):
    settings.REVIVE_RECONCILERS = {"send_exec_05": "tests.runtimes.test_resume.unavailable_reconciler"}
    conn, run = make_connection(), make_run()
    action = ambiguous_action(run, conn)
    case = park(run, conn, action_key=action.action_key)
    services.case_reauthorize(case_id=case.pk, actor="owner")
    with pytest.raises(resume.ReconcilerUnavailable):
        pipeline.step_reconcile(case_id=case.pk, generation=2)
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.REAUTHORIZED
    assert Action.objects.get(pk=action.pk).state == Action.State.AMBIGUOUS and not delivered_runs()


@pytest.mark.django_db
def test_a_broken_reconciler_leaves_the_case_reconciling_for_an_operator(
    make_connection, make_run, settings, django_capture_on_commit_callbacks
):
    settings.REVIVE_RECONCILERS = {"send_exec_05": "tests.runtimes.test_resume.broken_reconciler"}
    conn, run = make_connection(), make_run()
    action = ambiguous_action(run, conn)
    case = reconnect(park(run, conn, action_key=action.action_key), django_capture_on_commit_callbacks)
    assert case.state == CaseState.RECONCILING and not delivered_runs()
    assert AuditEvent.objects.get(action="action.reconcile_failed").arguments["error"].startswith("KeyError")

    services.action_reconcile(
        run_id=run.pk, action_key=action.action_key, found=False, evidence={"checked": "mailbox"}, actor="operator:ada"
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert resume.case_resume_dispatch(case_id=case.pk, actor="operator:ada") == []
    # Reconciled by hand: the approval policy ("ambiguous") makes an operator approve the resume.
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.AWAITING_APPROVAL and not delivered_runs()
    with django_capture_on_commit_callbacks(execute=True):
        services.case_approve(case_id=case.pk, actor="operator:grace", reason="mailbox checked: nothing was sent")
    assert state_of(case) == CaseState.RESUMING and delivered_runs() == [run.pk]
    # The parked point was the ambiguous action, settled absent: the run re-executes and commits it.
    assert worker_passes(run.pk, conn.pk, action.action_key) == "execute"
    assert state_of(case) == CaseState.RESUMED


@pytest.mark.django_db
@pytest.mark.parametrize("in_worker", [True, False])
def test_an_action_without_a_reconciler_is_left_to_the_worker_but_never_executes_while_ambiguous(
    make_connection, make_run, settings, django_capture_on_commit_callbacks, in_worker
):
    settings.REVIVE_RECONCILE_IN_WORKER = in_worker
    conn, run = make_connection(), make_run()
    action = ambiguous_action(run, conn, key="notify_exec_05")
    case = reconnect(park(run, conn, action_key=action.action_key), django_capture_on_commit_callbacks)
    if in_worker:
        assert case.state == CaseState.RESUMING and delivered_runs() == [run.pk]
        event = AuditEvent.objects.get(action="case.resuming")
        assert event.arguments["reconcile_in_worker"] == [f"{run.pk}/notify_exec_05"]
    else:
        assert case.state == CaseState.RECONCILING and not delivered_runs()
    begin = services.action_begin(
        run_id=run.pk,
        checkpoint_id="05",
        connection_id=conn.pk,
        action_key="notify_exec_05",
        generation=2,
        actor="worker",
    )
    assert begin.decision == "reconcile"


# --------------------------------------------------------------------------- the outbox and the schedule


@pytest.mark.django_db
def test_a_lost_message_loses_nothing_the_sweep_dispatches_every_owed_step(
    make_connection, make_run, held_outbox, django_capture_on_commit_callbacks
):
    """Redis loses every message (``held_outbox``): the owed rows are still there, and the sweep -- run past their
    deadline -- carries the recovery through reconcile, release and delivery."""
    conn, run = make_connection(), make_run()
    case = reconnect(park(run, conn), django_capture_on_commit_callbacks)
    assert case.state == CaseState.REAUTHORIZED and not delivered_runs()
    owed = OutboxItem.objects.get(kind=services.RECONCILE_CASE)
    assert held_outbox.dispatched == [owed.pk]  # sent on commit, and lost

    assert outbox.outbox_sweep() == []  # not yet due: the message may still be on its way
    later = timezone.now() + timedelta(seconds=settings.REVIVE_OUTBOX_GRACE_SECONDS + 1)
    for _ in range(2):  # reconcile-and-release owes the delivery; the next sweep sends that
        for item_id in outbox.outbox_sweep(now=later):
            assert outbox.outbox_dispatch(item_id).outcome == "done"
    assert delivered_runs() == [run.pk] and state_of(case) == CaseState.RESUMING
    assert set(OutboxItem.objects.exclude(kind="reauth.notify_owner").values_list("kind", "state")) == {
        (services.RECONCILE_CASE, "done"),
        (services.RESUME_RUN, "done"),
    }
    passes(run, conn)
    assert state_of(case) == CaseState.RESUMED


@pytest.mark.django_db
def test_a_dispatch_killed_mid_step_is_taken_over_once_its_claim_runs_out_and_attempts_are_bounded(
    make_connection, make_run, held_outbox, settings, django_capture_on_commit_callbacks
):
    settings.REVIVE_RESUME_MAX_RETRIES = 2
    conn, run = make_connection(), make_run()
    case = reconnect(park(run, conn), django_capture_on_commit_callbacks)
    reconcile = OutboxItem.objects.get(kind=services.RECONCILE_CASE)
    assert outbox.outbox_dispatch(reconcile.pk).outcome == "done"
    item = OutboxItem.objects.get(kind=services.RESUME_RUN)
    # A worker took the row (message "task-1") and died: its claim holds off another message until it runs out ...
    OutboxItem.objects.filter(pk=item.pk).update(
        attempts=1, claimed_until=timezone.now() + timedelta(seconds=60), claimed_by="task-1"
    )
    assert outbox.outbox_dispatch(item.pk, delivery="task-2").outcome == "busy"
    assert outbox.outbox_dispatch(item.pk).outcome == "busy"
    OutboxItem.objects.filter(pk=item.pk).update(claimed_until=timezone.now() - timedelta(seconds=1))
    ScriptedAdapter.script[run.pk] = [RuntimeUnavailable("down")] * 5
    results = [outbox.outbox_dispatch(item.pk).outcome for _ in range(3)]
    # 3 attempts in all (max retries 2): the step ends in a state an operator sees, and is not tried again
    assert results == ["retry", "done", "busy"]
    assert state_of(case) == CaseState.RESUME_FAILED
    assert "down" in AuditEvent.objects.get(action="case.resume_failed").arguments["reason"]


@pytest.mark.django_db
def test_the_same_message_delivered_again_takes_over_at_once_its_lost_workers_claim(
    make_connection, make_run, held_outbox, django_capture_on_commit_callbacks
):
    """Late acknowledgement with reject-on-worker-lost: a pool process killed mid-dispatch makes the broker hand the
    same message (same task id) out again. Its claim's holder is dead, so the redelivery does not wait it out."""
    conn, run = make_connection(), make_run()
    case = reconnect(park(run, conn), django_capture_on_commit_callbacks)
    assert outbox.outbox_dispatch(OutboxItem.objects.get(kind=services.RECONCILE_CASE).pk).outcome == "done"
    item = OutboxItem.objects.get(kind=services.RESUME_RUN)
    # The lost worker held the row and, delivering, the run's own claim.
    held = timezone.now() + timedelta(seconds=600)
    OutboxItem.objects.filter(pk=item.pk).update(attempts=1, claimed_until=held, claimed_by="task-lost")
    Run.objects.filter(pk=run.pk).update(resume_claimed_until=held, resume_claimed_by="task-lost")
    assert outbox.outbox_dispatch(item.pk, delivery="task-other").outcome == "busy"  # a live holder is left alone
    assert (
        resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=2, holder="task-other").outcome == "busy"
    )
    assert outbox.outbox_dispatch(item.pk, delivery="task-lost").outcome == "done"
    assert delivered_runs() == [run.pk] and state_of(case) == CaseState.RESUMING
    taken = OutboxItem.objects.get(pk=item.pk)
    assert (taken.state, taken.attempts, taken.claimed_until) == ("done", 2, None)
    assert Run.objects.get(pk=run.pk).resume_claimed_until is None  # released after the delivery


@pytest.mark.django_db
def test_an_owed_step_whose_handler_keeps_crashing_ends_failed_in_the_admin_list(
    make_connection, make_run, held_outbox, settings, admin_client, django_capture_on_commit_callbacks, monkeypatch
):
    settings.REVIVE_RESUME_MAX_RETRIES = 1
    conn, run = make_connection(), make_run()
    reconnect(park(run, conn), django_capture_on_commit_callbacks)
    item = OutboxItem.objects.get(kind=services.RECONCILE_CASE)
    monkeypatch.setattr(pipeline.resume, "case_reconcile", lambda **kw: 1 / 0)
    assert [outbox.outbox_dispatch(item.pk).outcome for _ in range(2)] == ["retry", "failed"]
    item.refresh_from_db()
    assert item.state == "failed" and "ZeroDivisionError" in item.last_error
    page = admin_client.get("/admin/cases/outboxitem/?state__exact=failed").content.decode()
    assert item.key in page and "ZeroDivisionError" in page
    case = RecoveryCase.objects.get(pk=item.case_id)
    assert case.state == CaseState.RECONCILING  # an operator reconciles by hand from the console


def test_the_beat_schedule_runs_the_recovery_tasks():
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled == {
        "cases.reap_stale_actions",
        "reauth.expire_reconnect_requests",
        "cases.outbox_sweep",
        "cases.pipeline_watch",
        "reauth.scalekit_accounts_poll",
        "cases.notify_stale_cases",
    }
    assert scheduled <= set(celery_app.tasks)
    durable = [celery_app.tasks[name] for name in ("cases.outbox_dispatch", "cases.resume_run", "cases.reconcile_case")]
    assert all(t.acks_late and t.reject_on_worker_lost for t in durable)


@pytest.mark.django_db(transaction=True)
def test_a_dispatch_that_cannot_be_sent_after_commit_leaves_the_commit_alone_and_the_row_to_the_sweep(
    make_connection, make_run, monkeypatch, caplog
):
    """Redis down at publish: the step is committed and owed; the caller (an owner's reconnect) is not told an
    error after its commit, and the sweep sends the row later."""

    def broker_down(item_ids, countdown=None):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(outbox, "_enqueue", broker_down)
    conn, run = make_connection(), make_run()
    case = park(run, conn)
    pipeline.recovery_reauthorized(case_id=case.pk, actor="owner")  # commits, then its dispatch fails
    owed = OutboxItem.objects.get(kind=services.RECONCILE_CASE)
    assert owed.state == "pending" and state_of(case) == CaseState.REAUTHORIZED
    assert f"outbox item {owed.pk}: dispatch not sent (ConnectionError" in caplog.text
    sent: list[int] = []
    monkeypatch.setattr(outbox, "_enqueue", lambda item_ids, countdown=None: sent.extend(item_ids))  # Redis is back
    later = timezone.now() + timedelta(seconds=settings.REVIVE_OUTBOX_GRACE_SECONDS + 1)
    assert owed.pk in outbox.outbox_sweep(now=later) and owed.pk in sent


@pytest.mark.django_db
@pytest.mark.parametrize("hosted", [True, False], ids=["revive-hosts-the-run", "the-runtime-runs-it"])
def test_a_delivery_that_died_after_the_run_went_past_its_action_continues_a_run_revive_hosts(
    hosted, make_connection, make_run, held_outbox, settings, django_capture_on_commit_callbacks
):
    """The LangGraph run executes inside its delivery; the worker dies after the run went past its parked action
    (the case is resumed) but before the rest of the run. The same message delivered again continues the run from
    its latest checkpoint -- where Revive hosts it. A run its runtime executes (a signalled Temporal workflow) goes
    on by itself, so nothing is delivered again."""
    if hosted:
        settings.REVIVE_RUNTIME_ADAPTERS = {
            **settings.REVIVE_RUNTIME_ADAPTERS,
            "langgraph": "tests.runtimes.test_resume.HostingAdapter",
        }
        reset_adapters()
    HostingAdapter.redrives = []
    conn, run = make_connection(), make_run()
    case = reconnect(park(run, conn), django_capture_on_commit_callbacks)
    assert outbox.outbox_dispatch(OutboxItem.objects.get(kind=services.RECONCILE_CASE).pk).outcome == "done"
    item = OutboxItem.objects.get(kind=services.RESUME_RUN)
    # The first attempt (message "task-lost") ran the run past its parked action, then its worker was killed.
    OutboxItem.objects.filter(pk=item.pk).update(
        attempts=1, claimed_until=timezone.now() + timedelta(seconds=600), claimed_by="task-lost"
    )
    passes(run, conn)
    assert state_of(case) == CaseState.RESUMED and not ScriptedAdapter.calls

    assert outbox.outbox_dispatch(item.pk, delivery="task-lost").outcome == "done"
    if hosted:
        assert [c[0] for c in ScriptedAdapter.calls] == [run.pk] and HostingAdapter.redrives == [1]
    else:
        assert ScriptedAdapter.calls == []
    assert OutboxItem.objects.get(pk=item.pk).state == "done"


@pytest.mark.django_db
def test_owed_steps_of_a_run_with_a_long_id_stay_distinct_and_owed_once(
    make_connection, make_run, held_outbox, django_capture_on_commit_callbacks
):
    """Outbox keys name the run; with a run id near its 300-character limit the key is longer than its column. The
    stored key keeps a digest of the whole, so the re-drive's delivery is not mistaken for the first one."""
    conn, run = make_connection(), make_run(run_id="r" * 250)
    case = reconnect(park(run, conn), django_capture_on_commit_callbacks)
    with transaction.atomic():
        for attempt in (0, 1, 1, 0):
            services.run_resume_owe(run_id=run.pk, case=case, attempt=attempt)
    keys = list(OutboxItem.objects.filter(kind=services.RESUME_RUN, run_id=run.pk).values_list("key", flat=True))
    assert len(keys) == 2 and len(set(keys)) == 2 and all(len(k) <= 200 for k in keys)
