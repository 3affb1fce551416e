from __future__ import annotations

from revive_site.errors import DomainError


class RestateAdminUnreachable(DomainError):
    """The admin URL cannot be resolved, or the admin API cannot be reached."""

    code = "RESTATE_ADMIN_UNREACHABLE"
    status = 503
    default_message = "The Restate admin API cannot be reached."


class RestateDeploymentNotFound(DomainError):
    code = "RESTATE_DEPLOYMENT_NOT_FOUND"
    status = 404
    default_message = "No registered Restate deployment has exactly this service URL."


class RestateServiceNotFound(DomainError):
    """An addition to the seed's codes: recover-stuck-workflow names a service no deployment registered."""

    code = "RESTATE_SERVICE_NOT_FOUND"
    status = 404
    default_message = "Restate knows no service with this name."


class RestateDeploymentRegistrationFailed(DomainError):
    """The admin API answered, but refused or failed the registration (e.g. it could not discover the service)."""

    code = "RESTATE_DEPLOYMENT_REGISTRATION_FAILED"
    status = 502
    default_message = "The Restate admin API did not register the deployment."


class RestateWorkflowRetryBlocked(DomainError):
    """Clearing the workflow key is unsafe, unnecessary, or could not be completed.

    ``data`` is ``{"reason": ..., "invocationIds": [...]}`` with ``reason`` one of
    :attr:`REASONS`.
    """

    code = "RESTATE_WORKFLOW_RETRY_BLOCKED"
    status = 409
    ACTIVE_INVOCATION = "active-invocation"
    ALREADY_SUCCEEDED = "already-succeeded"
    PURGE_FAILED = "purge-failed"
    QUERY_FAILED = "query-failed"
    REASONS = (ACTIVE_INVOCATION, ALREADY_SUCCEEDED, PURGE_FAILED, QUERY_FAILED)
    MESSAGES = {
        ACTIVE_INVOCATION: "Workflow retry is blocked by an active invocation",
        ALREADY_SUCCEEDED: "Workflow retry is blocked: the workflow already completed successfully",
        PURGE_FAILED: "Workflow retry is blocked: a terminal-failed invocation or the keyed state could not be purged",
        QUERY_FAILED: "Workflow retry is blocked: the invocation state could not be queried",
    }

    def __init__(self, reason: str, invocation_ids: list[str], *, detail: str | None = None) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown retry-blocked reason {reason!r}")
        message = self.MESSAGES[reason] + (f" ({detail})" if detail else "")
        super().__init__(message, data={"reason": reason, "invocationIds": list(invocation_ids)})
        self.reason = reason
