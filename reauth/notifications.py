"""The owner's notification: the e-mail that carries the link, and the signed webhook that does not.

The e-mail is the only place the link token ever goes. The webhook tells an
optional receiver (``REVIVE_RECONNECT_WEBHOOK_URL``) that an owner was asked
to reconnect -- case, connection, provider, expiry -- so it can nudge the
owner in its own product; it never carries the link. Its body is signed with
HMAC-SHA256 under ``REVIVE_RECONNECT_WEBHOOK_SECRET``::

    X-Revive-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">

``X-Revive-Delivery`` is stable per request, so a receiver can drop repeats.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string
from django.urls import reverse

from cases.webhooks import (  # noqa: F401 (one scheme)
    SIGNATURE_TOLERANCE_SECONDS,
    WebhookTransientError,
    post_signed,
    sign,
    verify,
)

from .identity import mask_email

WEBHOOK_EVENT = "reconnect.requested"


def link_for(raw_token: str) -> str:
    return f"{settings.PUBLIC_BASE_URL}{reverse('reauth:link', args=[raw_token])}"


def message_context(*, req, case) -> dict[str, Any]:
    """Everything the notification says, except the link. Nothing here is secret."""
    conn = req.connection
    run = case.run
    return {
        "delivery_id": str(req.public_id),
        "case_id": case.reference,
        "connection_id": conn.pk,
        "connection_name": conn.display_name or conn.pk,
        "provider": conn.provider,
        "provider_name": conn.get_provider_display(),
        "owner_email": conn.owner_email,
        "owner_name": conn.owner_name,
        # A case a broker opened before any run hit it names the connection until a run joins.
        "workflow_name": run.workflow_name if run is not None else (conn.display_name or conn.pk),
        "run_id": run.pk if run is not None else "",
        "checkpoint": (case.checkpoint.label or case.checkpoint.checkpoint_id) if case.checkpoint_id else "",
        "action_key": case.action.action_key if case.action_id else "",
        "provider_code": case.provider_code,
        "failure_class": case.failure_class,
        "expires_at": req.expires_at,
    }


def send_email(message: dict[str, Any], *, link: str) -> None:
    context = {**message, "link": link}
    subject = render_to_string("reauth/email/reconnect_subject.txt", context).strip()
    text = render_to_string("reauth/email/reconnect.txt", context)
    html = render_to_string("reauth/email/reconnect.html", context)
    email = EmailMultiAlternatives(
        subject=subject, body=text, from_email=settings.DEFAULT_FROM_EMAIL, to=[message["owner_email"]]
    )
    email.attach_alternative(html, "text/html")
    email.extra_headers["X-Revive-Case"] = message["case_id"] or ""
    email.send(fail_silently=False)


def webhook_payload(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "event": WEBHOOK_EVENT,
        "delivery_id": message["delivery_id"],
        "case_id": message["case_id"],
        "connection_id": message["connection_id"],
        "provider": message["provider"],
        "owner": mask_email(message["owner_email"]),
        "workflow_name": message["workflow_name"],
        "run_id": message["run_id"],
        "checkpoint": message["checkpoint"],
        "action_key": message["action_key"],
        "expires_at": message["expires_at"].isoformat() if message["expires_at"] else None,
    }


def post_webhook(*, url: str, secret: str, message: dict[str, Any]) -> int:
    body = json.dumps(webhook_payload(message), separators=(",", ":"), sort_keys=True).encode()
    return post_signed(
        url=url,
        secret=secret,
        body=body,
        timeout=settings.REVIVE_RECONNECT_WEBHOOK_TIMEOUT,
        headers={"X-Revive-Event": WEBHOOK_EVENT, "X-Revive-Delivery": message["delivery_id"]},
    )
