"""Operations audit of the operator routes (``/api/v2/admin/operator/...``).

Every attempt at an operator route, including refused (401/403), invalid (4xx)
and failed ones, becomes one :class:`~audit.models.OperationAudit` row with
the actor and its role at the time, the route, the sanitized arguments (URL
user-info becomes ``REDACTED``), the reason when supplied
(``X-Operator-Reason``), start and finish time, outcome, and error code and
message on failure. The row carries the request identifier that the response
sends back in ``X-Request-Id`` (and in ``requestId`` of an error body), so an
incident record, a response and a row can be joined.

The middleware sits outside django-ninja, so it sees attempts that never reach
a handler (authentication, validation) as well as those that do.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import datetime
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from .models import OperationAudit
from .redaction import redact, redact_text

logger = logging.getLogger(__name__)

OPERATOR_PATH_PREFIX = "/api/v2/admin/operator/"
REQUEST_ID_HEADER = "X-Request-Id"
REASON_HEADER = "X-Operator-Reason"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")


def operation_audit_record(
    *,
    request_id: str,
    actor: str,
    role: str,
    route: str,
    arguments: dict[str, Any],
    reason: str,
    started_at: datetime,
    finished_at: datetime,
    outcome: str,
    error_code: str = "",
    error: str = "",
) -> OperationAudit:
    """Append one operations audit row; arguments, reason and error are redacted here, whatever the caller did."""
    return OperationAudit.objects.create(
        request_id=request_id[:64],
        actor=actor[:200],
        role=role[:60],
        route=route[:200],
        arguments=redact(arguments),
        reason=redact_text(reason),
        started_at=started_at,
        finished_at=finished_at,
        outcome=outcome,
        error_code=error_code[:80],
        error=redact_text(error),
    )


def request_id_for(request: HttpRequest) -> str:
    """The request's id: the one already given to it, the client's ``X-Request-Id`` if well-formed, or a new one."""
    given = getattr(request, "request_id", "")
    if given:
        return given
    supplied = request.headers.get(REQUEST_ID_HEADER, "")
    return supplied if _CLIENT_REQUEST_ID.fullmatch(supplied) else f"req_{uuid.uuid4().hex}"


def _arguments(request: HttpRequest) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    if request.GET:
        arguments["query"] = {key: request.GET.getlist(key) for key in request.GET}
    try:
        body = request.body
    except RequestDataTooBig:
        return {**arguments, "body": "(larger than accepted; not stored)"}
    if not body:
        return arguments
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {**arguments, "body": "(not JSON; not stored)"}
    if isinstance(parsed, dict):
        return {**parsed, **arguments}
    return {**arguments, "body": parsed}


def _actor(request: HttpRequest) -> tuple[str, str]:
    """The key that made the attempt, also when it was refused; ``anonymous`` without a valid key."""
    from cases.models import ApiKey
    from cases.services import api_key_authenticate

    key = getattr(request, "auth", None)
    if not isinstance(key, ApiKey):
        raw = request.headers.get("X-Api-Key")
        key = api_key_authenticate(raw) if raw else None
    if key is None:
        return "anonymous", ""
    return key.actor, key.role + ("+system_operate" if key.system_operate else "")


def _error_body(response: HttpResponse) -> dict[str, Any] | None:
    if response.streaming or "json" not in response.get("Content-Type", ""):
        return None
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) and "code" in body else None


def _error_code(status: int, error_body: dict[str, Any] | None) -> str:
    if status < 400:
        return ""
    return str((error_body or {}).get("code") or f"HTTP_{status}")


def _outcome(status: int) -> str:
    if status < 400:
        return OperationAudit.Outcome.SUCCEEDED
    if status in (401, 403):
        return OperationAudit.Outcome.REFUSED
    return OperationAudit.Outcome.FAILED


class OperationsAuditMiddleware:
    """Records one operations audit row per operator-route request and tags it with a request id."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(OPERATOR_PATH_PREFIX):
            return self.get_response(request)
        request_id = request_id_for(request)
        request.request_id = request_id
        started_at = timezone.now()
        arguments = _arguments(request)
        response = self.get_response(request)
        finished_at = timezone.now()

        error_body = _error_body(response) if response.status_code >= 400 else None
        if error_body is not None:
            error_body["requestId"] = request_id
            response.content = json.dumps(error_body)
            if response.has_header("Content-Length"):
                response["Content-Length"] = str(len(response.content))
        response[REQUEST_ID_HEADER] = request_id

        try:
            actor, role = _actor(request)
            operation_audit_record(
                request_id=request_id,
                actor=actor,
                role=role,
                route=request.path,
                arguments=arguments,
                reason=request.headers.get(REASON_HEADER, "")[:2000],
                started_at=started_at,
                finished_at=finished_at,
                outcome=_outcome(response.status_code),
                error_code=_error_code(response.status_code, error_body),
                error=str((error_body or {}).get("message") or ""),
            )
        except Exception:
            logger.exception("operations audit: could not record request %s on %s", request_id, request.path)
        return response
