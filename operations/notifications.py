"""Operator notifications: a case waits for approval, failed to resume, or has been open too long.

One channel, the transactional outbox (``cases.outbox``): the transition that makes a case notable owes one row per
configured channel (``operator.email``, ``operator.webhook``) in its own transaction, keyed
``<kind>:<case>:<event>`` so each (case, event) is notified once however often the case passes that state. The
handlers run after the commit, outside any lock; a failing receiver is retried with backoff up to
``REVIVE_OPERATOR_NOTIFY_MAX_ATTEMPTS``, then the row is ``failed`` (the admin's outbox list) and audited.

Where a notification goes is read when it is sent: a namespace's ``operator_emails`` / ``operator_webhook_url``
when set, otherwise ``REVIVE_OPERATOR_EMAILS`` / ``REVIVE_OPERATOR_WEBHOOK_URL``. The webhook is signed with
``REVIVE_OPERATOR_WEBHOOK_SECRET`` (``cases.webhooks``); neither the secret nor the URL (which may carry a token of
its own) is written to the payload, a log line, an error or the audit log: the audit names the URL's host only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.dispatch import receiver
from django.urls import reverse
from django.utils import timezone

from audit.services import audit_record
from cases import signals, webhooks
from cases.models import OPEN_CASE_STATES, CaseState, Namespace, OutboxItem, RecoveryCase, email_list_split
from cases.namespaces import unqualify
from cases.outbox import Done, Retry, outbox_handler, outbox_put

ACTOR = "system:notify"
EMAIL = "operator.email"
WEBHOOK = "operator.webhook"

AWAITING_APPROVAL = "case.awaiting_approval"
RESUME_FAILED = "case.resume_failed"
STALE = "case.stale"

EVENT_OF_STATE: dict[str, str] = {
    CaseState.AWAITING_APPROVAL: AWAITING_APPROVAL,
    CaseState.RESUME_FAILED: RESUME_FAILED,
}
HEADLINE = {
    AWAITING_APPROVAL: "is waiting for an operator's approval",
    RESUME_FAILED: "failed to resume",
    STALE: "has been open for more than {minutes} minutes",
}


@dataclass(frozen=True)
class Targets:
    emails: list[str]
    webhook_url: str

    @property
    def channels(self) -> list[str]:
        return ([EMAIL] if self.emails else []) + (
            [WEBHOOK] if self.webhook_url and settings.REVIVE_OPERATOR_WEBHOOK_SECRET else []
        )


def targets_for(namespace_id: str) -> Targets:
    """Where the notifications of ``namespace_id``'s cases go: the namespace's own, else the global settings."""
    row: Mapping[str, Any] = (
        Namespace.objects.filter(pk=namespace_id).values("operator_emails", "operator_webhook_url").first() or {}
    )
    emails = email_list_split(row.get("operator_emails", "")) or list(settings.REVIVE_OPERATOR_EMAILS)
    return Targets(emails=emails, webhook_url=row.get("operator_webhook_url") or settings.REVIVE_OPERATOR_WEBHOOK_URL)


def _case_targets(case: RecoveryCase) -> Targets:
    # The column is NOT NULL; django-stubs types the id of a foreign key that has a default as Optional
    # (typeddjango/django-stubs#444).
    return targets_for(case.namespace_id)  # type: ignore[arg-type]


def notification_owe(*, case: RecoveryCase, event: str) -> list[OutboxItem]:
    """Owe ``event``'s notification of ``case`` on every configured channel; call inside the transaction of the change."""
    payload = {"event": event, "state": case.state}
    return [
        outbox_put(kind=kind, key=f"{kind}:{case.pk}:{event}", payload=payload, case=case, run_id=case.run_id or "")
        for kind in _case_targets(case).channels
    ]


@receiver(signals.case_state_changed, sender=RecoveryCase, dispatch_uid="operations.notifications.state_changed")
def _case_state_changed(sender, *, case: RecoveryCase, before: str, actor: str, **kwargs) -> None:
    event = EVENT_OF_STATE.get(case.state)
    if event is not None:
        notification_owe(case=case, event=event)


def stale_cases_notify(*, now=None, limit: int = 500) -> list[int]:
    """Owe the ``case.stale`` notification of each open case older than ``REVIVE_CASE_STALE_MINUTES`` that is not
    owed it yet (the beat task's body). Once per case: its key is owed at most once, whatever the case does next."""
    minutes = settings.REVIVE_CASE_STALE_MINUTES
    if minutes <= 0:
        return []
    cutoff = (now or timezone.now()) - timedelta(minutes=minutes)
    owed = OutboxItem.objects.filter(case_id=OuterRef("pk"), kind__in=(EMAIL, WEBHOOK), key__endswith=f":{STALE}")
    cases = RecoveryCase.objects.filter(state__in=OPEN_CASE_STATES, opened_at__lt=cutoff)
    if not Targets(list(settings.REVIVE_OPERATOR_EMAILS), settings.REVIVE_OPERATOR_WEBHOOK_URL).channels:
        # Nothing global: only namespaces with recipients of their own can owe anything (the others never will).
        cases = cases.filter(namespace__in=Namespace.objects.exclude(operator_emails="", operator_webhook_url=""))
    candidates = list(cases.exclude(Exists(owed)).order_by("opened_at", "pk").values_list("pk", "namespace_id")[:limit])
    channels = {ns: targets_for(ns).channels for ns in {ns for _, ns in candidates}}
    notified = []
    for pk, namespace_id in candidates:
        if not channels[namespace_id]:
            continue
        with transaction.atomic():
            case = RecoveryCase.objects.filter(pk=pk, state__in=OPEN_CASE_STATES).first()
            if case is not None and notification_owe(case=case, event=STALE):
                notified.append(pk)
    return notified


