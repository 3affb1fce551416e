"""``POST /webhooks/nango/<namespace>``: Nango's auth webhooks, signed.

The only view of the site without CSRF protection: it takes no cookie, and it acts only on a body whose
``X-Nango-Hmac-Sha256`` matches the HMAC-SHA256 of the exact bytes received under the namespace's signing key
(constant-time compare). Anything else is a 401 JSON error and nothing is recorded. A verified delivery is
answered 200 once it is recorded -- also a duplicate (Nango retries a non-2xx delivery) and a type Revive does
not handle -- so Nango never retries what Revive already has.
"""

from __future__ import annotations

import json

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .brokers import nango
from .brokers.services import nango_signing_key, nango_webhook_receive


def _error(status: int, code: str, message: str, **data) -> JsonResponse:
    return JsonResponse({"code": code, "message": message, "data": data}, status=status)


@csrf_exempt
def nango_webhook(request: HttpRequest, namespace: str) -> JsonResponse:
    if request.method != "POST":
        response = _error(405, "METHOD_NOT_ALLOWED", "Nango webhooks are POSTed.", allowed=["POST"])
        response["Allow"] = "POST"
        return response
    key = nango_signing_key(namespace)
    if key is None:
        return _error(404, "NAMESPACE_NOT_FOUND", "No namespace with this name exists.", namespace=namespace[:64])
    if int(request.META.get("CONTENT_LENGTH") or 0) > settings.REVIVE_MAX_BODY_BYTES:
        return _error(413, "PAYLOAD_TOO_LARGE", "The webhook body is too large.", limit=settings.REVIVE_MAX_BODY_BYTES)
    raw = request.body
    if not nango.signature_valid(key, raw, request.headers.get(nango.SIGNATURE_HEADER)):
        reason = (
            "missing" if not request.headers.get(nango.SIGNATURE_HEADER) else "mismatch" if key else "no_signing_key"
        )
        return _error(
            401,
            "WEBHOOK_SIGNATURE_INVALID",
            "The X-Nango-Hmac-Sha256 signature is missing or does not match this namespace's signing key.",
            reason=reason,
        )
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return _error(400, "WEBHOOK_BODY_INVALID", "The webhook body is not a JSON object.")
    receipt = nango_webhook_receive(namespace=namespace, raw=raw, payload=payload)
    return JsonResponse(
        {"received": True, "duplicate": receipt.duplicate, "state": receipt.state, "outcome": receipt.outcome}
    )
