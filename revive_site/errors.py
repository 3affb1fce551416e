"""The one base for Revive's domain errors.

Services raise a ``DomainError``; one handler in ``revive_site.api`` turns it
into ``{"code", "message", "data"}`` with the error's HTTP status.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    code: str = "DOMAIN_ERROR"
    status: int = 400
    default_message: str = "The request cannot be carried out."

    def __init__(self, message: str | None = None, *, data: dict[str, Any] | None = None) -> None:
        self.message = message or self.default_message
        self.data = data or {}
        super().__init__(self.message)

    def as_body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "data": self.data}


class NotFound(DomainError):
    code = "NOT_FOUND"
    status = 404
    default_message = "Not found."


class ValidationFailed(DomainError):
    code = "VALIDATION_ERROR"
    status = 422
    default_message = "The request body is not valid."


class AuthenticationRequired(DomainError):
    code = "AUTHENTICATION_REQUIRED"
    status = 401
    default_message = "A valid X-Api-Key header is required."


class PermissionDenied(DomainError):
    code = "PERMISSION_DENIED"
    status = 403
    default_message = "This key does not hold the permission the route needs."
