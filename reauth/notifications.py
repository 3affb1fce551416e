"""The owner's notification: the e-mail that carries the link, and the signed webhook that does not; and
``reconnect_request_notify``, which sends each at most once per request.

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
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from cases.models import CaseState
from cases.services import case_await_owner, case_lock
from cases.webhooks import (  # noqa: F401 (one scheme)
    SIGNATURE_TOLERANCE_SECONDS,
    WebhookTransientError,
    post_signed,
    sign,
    verify,
)

from .errors import NotificationDeliveryFailed
from .identity import mask_email
from .models import ReconnectRequest
from .services import SYSTEM, RequestRow, _audit, _lock, _settle, token_hash, token_mint

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


# --------------------------------------------------------------------------- notification


@dataclass(frozen=True)
class NotificationOutcome:
    email: str  # "sent" | "already_sent" | "in_progress" | "skipped"
    webhook: str  # "delivered" | "already_delivered" | "not_configured" | "rejected" | "skipped"


def reconnect_request_notify(*, request_id: int) -> NotificationOutcome:
    """Send the owner the link (e-mail) and tell the configured webhook; each channel at most once per request.

    The link token is minted here, inside a claim, and sent outside any
    transaction. A failed send releases the claim and raises
    ``NotificationDeliveryFailed`` for the task to retry with a new token.
    """
    now = timezone.now()
    raw: str | None = None
    with transaction.atomic():
        row = ReconnectRequest.objects.filter(pk=request_id).values("pk", "case_id").first()
        if row is None:
            return NotificationOutcome(email="skipped", webhook="skipped")
        case = case_lock(row["case_id"])
        req = _lock(row["pk"])
        if _settle(req, case=case, actor=SYSTEM, now=now, issued=False) is not None:
            return NotificationOutcome(email="skipped", webhook="skipped")
        email_state = "already_sent"
        if req.email_sent_at is None:
            if req.notify_claimed_until and req.notify_claimed_until > now:
                return NotificationOutcome(email="in_progress", webhook="skipped")
            raw = token_mint()
            claim = settings.CELERY_TASK_TIME_LIMIT + 30
            req.token_hash = token_hash(raw)
            req.link_issued_at = now
            req.expires_at = now + timedelta(seconds=settings.REVIVE_RECONNECT_TTL_SECONDS)
            req.notify_claimed_until = now + timedelta(seconds=claim)
            req.notify_attempts += 1
            req.save()
            _audit(
                req,
                case=case,
                actor=SYSTEM,
                action="reconnect.link_issued",
                after={"expires_at": req.expires_at.isoformat(), "attempt": req.notify_attempts},
            )
        message = message_context(req=req, case=case)
    if raw is not None:
        try:
            send_email(message, link=link_for(raw))
        except Exception as exc:
            with transaction.atomic():
                case = case_lock(row["case_id"])
                req = _lock(row["pk"])
                req.notify_claimed_until = None
                req.save(update_fields=["notify_claimed_until", "updated_at"])
                _audit(
                    req,
                    case=case,
                    actor=SYSTEM,
                    action="reconnect.notify_failed",
                    outcome="failed",
                    arguments={"channel": "email", "error": type(exc).__name__},
                )
            raise NotificationDeliveryFailed("email") from None
        with transaction.atomic():
            case = case_lock(row["case_id"])
            if case.state == CaseState.OPENED:
                case_await_owner(case_id=case.pk, actor=SYSTEM)
            req = _lock(row["pk"])
            req.email_sent_at = timezone.now()
            req.notify_claimed_until = None
            req.save(update_fields=["email_sent_at", "notify_claimed_until", "updated_at"])
            _audit(
                req,
                case=case,
                actor=SYSTEM,
                action="reconnect.notified",
                after={"channel": "email", "to": mask_email(message["owner_email"])},
            )
        email_state = "sent"
    return NotificationOutcome(email=email_state, webhook=_deliver_webhook(row=row, message=message))


def _deliver_webhook(*, row: RequestRow, message: dict[str, Any]) -> str:
    url = settings.REVIVE_RECONNECT_WEBHOOK_URL
    if not url:
        return "not_configured"
    if ReconnectRequest.objects.filter(pk=row["pk"], webhook_sent_at__isnull=False).exists():
        return "already_delivered"
    try:
        status = post_webhook(url=url, secret=settings.REVIVE_RECONNECT_WEBHOOK_SECRET, message=message)
    except WebhookTransientError as exc:
        with transaction.atomic():
            case = case_lock(row["case_id"])
            req = _lock(row["pk"])
            _audit(
                req,
                case=case,
                actor=SYSTEM,
                action="reconnect.notify_failed",
                outcome="failed",
                arguments={"channel": "webhook", "error": str(exc)},
            )
        raise NotificationDeliveryFailed("webhook") from None
    with transaction.atomic():
        case = case_lock(row["case_id"])
        req = _lock(row["pk"])
        if 200 <= status < 300:
            req.webhook_sent_at = timezone.now()
            req.save(update_fields=["webhook_sent_at", "updated_at"])
            _audit(
                req,
                case=case,
                actor=SYSTEM,
                action="reconnect.webhook_delivered",
                after={"channel": "webhook", "status": status},
            )
            return "delivered"
        _audit(
            req,
            case=case,
            actor=SYSTEM,
            action="reconnect.notify_failed",
            outcome="failed",
            arguments={"channel": "webhook", "status": status},
        )
        return "rejected"
