"""The resume services and tasks with a scripted runtime adapter: which runs get a resume, when, how often, and what
happens when the runtime keeps failing. (The real runtimes are in test_langgraph/test_temporal/test_restate.)"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django import db
from django.conf import settings
from django.utils import timezone

from audit.models import AuditEvent
from cases import resume, services
from cases.models import Action, CaseRun, CaseState, RecoveryCase, Run
from cases.runtimes import RunGone, RunNotWaiting, RuntimeAdapter, RuntimeUnavailable, reset_adapters
from cases.runtimes.base import ResumeResult, RunStatus
from cases.tasks import reconcile_case, resume_run
from revive_site.celery import app as celery_app
from tests.conftest import DEAD_GRANT


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


@pytest.fixture(autouse=True)
def scripted(settings):
    settings.REVIVE_RUNTIME_ADAPTERS = {**settings.REVIVE_RUNTIME_ADAPTERS,
                                        "langgraph": "tests.runtimes.test_resume.ScriptedAdapter"}
    settings.REVIVE_RECONCILERS = {}
    reset_adapters()
    ScriptedAdapter.calls, ScriptedAdapter.script, ScriptedAdapter.delay = [], {}, 0.0
    assert celery_app.conf.task_always_eager
    yield ScriptedAdapter
    reset_adapters()


def park(run, conn, *, checkpoint="05", action_key=None):
    answer = services.credential_failure_report(run_id=run.pk, connection_id=conn.pk, generation=conn.current_generation,
                                                provider_error=DEAD_GRANT, checkpoint_id=checkpoint,
                                                action_key=action_key, actor="worker")
    assert answer.outcome == "parked"
    return RecoveryCase.objects.get(reference=answer.case_reference)


def reconnect(case, django_capture_on_commit_callbacks):
    """The owner's callback: advance the generation and enqueue reconcile-and-resume (eager here)."""
    with django_capture_on_commit_callbacks(execute=True):
        case = services.case_reauthorize(case_id=case.pk, actor="owner")
        resume.case_after_reauthorize(case.pk)
    case.refresh_from_db()
    return case


def delivered_runs():
    return [c[0] for c in ScriptedAdapter.calls]


@pytest.mark.django_db
def test_one_reconnect_resumes_every_run_of_the_connection_and_not_one_blocked_on_another(
        make_connection, make_run, django_capture_on_commit_callbacks):
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
    case_a.refresh_from_db()
    assert (case_a.state, case_b.state) == (CaseState.RESUMED, CaseState.RESUMED)
    assert CaseRun.objects.filter(resumed_at__isnull=True).count() == 0


@pytest.mark.django_db
def test_a_task_run_twice_or_for_a_case_that_moved_on_changes_nothing(make_connection, make_run,
                                                                       django_capture_on_commit_callbacks):
    conn, run = make_connection(), make_run()
    case = reconnect(park(run, conn), django_capture_on_commit_callbacks)
    assert delivered_runs() == [run.pk] and case.state == CaseState.RESUMED

    assert reconcile_case.delay(case.pk, 2).get() == 0
    assert resume_run.delay(run.pk, case.pk, 2).get() == "nothing"  # the run has had its resume
    assert resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=1).outcome == "stale"
    assert reconcile_case.delay(case.pk, 1).get() == 0  # enqueued for another generation
    assert delivered_runs() == [run.pk]
    assert AuditEvent.objects.filter(action="run.resume_delivered").count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_deliveries_of_one_resume_reach_the_runtime_once(make_connection, make_run):
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
    assert delivered_runs() == [run.pk]
    assert outcomes.count("delivered") == 1 and set(outcomes) <= {"delivered", "busy", "nothing"}
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.RESUMED
    assert Run.objects.get(pk=run.pk).resume_claimed_until is None