# --------------------------------------------------------------------------- what is sent


def case_url(case: RecoveryCase) -> str:
    return f"{settings.PUBLIC_BASE_URL}{reverse('admin:cases_recoverycase_change', args=[case.pk])}"


def message_for(case: RecoveryCase, event: str, state: str) -> dict:
    """The notification's content (nothing secret): the Slack-compatible ``text`` and the structured fields."""
    reference = case.reference or str(case)
    connection = unqualify(case.connection_id)
    url = case_url(case)
    headline = HEADLINE[event].format(minutes=settings.REVIVE_CASE_STALE_MINUTES)
    return {
        "text": f"Revive: case <{url}|{reference}> {headline} (connection {connection}, namespace {case.namespace_id}).",
        "event": event,
        "case": reference,
        "state": state,
        "current_state": case.state,
        "connection": connection,
        "namespace": case.namespace_id,
        "provider": case.provider,
        "failure_class": case.failure_class,
        "opened_at": case.opened_at.isoformat(),
        "url": url,
    }


def _case_of(item: OutboxItem) -> RecoveryCase | None:
    return RecoveryCase.objects.filter(pk=item.case_id).first() if item.case_id is not None else None


def _load(item: OutboxItem) -> tuple[RecoveryCase | None, dict]:
    case = _case_of(item)
    if case is None:
        return None, {}
    return case, message_for(case, item.payload["event"], item.payload.get("state", case.state))


def _audit_sent(case: RecoveryCase, item: OutboxItem, after: dict) -> None:
    with transaction.atomic():
        audit_record(
            actor=ACTOR,
            action="case.notified",
            entity_type="case",
            entity_id=case.reference or str(case.pk),
            case=case,
            run_id=case.run_id or "",
            connection_id=case.connection_id,
            after={"event": item.payload["event"], **after},
            arguments={"outbox": item.key},
        )


def _exhausted(item: OutboxItem) -> None:
    case = _case_of(item)
    audit_record(
        actor=ACTOR,
        action="case.notify_failed",
        entity_type="case",
        entity_id=(case.reference if case else "") or str(item.case_id),
        case=case,
        run_id=(case.run_id if case else "") or "",
        connection_id=case.connection_id if case else "",
        outcome="failed",
        arguments={
            "event": item.payload.get("event"),
            "channel": item.kind,
            "attempts": item.attempts,
            "error": item.last_error[:500],
            "outbox": item.key,
        },
    )


def _attempts() -> int:
    return settings.REVIVE_OPERATOR_NOTIFY_MAX_ATTEMPTS


@outbox_handler(EMAIL, max_attempts=_attempts, backoff_first=10.0, backoff_max=600.0, on_exhausted=_exhausted)
def _send_email(item: OutboxItem) -> Done | Retry:
    case, message = _load(item)
    if case is None:
        return Done("case gone")
    to = _case_targets(case).emails
    if not to:
        return Done("no recipients configured any more")
    subject = (
        f"[Revive] {message['case']} {HEADLINE[message['event']].format(minutes=settings.REVIVE_CASE_STALE_MINUTES)}"
    )
    body = "\n".join(
        [
            f"Case {message['case']} {HEADLINE[message['event']].format(minutes=settings.REVIVE_CASE_STALE_MINUTES)}.",
            "",
            f"State:      {message['current_state']}",
            f"Connection: {message['connection']}",
            f"Namespace:  {message['namespace']}",
            f"Provider:   {message['provider']} ({message['failure_class']})",
            f"Opened:     {message['opened_at']}",
            "",
            f"Open the case: {message['url']}",
        ]
    )
    email = EmailMessage(subject=subject, body=body, from_email=settings.DEFAULT_FROM_EMAIL, to=to)
    email.extra_headers["X-Revive-Case"] = message["case"]
    email.extra_headers["X-Revive-Event"] = message["event"]
    try:
        email.send(fail_silently=False)
    except Exception as exc:  # SMTP down, refused: the outbox retries, bounded
        return Retry(error=f"email not sent: {type(exc).__name__}")
    _audit_sent(case, item, {"channel": "email", "to": to})
    return Done(f"e-mailed {len(to)}")


@outbox_handler(WEBHOOK, max_attempts=_attempts, backoff_first=10.0, backoff_max=600.0, on_exhausted=_exhausted)
def _post_webhook(item: OutboxItem) -> Done | Retry:
    case, message = _load(item)
    if case is None:
        return Done("case gone")
    url, secret = _case_targets(case).webhook_url, settings.REVIVE_OPERATOR_WEBHOOK_SECRET
    if not url or not secret:
        return Done("no webhook configured any more")
    body = json.dumps({**message, "delivery_id": item.key}, separators=(",", ":"), sort_keys=True).encode()
    host = urlsplit(url).hostname or ""
    try:
        status = webhooks.post_signed(
            url=url,
            secret=secret,
            body=body,
            timeout=settings.REVIVE_OPERATOR_WEBHOOK_TIMEOUT,
            headers={"X-Revive-Event": message["event"], "X-Revive-Delivery": item.key},
        )
    except webhooks.WebhookTransientError as exc:
        return Retry(error=f"webhook to {host} not delivered: {exc}")
    if not 200 <= status < 300:  # refused (a wrong path, a receiver not deployed yet): retried, bounded, then visible
        return Retry(error=f"webhook to {host} refused: http_{status}")
    _audit_sent(case, item, {"channel": "webhook", "host": host, "status": status})
    return Done(f"webhook {status}")
