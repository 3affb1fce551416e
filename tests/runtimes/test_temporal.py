"""Temporal: a workflow on the real test server parks on a non-retryable ``CredentialRejected`` activity failure and
continues, as the same workflow run, when Revive's Celery worker signals ``revive_reauthorized``."""

from __future__ import annotations

import pytest

from cases.models import CaseState, Run
from cases.runtimes import ResumeRequest, adapter_for, reset_adapters
from cases.tasks import resume_run

from .conftest import wait_for
from .helpers import case_of, connection, deliveries, new_id, owner_reconnects, task_done

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_adapters():
    reset_adapters()
    yield
    reset_adapters()


def start(temporal_env, workers, conn: str):
    run_id = new_id("wf")
    handle = temporal_env.loop.run(
        temporal_env.client.start_workflow(
            "BriefingWorkflow", {"run_id": run_id, "connection_id": conn}, id=run_id, task_queue=workers.task_queue
        )
    )
    return run_id, handle


def describe(temporal_env, handle):
    return temporal_env.loop.run(handle.describe())


def wait_parked(temporal_env, run_id: str) -> None:
    wait_for(lambda: Run.objects.filter(pk=run_id, state="parked").exists(), f"{run_id} to be parked")
    wait_for(
        lambda: adapter_for("temporal").status(Run.objects.get(pk=run_id)).state == "waiting",
        f"workflow {run_id} to wait for its signal",
    )


def wait_completed(temporal_env, handle) -> dict:
    wait_for(lambda: describe(temporal_env, handle).status.name == "COMPLETED", f"workflow {handle.id} to complete")
    return temporal_env.loop.run(handle.result())


def test_parked_workflow_resumes_as_the_same_run_and_each_effect_happens_once(
    temporal_env, temporal_workers, world, celery_worker
):
    conn = connection()
    world.revoke(conn)
    temporal_workers.start()
    run_id, handle = start(temporal_env, temporal_workers, conn)
    wait_parked(temporal_env, run_id)
    run = Run.objects.get(pk=run_id)
    first_run_id = describe(temporal_env, handle).run_id
    assert run.runtime_ref["run_id"] == first_run_id
    case = case_of(run_id)
    assert adapter_for("temporal").park(run, case)["run_id"] == first_run_id
    assert len(world.effects("prepare", run_id=run_id)) == 1 and not world.effects("send", run_id=run_id)

    owner_reconnects(world, case)
    result = wait_completed(temporal_env, handle)

    assert describe(temporal_env, handle).run_id == first_run_id  # the same run, not a replacement
    assert result["resumes"] == 1
    assert len(world.effects("prepare", run_id=run_id)) == 1
    sends = world.effects("send", run_id=run_id)
    assert len(sends) == 1 and sends[0]["credential"] == f"access-token-for-{conn}"
    assert world.marks("sent", run_id=run_id)[0]["generation"] == 2
    wait_for(lambda: case.__class__.objects.get(pk=case.pk).state == CaseState.RESUMED, "the case to be resumed")
    assert deliveries(run_id) == 1
    assert adapter_for("temporal").status(run).state == "completed"


def test_a_fresh_worker_process_resumes_the_workflow_after_its_worker_is_killed(
    temporal_env, temporal_workers, world, celery_worker
):
    conn = connection()
    world.revoke(conn)
    first = temporal_workers.start()
    run_id, handle = start(temporal_env, temporal_workers, conn)
    wait_parked(temporal_env, run_id)
    first_run_id = describe(temporal_env, handle).run_id
    first.kill()  # SIGKILL while the workflow is parked
    first.wait()

    second = temporal_workers.start()
    owner_reconnects(world, case_of(run_id))
    result = wait_completed(temporal_env, handle)

    assert describe(temporal_env, handle).run_id == first_run_id
    assert world.marks("prepare", run_id=run_id)[0]["pid"] == first.pid
    assert world.marks("sent", run_id=run_id)[0]["pid"] == second.pid
    assert result["resumes"] == 1
    assert len(world.effects("prepare", run_id=run_id)) == 1 and len(world.effects("send", run_id=run_id)) == 1


