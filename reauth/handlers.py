"""Where ``reauth`` takes over from ``cases`` without ``cases`` importing it (connected in ``ReauthConfig.ready``).

- ``cases.signals.case_opened`` / ``case_needs_owner``: an owner case gets its reconnect request, in the case's
  transaction.
- ``cases.signals.case_abandoned``: the case's active link is revoked, in the same transaction.
- ``cases.signals.owner_link_resend``: an operator's resend replaces the case's latest request.
- the outbox kind ``reauth.notify_owner``: the owner's e-mail and webhook, retried with backoff; when the
  attempts are used up the failure is audited on the case and shown in the admin's outbox list.
- the outbox kind ``reauth.broker_signal``: a broker's re-authorization is proved and settled
  (``reauth.brokers.services.broker_reauthorized``), retried while the broker or the issuer cannot be reached;
  when the attempts are used up the signal is ``failed`` on the connection's timeline.
"""

from __future__ import annotations

from django.conf import settings
from django.dispatch import receiver

from audit.services import audit_record
from cases import signals
from cases.models import OutboxItem, RecoveryCase
from cases.outbox import Done, Retry, outbox_handler

from . import notifications, services
from .brokers import services as brokers
from .errors import NotificationDeliveryFailed


@receiver(signals.case_opened, sender=RecoveryCase, dispatch_uid="reauth.case_opened")
def _case_opened(sender, *, case: RecoveryCase, actor: str, **kwargs) -> None:
    services.reconnect_request_create(case=case, actor=actor, new_case=True)  # None when the case needs no owner


@receiver(signals.case_needs_owner, sender=RecoveryCase, dispatch_uid="reauth.case_needs_owner")
def _case_needs_owner(sender, *, case: RecoveryCase, actor: str, **kwargs) -> None:
    services.reconnect_request_create(case=case, actor=actor)


@receiver(signals.case_abandoned, sender=RecoveryCase, dispatch_uid="reauth.case_abandoned")
def _case_abandoned(sender, *, case: RecoveryCase, reason: str, actor: str, **kwargs) -> None:
    services.reconnect_requests_revoke_for_case(case=case, reason=reason, actor=actor)


@receiver(signals.owner_link_resend, sender=RecoveryCase, dispatch_uid="reauth.owner_link_resend")
def _owner_link_resend(sender, *, case: RecoveryCase, actor: str, **kwargs) -> str:
    latest = case.reconnect_requests.order_by("-created_at", "-id").first()
    assert latest is not None  # the console offers a resend only to a case with a request (console.operate)
    new = services.reconnect_request_resend(public_id=latest.public_id, actor=actor)
    return str(new.public_id)


def _notify_exhausted(item: OutboxItem) -> None:
    case = RecoveryCase.objects.filter(pk=item.case_id).first() if item.case_id is not None else None
    audit_record(
        actor=services.SYSTEM,
        action="reconnect.notify_exhausted",
        entity_type="case",
        entity_id=(case.reference if case else "") or "",
        case=case,
        run_id=(case.run_id if case else "") or "",
        connection_id=case.connection_id if case else "",
        outcome="failed",
        arguments={"attempts": item.attempts, "error": item.last_error[:500], "outbox": item.key},
    )


@outbox_handler(
    services.NOTIFY_OWNER, max_attempts=7, backoff_first=10.0, backoff_max=600.0, on_exhausted=_notify_exhausted
)
def _notify_owner(item: OutboxItem) -> Done | Retry:
    try:
        outcome = notifications.reconnect_request_notify(request_id=item.payload["request_id"])
    except NotificationDeliveryFailed as exc:
        return Retry(error=f"notification not delivered: {exc}")
    if outcome.email == "in_progress":  # another attempt holds the claim; if it died, the claim runs out
        return Retry(error="another notification attempt holds the request")
    return Done(f"email {outcome.email}, webhook {outcome.webhook}")


def _broker_signal_exhausted(item: OutboxItem) -> None:
    brokers.broker_signal_give_up(signal_id=item.payload["signal_id"], error=item.last_error)


@outbox_handler(
    brokers.BROKER_SIGNAL,
    max_attempts=lambda: settings.REVIVE_BROKER_MAX_ATTEMPTS,
    backoff_first=5.0,
    backoff_max=600.0,
    on_exhausted=_broker_signal_exhausted,
)
def _broker_signal(item: OutboxItem) -> Done | Retry:
    try:
        return Done(brokers.broker_reauthorized(signal_id=item.payload["signal_id"]))
    except brokers.ProofUnavailable as exc:
        return Retry(error=f"identity proof unavailable: {exc}")
