"""What the SDK raises. ``RunParked`` is a signal, not a failure: the runtime helper turns it into the runtime's own pause."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ReviveError(Exception):
    """Revive answered with an error (``code`` is stable, see the API docs)."""

    def __init__(
        self, code: str, message: str, *, status: int | None = None, data: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.data = dict(data or {})


class ReviveUnavailable(ReviveError):
    """Revive could not be reached; nothing is known to have been recorded."""


class ActionInProgress(ReviveError):
    """Another attempt of this action is executing (its worker heartbeats its lock): ask again after
    ``retry_after`` seconds -- by then it has committed, or its lock ran out and it is to be reconciled.
    The runtime helpers turn this into a backoff instead of spending their retry attempts."""

    def __init__(self, message: str, *, status: int | None = None, data: Mapping[str, Any] | None = None) -> None:
        super().__init__("ACTION_IN_PROGRESS", message, status=status, data=data)
        self.retry_after = float(self.data.get("retry_after") or 1.0)


class RunParked(Exception):
    """The run must pause until the account owner reconnects (or an operator settles the case)."""

    def __init__(self, case_id: str, *, connection_id: str | None = None, generation: int | None = None) -> None:
        super().__init__(f"run parked on recovery case {case_id}")
        self.case_id = case_id
        self.connection_id = connection_id
        self.generation = generation


class RunAbandoned(Exception):
    """The operator abandoned (or rejected) the recovery case the run waits on: it will never be resumed.

    Raised by the runtime helpers' wait when Revive tells the run so (Temporal signal ``revive_abandoned``,
    LangGraph resume value ``{"revive": "abandoned"}``), and by ``protect_action`` for a run already told.
    Catch it to end the run your own way (clean up, report); left uncaught it ends the run as failed.
    """

    def __init__(self, case_id: str | None, *, reason: str = "", run_id: str | None = None) -> None:
        super().__init__(f"recovery case {case_id} was abandoned" + (f": {reason}" if reason else ""))
        self.case_id = case_id
        self.reason = reason
        self.run_id = run_id


class LeaseFenced(Exception):
    """The generation this worker holds has been superseded; reacquire the lease and re-read state."""

    def __init__(self, generation: int, current_generation: int | None) -> None:
        super().__init__(f"credential generation {generation} is fenced (current: {current_generation})")
        self.generation = generation
        self.current_generation = current_generation


class RetryLater(Exception):
    """A transient provider failure: retry the action after ``retry_after`` seconds."""

    def __init__(self, retry_after: float, *, code: str = "") -> None:
        super().__init__(f"transient provider failure {code}; retry after {retry_after:g}s")
        self.retry_after = retry_after
        self.code = code


class RefreshRequired(Exception):
    """The access token expired: refresh it through the vault and retry the action."""

    def __init__(self, code: str = "") -> None:
        super().__init__(f"access token expired ({code}); refresh and retry")
        self.code = code


class ActionAmbiguous(Exception):
    """The action's outcome is unknown and no ``reconcile`` callback was given to settle it."""

    def __init__(self, action_key: str, idempotency_key: str) -> None:
        super().__init__(
            f"action {action_key} has an unknown outcome; reconcile it by idempotency key {idempotency_key}"
        )
        self.action_key = action_key
        self.idempotency_key = idempotency_key


class ActionFailed(Exception):
    """The provider refused the action and Revive classified it as not recoverable by reconnecting."""

    def __init__(self, failure_class: str, code: str, message: str) -> None:
        super().__init__(f"{failure_class} {code}: {message}")
        self.failure_class = failure_class
        self.code = code
        self.message = message


class ProviderError(Exception):
    """Raise this from ``credential`` or ``execute`` when the provider answered with an error and nothing happened.

    Pass the provider's raw answer; Revive classifies it (dead grant, transient, ...).
    """

    def __init__(
        self,
        status: int | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        *,
        error_kind: str | None = None,
    ) -> None:
        super().__init__(f"provider error (status {status})")
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.error_kind = error_kind

    def as_payload(self) -> dict[str, Any]:
        body = self.body
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        return {
            "status": self.status,
            "body": body,
            "headers": {str(k): str(v) for k, v in self.headers.items()},
            "error_kind": self.error_kind,
        }


CredentialRejected = ProviderError
