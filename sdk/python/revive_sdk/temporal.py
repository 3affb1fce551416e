"""Temporal helpers: a rejected credential fails the activity for good; the workflow waits for Revive's signal.

In an activity, ``protect_action`` (or ``protect_action_async``) turns ``RunParked``
into a non-retryable ``ApplicationError`` of type ``CredentialRejected`` whose
details name the recovery case: retrying the activity with the same credential
could only fail again. In the workflow, mix in ``ReviveRecovery`` and run such
activities through ``revive_execute_activity``: on ``CredentialRejected`` it
waits durably (``workflow.wait_condition``) until the ``revive_reauthorized``
signal brings a generation newer than the rejected one, then schedules the
activity again -- which leases the new generation, replays what was committed,
and runs the rest. The signal handler keeps the highest generation per
connection: a signal that arrives before the workflow reaches its wait is kept,
and a duplicate changes nothing. When an operator abandons (or rejects) the case
instead, Revive signals ``revive_abandoned``: the wait raises ``RunAbandoned``
(a non-retryable ``ApplicationError`` of that type, and a ``revive_sdk.RunAbandoned``),
which the workflow may catch to end its own way; uncaught, the workflow fails with it::

    @workflow.defn
    class Briefing(ReviveRecovery):
        @workflow.run
        async def run(self, request: dict) -> dict:
            prepared = await self.revive_execute_activity(prepare_brief, request,
                                                          start_to_close_timeout=timedelta(seconds=30))
            try:
                return await self.revive_execute_activity(send_brief, prepared,
                                                          start_to_close_timeout=timedelta(seconds=30))
            except RunAbandoned as abandoned:
                return {"abandoned": abandoned.case_id, "reason": abandoned.reason}

Workflow code runs in Temporal's sandbox; import this module with
``workflow.unsafe.imports_passed_through()``. Only this module imports temporalio.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from . import errors
from .errors import ActionInProgress, RunParked
from .names import ABANDON_KIND, RESUME_KIND  # noqa: F401  (re-exported)
from .names import TEMPORAL_ABANDON_SIGNAL as ABANDON_SIGNAL
from .names import TEMPORAL_QUERY as QUERY
from .names import TEMPORAL_SIGNAL as SIGNAL

CREDENTIAL_REJECTED = "CredentialRejected"
ACTION_IN_PROGRESS = "ActionInProgress"
# The retry policy for activities that protect actions, against Revive's timings: an activity whose worker died
# mid-execute leaves its action ``executing`` under a lock of REVIVE_ACTION_LOCK_TIMEOUT (60 s by default, kept
# alive by the SDK's heartbeats while it really runs). The next attempts get ACTION_IN_PROGRESS with
# ``retry_after`` = the lock's remaining time and are delayed by exactly that (``next_retry_delay``); the first
# begin after the lock ran out answers ``reconcile``. So a handful of attempts cover any dead attempt: unlimited
# attempts are not needed and a capped interval keeps the recovery prompt.
PROTECTED_ACTIVITY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=20,
    non_retryable_error_types=[CREDENTIAL_REJECTED],
)

RUN_ABANDONED = "RunAbandoned"


class RunAbandoned(errors.RunAbandoned, ApplicationError):
    """Raised by the wait of a workflow whose recovery case was abandoned: a ``revive_sdk.RunAbandoned`` that is
    also a non-retryable ``ApplicationError``, so an uncaught one fails the workflow instead of its task."""

    def __init__(self, case_id: str | None, *, reason: str = "", run_id: str | None = None) -> None:
        message = f"recovery case {case_id} was abandoned" + (f": {reason}" if reason else "")
        ApplicationError.__init__(
            self, message, {"case_id": case_id, "reason": reason}, type=RUN_ABANDONED, non_retryable=True
        )
        self.case_id, self.reason, self.run_id = case_id, reason, run_id


def credential_rejected(parked: RunParked) -> ApplicationError:
    """The activity failure that parks the workflow: non-retryable, with the case in its details."""
    return ApplicationError(
        f"credential rejected; run parked on recovery case {parked.case_id}",
        {"case_id": parked.case_id, "connection_id": parked.connection_id, "generation": parked.generation},
        type=CREDENTIAL_REJECTED,
        non_retryable=True,
    )


def action_in_progress(busy: ActionInProgress) -> ApplicationError:
    """The activity failure for ``ACTION_IN_PROGRESS``: retryable, with Temporal's next retry delayed until
    Revive said to ask again -- so the retry policy's attempts are not burnt while a dead attempt's lock runs out."""
    return ApplicationError(
        f"action in progress; retry after {busy.retry_after:g}s",
        busy.data,
        type=ACTION_IN_PROGRESS,
        next_retry_delay=timedelta(seconds=busy.retry_after),
    )


def protect_action(revive: Any, **kwargs: Any) -> Any:
    """``Revive.protect_action`` inside a synchronous activity."""
    try:
        return revive.protect_action(**kwargs)
    except RunParked as parked:
        raise credential_rejected(parked) from None
    except ActionInProgress as busy:
        raise action_in_progress(busy) from None


async def protect_action_async(revive: Any, **kwargs: Any) -> Any:
    """``AsyncRevive.protect_action`` inside an async activity."""
    try:
        return await revive.protect_action(**kwargs)
    except RunParked as parked:
        raise credential_rejected(parked) from None
    except ActionInProgress as busy:
        raise action_in_progress(busy) from None


def register_run(revive: Any, *, workflow_name: str, run_id: str | None = None) -> dict[str, Any]:
    """From inside an activity: register the workflow as a Revive run (its id defaults to the workflow id)."""
    info = activity.info()
    return revive.register_run(
        run_id=run_id or info.workflow_id,
        runtime="temporal",
        workflow_name=workflow_name,
        runtime_ref={
            "workflow_id": info.workflow_id,
            "run_id": info.workflow_run_id,
            "namespace": info.workflow_namespace,
        },
    )


async def register_run_async(revive: Any, *, workflow_name: str, run_id: str | None = None) -> dict[str, Any]:
    info = activity.info()
    return await revive.register_run(
        run_id=run_id or info.workflow_id,
        runtime="temporal",
        workflow_name=workflow_name,
        runtime_ref={
            "workflow_id": info.workflow_id,
            "run_id": info.workflow_run_id,
            "namespace": info.workflow_namespace,
        },
    )


def parked_details(error: BaseException) -> dict[str, Any] | None:
    """The case an activity failure parked the run on, or ``None`` if it is another failure."""
    cause = error.cause if isinstance(error, ActivityError) else error
    if isinstance(cause, ApplicationError) and cause.type == CREDENTIAL_REJECTED and cause.details:
        details = cause.details[0]
        if isinstance(details, dict) and details.get("case_id"):
            return details
    return None


class ReviveRecovery:
    """Mix into a ``@workflow.defn`` class: the ``revive_reauthorized`` signal and the durable wait for it."""

    def _revive_state(self) -> dict[str, Any]:
        state = self.__dict__.get("_revive")
        if state is None:
            state = self.__dict__["_revive"] = {
                "generations": {},
                "cases": set(),
                "parked": [],
                "resumes": 0,
                "abandoned": {},
            }
        return state

    @workflow.signal(name=ABANDON_SIGNAL)
    def revive_abandoned(self, payload: dict[str, Any]) -> None:
        """Record that Revive abandoned a case this workflow waits (or will wait) on: its wait raises."""
        if not isinstance(payload, dict) or payload.get("revive") != ABANDON_KIND:
            return
        for case_id in payload.get("cases") or ():
            self._revive_state()["abandoned"].setdefault(case_id, str(payload.get("reason") or ""))

    @workflow.signal(name=SIGNAL)
    def revive_reauthorized(self, payload: dict[str, Any]) -> None:
        """Record what Revive released. Idempotent: generations only go up, cases only accumulate."""
        if not isinstance(payload, dict) or payload.get("revive") != RESUME_KIND:
            return
        state = self._revive_state()
        for connection_id, generation in (payload.get("generations") or {}).items():
            if int(generation) > state["generations"].get(connection_id, 0):
                state["generations"][connection_id] = int(generation)
        state["cases"].update(payload.get("cases") or ())

    @workflow.query(name=QUERY)
    def revive_parked(self) -> list[dict[str, Any]]:
        """The cases the workflow is waiting on right now (empty when it is not parked)."""
        return list(self._revive_state()["parked"])

    def revive_released(self, parked: dict[str, Any]) -> bool:
        state = self._revive_state()
        if parked.get("case_id") in state["cases"]:
            return True
        connection_id, generation = parked.get("connection_id"), parked.get("generation")
        return (
            bool(connection_id)
            and generation is not None
            and state["generations"].get(connection_id, 0) > int(generation)
        )

    async def revive_wait(self, parked: dict[str, Any]) -> None:
        """Wait durably until Revive releases the case in ``parked`` (a signal received earlier counts); raise
        ``RunAbandoned`` if Revive says instead that the case was abandoned."""
        state = self._revive_state()
        state["parked"].append(parked)
        case_id = parked.get("case_id")
        try:
            await workflow.wait_condition(lambda: self.revive_released(parked) or case_id in state["abandoned"])
        finally:
            state["parked"].remove(parked)
        if not self.revive_released(parked):
            raise RunAbandoned(case_id, reason=state["abandoned"][case_id])
        state["resumes"] += 1

    async def revive_execute_activity(
        self, activity_fn: Callable[..., Any] | str, *args: Any, max_parks: int = 32, **kwargs: Any
    ) -> Any:
        """``workflow.execute_activity`` that parks on ``CredentialRejected`` and runs the activity again after.

        Without a ``retry_policy`` of the caller's, ``PROTECTED_ACTIVITY_RETRY`` applies (see there). Give the
        activity a ``heartbeat_timeout`` only if it heartbeats itself; Revive's lock is kept by the SDK."""
        if len(args) > 1:
            kwargs["args"], args = list(args), ()
        kwargs.setdefault("retry_policy", PROTECTED_ACTIVITY_RETRY)
        for _ in range(max_parks):
            try:
                return await workflow.execute_activity(activity_fn, *args, **kwargs)
            except ActivityError as err:
                parked = parked_details(err)
                if parked is None:
                    raise
                await self.revive_wait(parked)
        raise ApplicationError(f"activity parked {max_parks} times", type="ReviveParkLimit", non_retryable=True)
