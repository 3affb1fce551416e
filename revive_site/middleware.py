from django.conf import settings
from django.http import JsonResponse


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
