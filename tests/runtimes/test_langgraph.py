"""LangGraph: a real graph on the PostgreSQL checkpointer parks on a rejected credential and Revive's Celery worker
resumes the same thread with ``Command(resume=...)``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from cases import services
from cases.models import Action, CaseState, OutboxItem, Run
from cases.runtimes import ResumeRequest, adapter_for, reset_adapters
from cases.tasks import reconcile_case, resume_run

from .conftest import wait_for
from .helpers import (
    audit_actions,
    case_of,
    connection,
    deliveries,
    new_id,
    owner_reconnects,
    run_state,
    task_done,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_adapters():
    reset_adapters()  # the test database (and so the checkpointer) is this session's
    yield
    reset_adapters()


def start_parked(runners, world, *, conn: str, graph: str = "test-briefing", payload: dict | None = None):
    run_id, thread_id = new_id("run"), new_id("thread")
    process = runners.start(
        graph=graph, run_id=run_id, thread_id=thread_id, payload=payload or {"run_id": run_id, "connection_id": conn}
    )
    done = wait_for(lambda: world.marks("runner_done", run_id=run_id), f"{run_id} to park")
    assert done[0]["interrupts"] and done[0]["interrupts"][0]["revive"] == "parked"
    return run_id, thread_id, process


def langgraph_state(run_id: str):
    run = Run.objects.get(pk=run_id)
    adapter = adapter_for("langgraph")
    graph = adapter.graph(run.runtime_ref["graph"])
    config = {"configurable": {"thread_id": run.runtime_ref["thread_id"]}}
    return graph.get_state(config), list(graph.get_state_history(config))


def test_parked_run_resumes_on_its_own_thread_and_each_effect_happens_once(runners, world, celery_worker):
    conn = connection()
    world.revoke(conn)
    run_id, thread_id, runner = start_parked(runners, world, conn=conn)

    case = case_of(run_id)
    assert case.state in (CaseState.OPENED, CaseState.AWAITING_OWNER)
    assert (case.failure_class, case.rejected_generation) == ("dead_grant", 1)
    assert run_state(run_id) == "parked"
    assert len(world.effects("prepare", run_id=run_id)) == 1 and not world.effects("send", run_id=run_id)
    assert adapter_for("langgraph").status(case.run).state == "waiting"
    assert adapter_for("langgraph").park(case.run, case)["node"] == "send"

    owner_reconnects(world, case)
    wait_for(lambda: world.marks("finished", run_id=run_id), "the resumed run to finish")
    wait_for(lambda: deliveries(run_id) == 1, "the delivery to be recorded")

    assert len(world.effects("prepare", run_id=run_id)) == 1
    sends = world.effects("send", run_id=run_id)
    assert len(sends) == 1 and sends[0]["credential"] == f"access-token-for-{conn}"
    assert world.marks("sent", run_id=run_id)[0]["generation"] == 2
    case.refresh_from_db()
    assert (case.state, case.resumed_generation) == (CaseState.RESUMED, 2)
    assert run_state(run_id) == "active"
    finished_in = world.marks("finished", run_id=run_id)[0]["pid"]
    assert finished_in != runner.pid and finished_in in celery_worker.pids  # Revive's worker resumed it
    snapshot, history = langgraph_state(run_id)
    assert not snapshot.next and [step[0] for step in snapshot.values["log"]] == ["prepare", "send", "finish"]
    # One thread, resumed in place: no checkpoint was written by update_state.
    assert {h.metadata.get("source") for h in history} <= {"input", "loop"}
    actions = audit_actions(run_id)
    assert actions.index("run.parked") < actions.index("run.unparked") < actions.index("run.resume_delivered")


def test_a_fresh_process_resumes_the_run_after_the_worker_that_ran_it_is_killed(runners, world, celery_worker):
    conn = connection()
    world.revoke(conn)
    run_id, thread_id, runner = start_parked(runners, world, conn=conn)
    case = case_of(run_id)

    runner.kill()  # SIGKILL: the process that ran the workflow disappears while the run is parked
    runner.wait()
    old_workers = celery_worker.pids
    celery_worker.stop(kill=True)  # and every Celery process that existed then
    celery_worker.ensure(**celery_worker.extra)
    assert not (celery_worker.pids & old_workers)

    owner_reconnects(world, case)
    wait_for(lambda: world.marks("finished", run_id=run_id), "the run to finish in a fresh process")

    finished_in = world.marks("finished", run_id=run_id)[0]["pid"]
    assert finished_in in celery_worker.pids and finished_in != runner.pid
    assert len(world.effects("prepare", run_id=run_id)) == 1 and len(world.effects("send", run_id=run_id)) == 1
    # The last node marks "finished" before the graph writes the checkpoint after it: wait for that checkpoint.
    wait_for(lambda: not langgraph_state(run_id)[0].next, "the run's last checkpoint")
    case.refresh_from_db()
    assert case.state == CaseState.RESUMED


def test_one_reconnect_resumes_every_run_on_the_connection_and_none_still_blocked_elsewhere(
    runners, world, celery_worker
):
    conn_a, conn_b = connection("conn_a"), connection("conn_b")
    world.revoke(conn_a)
    world.revoke(conn_b)
    only_a = [start_parked(runners, world, conn=conn_a)[0] for _ in range(2)]
    both = new_id("run")
    runners.start(
        graph="test-two-connections",
        run_id=both,
        thread_id=new_id("thread"),
        payload={"run_id": both, "connections": [conn_a, conn_b]},
    )
    wait_for(lambda: world.marks("runner_done", run_id=both), "the two-connection run to park")
    case_a, case_b = case_of(both, conn_a), case_of(both, conn_b)
    assert case_a.pk != case_b.pk and all(case_of(r).pk == case_a.pk for r in only_a)

    owner_reconnects(world, case_a)
    for run_id in only_a:
        wait_for(lambda run_id=run_id: world.marks("finished", run_id=run_id), f"{run_id} to finish")
    case_a.refresh_from_db()
    # Case A released its runs; the run that also waits on B stays parked and got no resume.
    assert case_a.state == CaseState.RESUMING
    assert run_state(both) == "parked" and deliveries(both) == 0
    assert len(world.marks("check", run_id=both)) == 1 and not world.effects(run_id=both)
    assert adapter_for("langgraph").status(Run.objects.get(pk=both)).state == "waiting"

    owner_reconnects(world, case_b)
    wait_for(lambda: world.marks("finished", run_id=both), "the two-connection run to finish")
    assert len(world.marks("check", run_id=both)) == 2  # the parked attempt, then exactly one resumed one
    assert sorted(e["idempotency_key"] for e in world.effects("send", run_id=both)) == sorted(
        {e["idempotency_key"] for e in world.effects("send", run_id=both)}
    )
    assert len(world.effects("send", run_id=both)) == 2  # one per connection, each once
    for case in (case_a, case_b):
        wait_for(
            lambda case=case: case.__class__.objects.get(pk=case.pk).state == CaseState.RESUMED,
            f"{case.reference} to be resumed",
        )
    wait_for(lambda: deliveries(both) == 2, "one delivery, recorded on each of the two cases it released")


def test_a_duplicate_resume_and_a_task_run_twice_change_nothing(runners, world, celery_worker):
    conn = connection()
    world.revoke(conn)
    run_id, _, _ = start_parked(runners, world, conn=conn)
    case = owner_reconnects(world, case_of(run_id))
    duplicate = reconcile_case.delay(case.pk, case.resumed_generation)  # the same task, twice
    wait_for(lambda: world.marks("finished", run_id=run_id), "the run to finish")
    wait_for(lambda: task_done(celery_worker, duplicate.id), "the duplicate reconcile task")

    again = [resume_run.delay(run_id, case.pk, case.resumed_generation) for _ in range(2)]
    again.append(reconcile_case.delay(case.pk, case.resumed_generation))
    for result in again:
        wait_for(lambda result=result: task_done(celery_worker, result.id), f"task {result.id}")
    # And the runtime signal itself, delivered once more: the thread is past its wait.
    redelivered = adapter_for("langgraph").resume(
        case,
        2,
        run=Run.objects.get(pk=run_id),
        request=ResumeRequest(run_id=run_id, case_ids=(case.reference,), generations={conn: 2}, rejected={conn: 1}),
    )
    assert redelivered.already

    assert len(world.marks("send", run_id=run_id)) == 2  # the parked attempt and the resumed one
    assert len(world.marks("finished", run_id=run_id)) == 1
    assert len(world.effects("send", run_id=run_id)) == 1 and len(world.effects("prepare", run_id=run_id)) == 1
    assert deliveries(run_id) == 1
    case.refresh_from_db()
    assert case.state == CaseState.RESUMED


@pytest.mark.parametrize(
    "action_key, settled_by",
    [
        ("send_exec_05", "reconciler:tests.runtimes.support.world:reconcile_by_idempotency_key"),
        ("notify_exec_05", None),  # no server-side reconciler: the resumed worker's reconcile callback settles it
    ],
)
def test_an_action_left_ambiguous_by_a_killed_worker_is_reconciled_not_repeated(
    runners, world, celery_worker, action_key, settled_by
):
    conn = connection()
    run_id, thread_id = new_id("run"), new_id("thread")
    payload = {"run_id": run_id, "connection_id": conn, "send_key": action_key}
    world.arm_crash(run_id, "send")
    first = runners.start(graph="test-briefing", run_id=run_id, thread_id=thread_id, payload=payload)
    assert first.wait(timeout=180) == 137  # died after the remote effect, before the commit
    assert len(world.effects("send", run_id=run_id)) == 1
    action = Action.objects.get(run_id=run_id, action_key=action_key)
    assert action.state == Action.State.EXECUTING

    later = timezone.now() + timedelta(seconds=settings.REVIVE_ACTION_LOCK_TIMEOUT + 1)
    assert [a.pk for a in services.reap_stale_actions(now=later)] == [action.pk]
    world.revoke(conn)  # meanwhile the grant died: looking the effect up needs the owner too
    runners.start(graph="test-briefing", run_id=run_id, thread_id=thread_id, cont=True)
    wait_for(lambda: world.marks("runner_done", run_id=run_id), "the restarted worker to park")
    case = case_of(run_id)
    assert Action.objects.get(pk=action.pk).state == Action.State.AMBIGUOUS

    owner_reconnects(world, case)
    wait_for(lambda: world.marks("finished", run_id=run_id), "the run to finish")

    assert len(world.effects("send", run_id=run_id)) == 1  # reconciled, never executed again
    action.refresh_from_db()
    assert action.state == Action.State.RECONCILED_COMMITTED
    assert action.external_ref.startswith("msg-send-") or action.result["id"].startswith("msg-send-")
    actions = audit_actions(run_id)
    if settled_by:
        assert action.reconciled_by == settled_by and action.evidence["reconciler"] == settled_by.split(":", 1)[1]
        # Settled by Revive's worker before the run was released.
        assert actions.index("action.reconciled_committed") < actions.index("run.unparked")
    else:
        assert action.evidence["source"] == "sdk reconcile callback"
        assert actions.index("run.unparked") < actions.index("action.reconciled_committed")
    assert "action.executing" not in actions[actions.index("action.ambiguous") :]


def test_a_resume_that_comes_before_the_run_reaches_its_wait_is_not_lost(runners, world, celery_worker):
    conn = connection()
    world.revoke(conn)
    run_id, thread_id = new_id("run"), new_id("thread")
    world.hold_after_park(run_id)  # the worker stops between being parked and calling interrupt()
    runner = runners.start(
        graph="test-briefing", run_id=run_id, thread_id=thread_id, payload={"run_id": run_id, "connection_id": conn}
    )
    wait_for(lambda: world.marks("parked", run_id=run_id), "the run to be parked")
    case = owner_reconnects(world, case_of(run_id))
    # The delivery is owed and being retried (its outbox row counts the attempts) while the run is not yet waiting.
    wait_for(
        lambda: OutboxItem.objects.filter(kind="run.resume", run_id=run_id, state="pending", attempts__gte=2).exists()
        and case.__class__.objects.get(pk=case.pk).state == CaseState.RESUMING,
        "the resume to be tried while the run is not yet waiting",
    )
    world.open_gate(f"park.{run_id}")

    wait_for(lambda: world.marks("finished", run_id=run_id), "the run to finish")
    wait_for(lambda: case.__class__.objects.get(pk=case.pk).state == CaseState.RESUMED, "the case to be resumed")
    assert len(world.effects("send", run_id=run_id)) == 1 and len(world.effects("prepare", run_id=run_id)) == 1
    assert world.marks("finished", run_id=run_id)[0]["pid"] == runner.pid  # it went on by itself
    assert len(world.marks("finished", run_id=run_id)) == 1
