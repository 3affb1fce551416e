"""Signed webhooks: the one signature scheme every Revive webhook uses (the owner's reconnect, operator alerts).

The body is signed with HMAC-SHA256 under a secret from the settings, the timestamp inside the signed material, so
a receiver can refuse a replayed or altered body::

    X-Revive-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">

``X-Revive-Timestamp`` repeats ``t`` for receivers that read it from its own header.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx

SIGNATURE_TOLERANCE_SECONDS = 300


class WebhookTransientError(Exception):
    """The receiver may accept a retry (timeout, connection error, 408, 429, 5xx). The message never holds the URL:
    a webhook URL may carry a token of its own (Slack's do)."""


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(
    secret: str, body: bytes, header: str, *, now: float | None = None, tolerance: int = SIGNATURE_TOLERANCE_SECONDS
) -> bool:
    """Check an ``X-Revive-Signature`` header (for receivers, and the tests)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (ValueError, KeyError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, given)


def post_signed(*, url: str, secret: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST ``body`` signed with ``secret``; the receiver's status, or ``WebhookTransientError`` when a retry may
    succeed. Redirects are not followed (a signed body goes where it was configured to go, nowhere else)."""
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Revive-Webhook/1",
        **headers,
        "X-Revive-Timestamp": str(timestamp),
        "X-Revive-Signature": sign(secret, body, timestamp),
    }
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise WebhookTransientError(type(exc).__name__) from None
    if response.status_code in (408, 429) or response.status_code >= 500:
        raise WebhookTransientError(f"http_{response.status_code}")
    return response.status_code
