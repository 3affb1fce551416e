"""Restate: a workflow on a real restate-server suspends on the durable promise of the rejected generation; Revive's
Celery worker resolves it through the workflow's shared handler over the ingress."""

from __future__ import annotations

import httpx
import pytest

from cases.models import CaseState, Run
from cases.runtimes import ResumeRequest, adapter_for, reset_adapters
from cases.tasks import resume_run
from tests.runtimes.support.restate_app import WORKFLOW

from .conftest import wait_for
from .helpers import case_of, connection, deliveries, new_id, owner_reconnects, task_done

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_adapters():
    reset_adapters()
    yield
    reset_adapters()


def start(restate_settings, conn: str) -> tuple[str, str]:
    run_id = new_id("rs")
    return run_id, restate_settings.send(WORKFLOW, run_id, {"connection_id": conn})


def wait_completed(restate_settings, invocation_id: str) -> dict:
    row = wait_for(
        lambda: (r := restate_settings.invocation(invocation_id)) and r["status"] == "completed" and r,
        f"invocation {invocation_id} to complete",
    )
    assert row["completion_result"] == "success" and not row.get("completion_failure"), row
    return row


def wait_parked(run_id: str) -> None:
    wait_for(lambda: Run.objects.filter(pk=run_id, state="parked").exists(), f"{run_id} to be parked")
    wait_for(
        lambda: adapter_for("restate").status(Run.objects.get(pk=run_id)).state == "waiting",
        f"{run_id} to suspend on its promise",
    )


def test_parked_workflow_resumes_on_its_promise_and_each_effect_happens_once(restate_settings, world, celery_worker):
    conn = connection()
    world.revoke(conn)
    run_id, invocation_id = start(restate_settings, conn)
    wait_parked(run_id)
    run = Run.objects.get(pk=run_id)
    case = case_of(run_id)
    where = adapter_for("restate").park(run, case)
    assert (where["invocation_id"], where["status"]) == (invocation_id, "suspended")
    assert len(world.effects("prepare", run_id=run_id)) == 1 and not world.effects("send", run_id=run_id)

    owner_reconnects(world, case)
    wait_completed(restate_settings, invocation_id)

    assert len(world.effects("prepare", run_id=run_id)) == 1
    sends = world.effects("send", run_id=run_id)
    assert len(sends) == 1 and sends[0]["credential"] == f"access-token-for-{conn}"
    assert len(world.marks("send", run_id=run_id)) == 2  # the rejected attempt, then one after the resume
    assert len(world.marks("finished", run_id=run_id)) == 1
    wait_for(lambda: deliveries(run_id) == 1, "the delivery to be recorded")
    case.refresh_from_db()
    assert case.state == CaseState.RESUMED
    assert adapter_for("restate").status(run).detail["invocation_id"] == invocation_id  # the same invocation


def test_a_duplicate_resume_and_a_task_run_twice_resolve_the_promise_once(restate_settings, world, celery_worker):
    conn = connection()
    world.revoke(conn)
    run_id, invocation_id = start(restate_settings, conn)
    wait_parked(run_id)
    case = owner_reconnects(world, case_of(run_id))
    twice = [resume_run.delay(run_id, case.pk, case.resumed_generation) for _ in range(2)]
    wait_completed(restate_settings, invocation_id)
    for r in twice:
        wait_for(lambda r=r: task_done(celery_worker, r.id), f"task {r.id}")
    request = ResumeRequest(run_id=run_id, case_ids=(case.reference,), generations={conn: 2}, rejected={conn: 1})
    promise = f"revive:{conn}:g1"
    # The same delivery again: the ingress knows its idempotency key and answers with the first call's result.
    again = adapter_for("restate").resume(case, 2, run=Run.objects.get(pk=run_id), request=request)
    assert again.detail["handler_answer"] == {"resolved": [promise], "already": []}
    # A resume that bypasses that key reaches the handler, which finds the promise already resolved.
    direct = httpx.post(
        f"{restate_settings.ingress_url}/{WORKFLOW}/{run_id}/revive_reauthorized", json=request.payload(), timeout=30
    )
    assert direct.status_code == 200 and direct.json() == {"resolved": [], "already": [promise]}

    assert len(world.marks("send", run_id=run_id)) == 2
    assert len(world.effects("send", run_id=run_id)) == 1 and len(world.marks("finished", run_id=run_id)) == 1
    assert deliveries(run_id) == 1


