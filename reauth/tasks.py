from celery import shared_task

from . import notifications, services
from .brokers import services as broker_services
from .errors import NotificationDeliveryFailed


@shared_task(
    name="reauth.notify_owner",
    autoretry_for=(NotificationDeliveryFailed,),
    max_retries=6,
    retry_backoff=10,
    retry_backoff_max=600,
    retry_jitter=True,
    acks_late=True,
)
def notify_owner(request_id: int) -> dict:
    """Notify by hand (the pipeline owes the same step through the outbox kind ``reauth.notify_owner``).

    Idempotent per request: each channel is delivered at most once, and a request that moved on is skipped."""
    outcome = notifications.reconnect_request_notify(request_id=request_id)
    return {"email": outcome.email, "webhook": outcome.webhook}


@shared_task(name="reauth.expire_reconnect_requests", acks_late=True)
def expire_reconnect_requests() -> int:
    """Beat: settle links past their expiry or whose case moved on."""
    return services.reconnect_requests_expire(actor="system:beat")


@shared_task(name="reauth.scalekit_accounts_poll")
def scalekit_accounts_poll() -> dict:
    """Beat: read the status of registered Scalekit connected accounts (bounded per run, with backoff per account)."""
    return broker_services.scalekit_accounts_poll().as_dict()
