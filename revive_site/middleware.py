import json
import logging
import re
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from audit.context import trace_id_from_traceparent, work_context_bind, work_context_reset
from audit.models import OperationAudit
from audit.operations import (
    OPERATOR_PATH_PREFIX,
    REASON_HEADER,
    REQUEST_ID_HEADER,
    operation_audit_record,
    request_id_for,
)
from cases.models import ApiKey
from cases.services import api_key_authenticate

log = logging.getLogger(__name__)

_RUN_PATH = re.compile(r"^/api/v1/runs/(?P<run>[A-Za-z0-9_.:@-]{1,200})(?:/|$)")


class WorkContextMiddleware:
    """Names the request for logs and audit: request id (``X-Request-Id``, echoed), trace id, run id.

    The trace id is the one of the caller's W3C ``traceparent`` (both SDKs send one); with tracing on, the
    active span's (which continues that trace) wins, see :func:`audit.context.work_context`.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.request_id = request_id_for(request)
        run = _RUN_PATH.match(request.path)
        token = work_context_bind(
            request_id=request.request_id,
            trace_id=trace_id_from_traceparent(request.headers.get("traceparent")),
            run_id=run["run"] if run else "",
        )
        try:
            response = self.get_response(request)
        finally:
            work_context_reset(token)
        response[REQUEST_ID_HEADER] = request.request_id
        return response


class ApiBodyLimitMiddleware:
    """Refuse an API request whose declared body exceeds the limit before any view reads it.

    Views that parse a body hit Django's own ``DATA_UPLOAD_MAX_MEMORY_SIZE`` as well;
    this also covers routes that take no body.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > settings.REVIVE_MAX_BODY_BYTES:
                return JsonResponse(
                    {
                        "code": "PAYLOAD_TOO_LARGE",
                        "message": "The request body is larger than this API accepts.",
                        "data": {"max_bytes": settings.REVIVE_MAX_BODY_BYTES},
                    },
                    status=413,
                )
        return self.get_response(request)


API_STATUS_CODES = {400: "BAD_REQUEST", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
_API_STATUS_MESSAGES = {
    400: "The request cannot be parsed.",
    404: "Not found.",
    405: "This method is not allowed on this path.",
}


class ApiErrorShapeMiddleware:
    """Under ``/api/`` every 400, 404 and 405 is the JSON error shape ``{code, message, data}``.

    django-ninja answers a wrong method with a plain-text 405, and a path no router knows is Django's
    HTML 404; both happen before any exception handler of the API runs. A 405 keeps its ``Allow`` header.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            request.path.startswith("/api/")
            and response.status_code in API_STATUS_CODES
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            status = response.status_code
            shaped = JsonResponse(
                {
                    "code": API_STATUS_CODES[status],
                    "message": _API_STATUS_MESSAGES[status],
                    "data": {"method": request.method} if status == 405 else {},
                },
                status=status,
            )
            for header in ("Allow", "X-Request-Id"):
                if header in response:
                    shaped[header] = response[header]
            return shaped
        return response


# --------------------------------------------------------------------------- operations audit (audit.operations)


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
        # The id rides on the request (request_id_for reads it back); the stubs' HttpRequest declares no such attribute.
        request.request_id = request_id  # type: ignore[attr-defined]
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
            log.exception("operations audit: could not record request %s on %s", request_id, request.path)
        return response