def test_a_resume_that_comes_before_the_workflow_awaits_its_promise_is_not_lost(restate_settings, world, celery_worker):
    conn = connection()
    world.revoke(conn)
    run_id = new_id("rs")
    world.hold_after_park(run_id)  # the workflow's step stops after Revive parked the run
    invocation_id = restate_settings.send(WORKFLOW, run_id, {"connection_id": conn})
    wait_for(lambda: world.marks("parked", run_id=run_id), "the run to be parked")
    case = owner_reconnects(world, case_of(run_id))
    wait_for(lambda: deliveries(run_id) == 1, "the promise to be resolved before the workflow awaits it")

    world.open_gate(f"park.{run_id}")
    wait_completed(restate_settings, invocation_id)
    assert len(world.effects("send", run_id=run_id)) == 1 and len(world.effects("prepare", run_id=run_id)) == 1
    assert case.__class__.objects.get(pk=case.pk).state == CaseState.RESUMED


class _Run:
    def __init__(self, key: str, service: str = WORKFLOW) -> None:
        self.pk, self.runtime_ref = key, {"service": service, "key": key}


def test_delivery_failures_say_whether_a_retry_can_help(restate_settings, settings):
    from cases.runtimes import RuntimeMisconfigured, RuntimeUnavailable
    from tests.restate.conftest import free_port

    request = ResumeRequest(run_id="rs_x", case_ids=("CASERV-0001",), generations={"c": 2}, rejected={"c": 1})
    with pytest.raises(RuntimeMisconfigured):  # Restate knows no such service: an operator must look
        adapter_for("restate").resume(None, 2, run=_Run(new_id("rs"), service="NoSuchWorkflow"), request=request)
    settings.RESTATE_INGRESS_URL = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RuntimeUnavailable):  # nothing listens: retry with backoff
        adapter_for("restate").resume(None, 2, run=_Run(new_id("rs")), request=request)


def test_a_resume_reported_failed_that_reaches_the_workflow_later_is_followed_not_parked(
    restate_settings, world, celery_worker, held_outbox
):
    """The issue's Restate hole: the delivery timed out, the case went ``resume_failed``, and only then did Restate
    complete the call and resolve the generation-1 promise. The workflow begins with generation 2: it must go on
    (not be parked to wait on a generation-2 promise nobody resolves), and the case follows it to ``resumed``."""
    from cases import services

    conn = connection()
    world.revoke(conn)
    run_id, invocation_id = start(restate_settings, conn)
    wait_parked(run_id)
    case = case_of(run_id)
    world.restore(conn)
    services.case_reauthorize(case_id=case.pk, actor="owner:test")
    services.case_resume_begin(case_id=case.pk, actor="system:test")  # its delivery is owed, and "times out":
    services.run_park_again(run_id=run_id, actor="system:test", reason="ingress timed out")
    services.case_resume_fail(case_id=case.pk, actor="system:test", reason="resume of the run not delivered: timeout")
    assert (case.__class__.objects.get(pk=case.pk).state, Run.objects.get(pk=run_id).state) == (
        CaseState.RESUME_FAILED,
        Run.State.PARKED,
    )

    # Restate completes the earlier call after all: the generation-1 promise resolves.
    request = ResumeRequest(run_id=run_id, case_ids=(case.reference,), generations={conn: 2}, rejected={conn: 1})
    adapter_for("restate").resume(case, 2, run=Run.objects.get(pk=run_id), request=request)
    wait_completed(restate_settings, invocation_id)
    assert len(world.effects("send", run_id=run_id)) == 1 and len(world.marks("finished", run_id=run_id)) == 1
    wait_for(lambda: case.__class__.objects.get(pk=case.pk).state == CaseState.RESUMED, "the case to follow the run")
    assert Run.objects.get(pk=run_id).state == Run.State.ACTIVE
