import re

from django.conf import settings
from django.http import JsonResponse

from audit.context import trace_id_from_traceparent, work_context_bind, work_context_reset
from audit.operations import REQUEST_ID_HEADER, request_id_for

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
        token = work_context_bind(request_id=request.request_id,
                                  trace_id=trace_id_from_traceparent(request.headers.get("traceparent")),
                                  run_id=run["run"] if run else "")
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
                    {"code": "PAYLOAD_TOO_LARGE", "message": "The request body is larger than this API accepts.",
                     "data": {"max_bytes": settings.REVIVE_MAX_BODY_BYTES}},
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
                {"code": API_STATUS_CODES[status], "message": _API_STATUS_MESSAGES[status],
                 "data": {"method": request.method} if status == 405 else {}},
                status=status,
            )
            for header in ("Allow", "X-Request-Id"):
                if header in response:
                    shaped[header] = response[header]
            return shaped
        return response
