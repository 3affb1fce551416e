"""An abandoned case's parked runs are told so through their runtime and end, instead of waiting forever: a
Temporal workflow gets the ``revive_abandoned`` signal (its wait raises ``RunAbandoned``), a LangGraph thread is
resumed with the ``abandoned`` value, a Restate workflow's promise is resolved with it -- each by Revive's Celery
worker. A run another open case still holds is not told."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from cases import services
from cases.models import OutboxItem, Run
from cases.runtimes import adapter_for, reset_adapters

from .conftest import wait_for
from .helpers import case_of, connection, new_id, run_state
from .test_langgraph import start_parked
from .test_restate import start as restate_start
from .test_restate import wait_parked as restate_wait_parked
from .test_temporal import describe, start, wait_parked

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_adapters(settings):
    settings.REVIVE_ABANDON_NOTICE_DELAY_SECONDS = 0
    reset_adapters()
    yield
    reset_adapters()


def told(run_id: str) -> bool:
    return AuditEvent.objects.filter(run_id=run_id, action="run.abandoned_told").exists()


def test_an_abandoned_temporal_workflow_is_signalled_and_ends_without_sending(
    temporal_env, temporal_workers, world, celery_worker
):
    conn = connection()
    world.revoke(conn)
    temporal_workers.start()
    run_id, handle = start(temporal_env, temporal_workers, conn)
    wait_parked(temporal_env, run_id)
    case = case_of(run_id)

    services.case_abandon(case_id=case.pk, actor="operator:ann", reason="the owner left the company")
    wait_for(lambda: describe(temporal_env, handle).status.name == "COMPLETED", "the abandoned workflow to end")

    result = temporal_env.loop.run(handle.result())
    assert result["abandoned"] == case.reference and result["reason"] == "the owner left the company"
    assert not world.effects("send", run_id=run_id) and not world.marks("finished", run_id=run_id)
    wait_for(lambda: told(run_id), "the notice to be recorded")
    assert run_state(run_id) == Run.State.ABANDONED
    # the step is recorded done just after its handler returns (the notice's audit row commits first)
    wait_for(
        lambda: OutboxItem.objects.get(kind=services.ABANDON_RUN, run_id=run_id).state == OutboxItem.State.DONE,
        "the notice's outbox row to be done",
    )
    with pytest.raises(Exception, match="no parked run left"):  # told is final: no reopen brings the run back
        services.case_reopen(case_id=case.pk, actor="operator:ann", reason="too late")


def test_an_abandoned_langgraph_run_ends_and_one_still_held_by_another_case_stays_parked(runners, world, celery_worker):
    conn_a, conn_b = connection("conn_a"), connection("conn_b")
    world.revoke(conn_a)
    world.revoke(conn_b)
    only_a = start_parked(runners, world, conn=conn_a)[0]
    both = new_id("run")
    runners.start(
        graph="test-two-connections",
        run_id=both,
        thread_id=new_id("thread"),
        payload={"run_id": both, "connections": [conn_a, conn_b]},
    )
    wait_for(lambda: world.marks("runner_done", run_id=both), "the two-connection run to park")
    case_a = case_of(both, conn_a)
    assert case_of(only_a).pk == case_a.pk

    services.case_abandon(case_id=case_a.pk, actor="operator:ann", reason="no owner")
    wait_for(lambda: told(only_a), f"{only_a} to be told")

    lg = adapter_for("langgraph")
    status = lg.status(Run.objects.get(pk=only_a))
    assert status.state == "failed" and "RunAbandoned" in status.detail["errors"][0]  # ended, not waiting
    assert run_state(only_a) == Run.State.ABANDONED
    assert not world.effects("send", run_id=only_a) and not world.marks("finished", run_id=only_a)
    [event] = AuditEvent.objects.filter(run_id=only_a, action="run.abandoned_told")
    assert event.arguments["raised"] == "RunAbandoned" and event.arguments["outcome"] == "ended"

    # The run case B still holds was not told: parked in Revive and in its thread, waiting for B.
    assert not OutboxItem.objects.filter(kind=services.ABANDON_RUN, run_id=both).exists()
    assert run_state(both) == Run.State.PARKED and not told(both)
    assert lg.status(Run.objects.get(pk=both)).state == "waiting"


def test_an_abandoned_restate_workflow_wakes_on_its_promise_and_ends_without_sending(
    restate_settings, world, celery_worker
):
    conn = connection()
    world.revoke(conn)
    run_id, invocation_id = restate_start(restate_settings, conn)
    restate_wait_parked(run_id)
    case = case_of(run_id)

    services.case_abandon(case_id=case.pk, actor="operator:ann", reason="no owner")
    row = wait_for(
        lambda: (r := restate_settings.invocation(invocation_id)) and r["status"] == "completed" and r,
        "the abandoned invocation to end",
    )

    assert row["completion_result"] == "success", row  # the workflow caught RunAbandoned and returned
    assert not world.effects("send", run_id=run_id) and not world.marks("finished", run_id=run_id)
    wait_for(lambda: told(run_id), "the notice to be recorded")
    assert run_state(run_id) == Run.State.ABANDONED