@pytest.mark.django_db
def test_transient_failures_retry_with_backoff_under_one_claim_then_deliver(make_connection, make_run):
    conn, run = make_connection(), make_run()
    case = park(run, conn)
    services.case_reauthorize(case_id=case.pk, actor="owner")
    services.case_resume_begin(case_id=case.pk, actor="system")
    ScriptedAdapter.script[run.pk] = [RunNotWaiting("not yet"), RunNotWaiting("not yet"), RuntimeUnavailable("down")]

    first = resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=2, attempt=0)
    assert first.outcome == "retry" and first.countdown <= settings.REVIVE_RESUME_BACKOFF_FIRST
    # While the retry is scheduled the run stays claimed: a second delivery (the sweep, a duplicate) backs off.
    assert resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=2).outcome == "busy"
    second = resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=2, attempt=1, claim=first.claim)
    third = resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=2, attempt=2, claim=second.claim)
    assert (second.outcome, third.outcome) == ("retry", "retry")
    assert first.countdown < second.countdown < third.countdown  # exponential; "unavailable" starts higher
    last = resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=2, attempt=3, claim=third.claim)
    assert last.outcome == "delivered" and len(ScriptedAdapter.calls) == 4
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.RESUMED


@pytest.mark.django_db
def test_a_resume_that_keeps_failing_ends_in_resume_failed_and_an_operator_can_retry(
        make_connection, make_run, settings, django_capture_on_commit_callbacks):
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
    assert event.arguments["run_id"] == run.pk and "temporal down" in event.arguments["error"]
    begin = services.action_begin(run_id=run.pk, checkpoint_id="06", connection_id=conn.pk, action_key="x",
                                  generation=2, actor="worker")
    assert begin.decision == "parked"  # the worker of the failed run may not go on by itself

    ScriptedAdapter.script[run.pk] = []
    with django_capture_on_commit_callbacks(execute=True):
        assert resume.case_resume_dispatch(case_id=case.reference, actor="operator:ada") == [run.pk]
    case.refresh_from_db()
    assert case.state == CaseState.RESUMED and delivered_runs().count(run.pk) == 5


@pytest.mark.django_db
def test_an_unforeseen_adapter_error_is_retried_not_lost(make_connection, make_run):
    conn, run = make_connection(), make_run()
    case = park(run, conn)
    services.case_reauthorize(case_id=case.pk, actor="owner")
    services.case_resume_begin(case_id=case.pk, actor="system")
    ScriptedAdapter.script[run.pk] = [ConnectionResetError("pool connection lost")]
    first = resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=2)
    assert first.outcome == "retry" and "ConnectionResetError" in first.detail["message"]
    again = resume.run_resume_deliver(run_id=run.pk, case_id=case.pk, generation=2, attempt=1, claim=first.claim)
    assert again.outcome == "delivered"


@pytest.mark.django_db
def test_a_permanent_failure_fails_at_once(make_connection, make_run, django_capture_on_commit_callbacks):
    conn, run = make_connection(), make_run()
    ScriptedAdapter.script[run.pk] = [RunGone("workflow terminated")]
    case = reconnect(park(run, conn), django_capture_on_commit_callbacks)
    assert delivered_runs() == [run.pk] and case.state == CaseState.RESUME_FAILED


# --------------------------------------------------------------------------- reconciliation


def ambiguous_action(run, conn, key="send_exec_05"):
    services.action_begin(run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key=key, generation=1,
                          actor="worker")
    return services.action_mark_ambiguous(run_id=run.pk, action_key=key, generation=1, reason="killed", actor="worker")


FOUND = []


def found_reconciler(request):
    FOUND.append(request)
    return resume.ReconcilerFinding(found=True, evidence={"message": "msg-1"}, result={"id": "msg-1"},
                                    external_ref="msg-1")


def absent_reconciler(request):
    return None


def unavailable_reconciler(request):
    raise resume.ReconcilerUnavailable("provider 503")


def broken_reconciler(request):
    raise KeyError("bug")


@pytest.mark.django_db
@pytest.mark.parametrize("reconciler, state", [
    ("tests.runtimes.test_resume.found_reconciler", Action.State.RECONCILED_COMMITTED),
    ("tests.runtimes.test_resume:absent_reconciler", Action.State.RECONCILED_ABSENT),
])
def test_a_registered_reconciler_settles_ambiguous_actions_before_the_run_resumes(
        make_connection, make_run, settings, django_capture_on_commit_callbacks, reconciler, state):
    settings.REVIVE_RECONCILERS = {"send_exec_*": reconciler}
    conn, run = make_connection(), make_run()
    action = ambiguous_action(run, conn)
    case = reconnect(park(run, conn, action_key=action.action_key), django_capture_on_commit_callbacks)
    action.refresh_from_db()
    assert action.state == state
    assert action.reconciled_by == f"reconciler:{reconciler}"
    assert action.evidence["reconciler"] == reconciler
    assert case.state == CaseState.RESUMED and delivered_runs() == [run.pk]
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
        resume.case_resume_start(case_id=case.pk, generation=2)
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.REAUTHORIZED
    assert Action.objects.get(pk=action.pk).state == Action.State.AMBIGUOUS and not delivered_runs()