def test_a_duplicate_signal_and_a_task_run_twice_resume_once(temporal_env, temporal_workers, world, celery_worker):
    conn = connection()
    world.revoke(conn)
    temporal_workers.start()
    run_id, handle = start(temporal_env, temporal_workers, conn)
    world.hold("finish", run_id)  # keep the workflow running after its resume, to signal it again
    wait_parked(temporal_env, run_id)
    case = owner_reconnects(world, case_of(run_id))
    wait_for(lambda: world.marks("held.finish", run_id=run_id), "the resumed workflow to reach finish")

    twice = [resume_run.delay(run_id, case.pk, case.resumed_generation) for _ in range(2)]
    request = ResumeRequest(run_id=run_id, case_ids=(case.reference,), generations={conn: 2}, rejected={conn: 1})
    adapter_for("temporal").resume(case, 2, run=Run.objects.get(pk=run_id), request=request)  # the signal, again
    for r in twice:
        wait_for(lambda r=r: task_done(celery_worker, r.id), f"task {r.id}")
    world.open_gate(f"finish.{run_id}")
    result = wait_completed(temporal_env, handle)

    assert result["resumes"] == 1
    assert len(world.marks("send", run_id=run_id)) == 2  # the rejected attempt and one resumed attempt
    assert len(world.effects("send", run_id=run_id)) == 1 and len(world.marks("finished", run_id=run_id)) == 1
    assert deliveries(run_id) == 1


def test_a_signal_that_comes_before_the_workflow_waits_is_not_lost(
    temporal_env, temporal_workers, world, celery_worker
):
    conn = connection()
    world.revoke(conn)
    temporal_workers.start()
    run_id = new_id("wf")
    world.hold_after_park(run_id)  # the activity stops after Revive parked the run, before it fails
    handle = temporal_env.loop.run(
        temporal_env.client.start_workflow(
            "BriefingWorkflow",
            {"run_id": run_id, "connection_id": conn},
            id=run_id,
            task_queue=temporal_workers.task_queue,
        )
    )
    wait_for(lambda: world.marks("parked", run_id=run_id), "the run to be parked")
    case = owner_reconnects(world, case_of(run_id))
    wait_for(lambda: deliveries(run_id) == 1, "the signal to be delivered while the activity still runs")

    world.open_gate(f"park.{run_id}")
    result = wait_completed(temporal_env, handle)
    assert result["resumes"] == 1
    assert len(world.effects("send", run_id=run_id)) == 1
    assert case.__class__.objects.get(pk=case.pk).state == CaseState.RESUMED


class _Run:
    def __init__(self, workflow_id: str, run_id: str | None = None) -> None:
        self.pk, self.runtime_ref = workflow_id, {"workflow_id": workflow_id, "run_id": run_id}


def test_delivery_failures_say_whether_a_retry_can_help(temporal_env, settings):
    from cases.runtimes import RunGone, RuntimeUnavailable

    request = ResumeRequest(run_id="wf_x", case_ids=("CASERV-0001",), generations={"c": 2}, rejected={"c": 1})
    settings.TEMPORAL_ADDRESS = temporal_env.address
    reset_adapters()
    with pytest.raises(RunGone):  # no such workflow: retrying cannot help
        adapter_for("temporal").resume(None, 2, run=_Run(new_id("wf")), request=request)
    from tests.restate.conftest import free_port

    settings.TEMPORAL_ADDRESS, settings.TEMPORAL_RPC_TIMEOUT = f"127.0.0.1:{free_port()}", 2.0
    reset_adapters()
    with pytest.raises(RuntimeUnavailable):  # nothing listens there: retry with backoff
        adapter_for("temporal").resume(None, 2, run=_Run(new_id("wf")), request=request)