@pytest.mark.django_db
def test_a_broken_reconciler_leaves_the_case_reconciling_for_an_operator(make_connection, make_run, settings,
                                                                          django_capture_on_commit_callbacks):
    settings.REVIVE_RECONCILERS = {"send_exec_05": "tests.runtimes.test_resume.broken_reconciler"}
    conn, run = make_connection(), make_run()
    action = ambiguous_action(run, conn)
    case = reconnect(park(run, conn, action_key=action.action_key), django_capture_on_commit_callbacks)
    assert case.state == CaseState.RECONCILING and not delivered_runs()
    assert AuditEvent.objects.get(action="action.reconcile_failed").arguments["error"].startswith("KeyError")

    services.action_reconcile(run_id=run.pk, action_key=action.action_key, found=False,
                              evidence={"checked": "mailbox"}, actor="operator:ada")
    with django_capture_on_commit_callbacks(execute=True):
        assert resume.case_resume_dispatch(case_id=case.pk, actor="operator:ada") == []
    # Reconciled by hand: the approval policy ("ambiguous") makes an operator approve the resume.
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.AWAITING_APPROVAL and not delivered_runs()
    with django_capture_on_commit_callbacks(execute=True):
        services.case_approve(case_id=case.pk, actor="operator:grace", reason="mailbox checked: nothing was sent")
    assert RecoveryCase.objects.get(pk=case.pk).state == CaseState.RESUMED and delivered_runs() == [run.pk]


@pytest.mark.django_db
@pytest.mark.parametrize("in_worker", [True, False])
def test_an_action_without_a_reconciler_is_left_to_the_worker_but_never_executes_while_ambiguous(
        make_connection, make_run, settings, django_capture_on_commit_callbacks, in_worker):
    settings.REVIVE_RECONCILE_IN_WORKER = in_worker
    conn, run = make_connection(), make_run()
    action = ambiguous_action(run, conn, key="notify_exec_05")
    case = reconnect(park(run, conn, action_key=action.action_key), django_capture_on_commit_callbacks)
    if in_worker:
        assert case.state == CaseState.RESUMED and delivered_runs() == [run.pk]
        event = AuditEvent.objects.get(action="case.resuming")
        assert event.arguments["reconcile_in_worker"] == [f"{run.pk}/notify_exec_05"]
    else:
        assert case.state == CaseState.RECONCILING and not delivered_runs()
    begin = services.action_begin(run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="notify_exec_05",
                                  generation=2, actor="worker")
    assert begin.decision == "reconcile"


# --------------------------------------------------------------------------- the sweep and the schedule


@pytest.mark.django_db
def test_the_sweep_picks_up_work_a_lost_task_left_behind(make_connection, make_run):
    conn, run = make_connection(), make_run()
    case = park(run, conn)
    services.case_reauthorize(case_id=case.pk, actor="owner")  # its reconcile task was lost with a worker
    later = timezone.now() + timedelta(seconds=settings.REVIVE_RESUME_SWEEP_AFTER + 1)
    assert resume.resume_sweep(now=timezone.now()).reconciles == []  # too recent: it may still be queued
    report = resume.resume_sweep(now=later)
    assert report.reconciles == [case.pk]
    assert delivered_runs() == [run.pk] and RecoveryCase.objects.get(pk=case.pk).state == CaseState.RESUMED

    conn2, run2 = make_connection(), make_run()
    case2 = park(run2, conn2)
    services.case_reauthorize(case_id=case2.pk, actor="owner")
    services.case_resume_begin(case_id=case2.pk, actor="system")  # its resume_run was lost
    assert resume.resume_sweep(now=later).deliveries == [(run2.pk, case2.pk)]
    assert delivered_runs() == [run.pk, run2.pk]


def test_the_beat_schedule_runs_the_recovery_tasks():
    import cases.tasks  # noqa: F401  (registers the tasks)

    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled == {"cases.reap_stale_actions", "cases.expire_reconnect_requests", "cases.resume_sweep"}
    assert scheduled <= set(celery_app.tasks)
