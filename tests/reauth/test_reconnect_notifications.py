"""The owner's notification: a Celery task enqueued on commit e-mails the link once per request; an optional
webhook is signed with HMAC-SHA256 and never carries the link."""

from __future__ import annotations

import json
import smtplib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from audit.models import AuditEvent
from cases.models import CaseState
from reauth import notifications, services
from reauth.errors import NotificationDeliveryFailed
from reauth.models import ReconnectRequest
from reauth.tasks import notify_owner

from .conftest import link_in

WEBHOOK_SECRET = "whsec-test-not-a-real-secret"


class Receiver:
    """A webhook receiver on a loopback port; answers ``statuses`` in turn (then 204)."""

    def __init__(self, statuses=()):
        self.requests: list[tuple[dict, bytes]] = []
        self.statuses = list(statuses)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/revive"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings):
    r = Receiver()
    settings.REVIVE_RECONNECT_WEBHOOK_URL = r.url
    settings.REVIVE_RECONNECT_WEBHOOK_SECRET = WEBHOOK_SECRET
    yield r
    r.close()


@pytest.mark.django_db(transaction=True)
def test_opening_the_case_emails_the_owner_on_commit(owner_case, mailoutbox):
    oc = owner_case()
    assert len(mailoutbox) == 1
    message = mailoutbox[0]
    assert message.to == ["ada@contoso.example"]
    assert "Nightly executive briefing" in message.subject
    link, token = link_in(message)
    assert link.startswith("http") and "/reconnect/l/rvr_" in link
    html = message.alternatives[0][0]
    assert link in html and "05 / prepare brief" in html
    req = oc.request
    assert req.email_sent_at is not None and req.expires_at is not None
    assert oc.refresh().state == CaseState.AWAITING_OWNER
    assert services.reconnect_link_open(token=token).pk == req.pk


def test_notification_is_idempotent_per_request(owner_case, mailoutbox):
    oc = owner_case()
    req = oc.request
    first = notify_owner.apply(args=[req.pk]).get()
    second = notify_owner.apply(args=[req.pk]).get()
    assert first == {"email": "sent", "webhook": "not_configured"}
    assert second == {"email": "already_sent", "webhook": "not_configured"}
    assert len(mailoutbox) == 1
    assert AuditEvent.objects.filter(entity_id=str(req.public_id), action="reconnect.notified").count() == 1


def test_a_request_that_moved_on_is_not_notified(owner_case, mailoutbox):
    from cases import services as case_services

    oc = owner_case()
    case_services.case_reauthorize(case_id=oc.case.pk, actor="operator:ops")
    assert notifications.reconnect_request_notify(request_id=oc.request.pk).email == "skipped"
    assert mailoutbox == []
    assert oc.request.state == ReconnectRequest.State.REVOKED


def test_a_failed_send_is_retried_with_a_new_token(owner_case, mailoutbox, monkeypatch):
    oc = owner_case()
    real_send = notifications.send_email

    def broken(message, *, link):
        raise smtplib.SMTPServerDisconnected("gone")

    monkeypatch.setattr(notifications, "send_email", broken)
    with pytest.raises(NotificationDeliveryFailed):
        notifications.reconnect_request_notify(request_id=oc.request.pk)
    first_hash = oc.request.token_hash
    assert oc.request.notify_claimed_until is None  # the claim was released for the retry
    monkeypatch.setattr(notifications, "send_email", real_send)
    assert notifications.reconnect_request_notify(request_id=oc.request.pk).email == "sent"
    req = oc.request
    assert req.token_hash != first_hash and req.notify_attempts == 2
    assert len(mailoutbox) == 1
    failed = AuditEvent.objects.get(entity_id=str(req.public_id), action="reconnect.notify_failed")
    assert failed.arguments == {"channel": "email", "error": "SMTPServerDisconnected"}


@pytest.mark.django_db(transaction=True)
def test_a_lost_notification_message_is_sent_by_the_outbox_sweep(owner_case, mailoutbox, held_outbox, settings):
    """Redis lost the message enqueued on commit (``held_outbox`` drops it): the owed row is swept and the owner
    gets the link all the same, once."""
    from datetime import timedelta

    from django.utils import timezone

    from cases import outbox
    from cases.models import OutboxItem

    oc = owner_case()
    item = OutboxItem.objects.get(kind=services.NOTIFY_OWNER)
    assert (item.case_id, item.payload, held_outbox.dispatched) == (
        oc.case.pk,
        {"request_id": oc.request.pk},
        [item.pk],
    )
    assert mailoutbox == [] and oc.refresh().state == CaseState.OPENED
    later = timezone.now() + timedelta(seconds=settings.REVIVE_OUTBOX_GRACE_SECONDS + 1)
    assert outbox.outbox_sweep(now=later) == [item.pk]
    assert outbox.outbox_dispatch(item.pk).outcome == "done"
    assert outbox.outbox_dispatch(item.pk).outcome == "busy"  # done: a late duplicate does nothing
    assert len(mailoutbox) == 1 and oc.refresh().state == CaseState.AWAITING_OWNER


def test_failed_sends_are_retried_with_backoff_then_shown_to_operators(
    owner_case, mailoutbox, monkeypatch, held_outbox
):
    from cases import outbox
    from cases.models import OutboxItem

    def broken(message, *, link):
        raise smtplib.SMTPServerDisconnected("gone")

    monkeypatch.setattr(notifications, "send_email", broken)
    oc = owner_case()
    item = OutboxItem.objects.get(kind=services.NOTIFY_OWNER)
    outcomes = [outbox.outbox_dispatch(item.pk) for _ in range(item.max_attempts)]
    assert [o.outcome for o in outcomes] == ["retry"] * (item.max_attempts - 1) + ["failed"]
    assert outcomes[0].countdown < outcomes[2].countdown  # exponential backoff
    assert OutboxItem.objects.get(pk=item.pk).state == "failed" and mailoutbox == []
    exhausted = AuditEvent.objects.get(action="reconnect.notify_exhausted")
    assert exhausted.case_id == oc.case.pk and exhausted.arguments["attempts"] == item.max_attempts


def test_the_task_retries_delivery_failures(owner_case):
    assert NotificationDeliveryFailed in notify_owner.autoretry_for
    assert notify_owner.max_retries and notify_owner.name == "reauth.notify_owner"


def test_the_webhook_is_signed_and_carries_no_link(owner_case, receiver, mailoutbox):
    oc = owner_case()
    outcome = notifications.reconnect_request_notify(request_id=oc.request.pk)
    assert outcome.webhook == "delivered"
    ((headers, body),) = receiver.requests
    assert headers["X-Revive-Event"] == "reconnect.requested"
    assert headers["X-Revive-Delivery"] == str(oc.request.public_id)
    assert notifications.verify(WEBHOOK_SECRET, body, headers["X-Revive-Signature"])
    assert not notifications.verify("another-secret", body, headers["X-Revive-Signature"])
    assert not notifications.verify(WEBHOOK_SECRET, body + b" ", headers["X-Revive-Signature"])
    payload = json.loads(body)
    assert payload["case_id"] == oc.case.reference and payload["connection_id"] == oc.connection_id
    assert payload["owner"] == "a•••@contoso.example"
    _, token = link_in(mailoutbox[0])
    assert token not in body.decode() and "/reconnect/l/" not in body.decode()


def test_the_webhook_is_delivered_once_per_request(owner_case, receiver):
    oc = owner_case()
    notifications.reconnect_request_notify(request_id=oc.request.pk)
    assert notifications.reconnect_request_notify(request_id=oc.request.pk).webhook == "already_delivered"
    assert len(receiver.requests) == 1


def test_a_failing_webhook_is_retried_without_sending_the_email_again(owner_case, receiver, mailoutbox):
    receiver.statuses = [503]
    oc = owner_case()
    with pytest.raises(NotificationDeliveryFailed):
        notifications.reconnect_request_notify(request_id=oc.request.pk)
    assert len(mailoutbox) == 1
    outcome = notifications.reconnect_request_notify(request_id=oc.request.pk)
    assert outcome == notifications.NotificationOutcome(email="already_sent", webhook="delivered")
    assert len(mailoutbox) == 1 and len(receiver.requests) == 2
    assert receiver.requests[0][0]["X-Revive-Delivery"] == receiver.requests[1][0]["X-Revive-Delivery"]


def test_a_webhook_the_receiver_refuses_is_not_retried(owner_case, receiver):
    receiver.statuses = [400]
    oc = owner_case()
    assert notifications.reconnect_request_notify(request_id=oc.request.pk).webhook == "rejected"


def test_a_webhook_url_without_a_secret_is_refused_at_startup(tmp_path):
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "revive_site.settings",
        "REVIVE_VAR_DIR": str(tmp_path),
        "REVIVE_RECONNECT_WEBHOOK_URL": "https://hooks.example/revive",
        "REVIVE_RECONNECT_WEBHOOK_SECRET": "",
    }
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "REVIVE_RECONNECT_WEBHOOK_SECRET" in done.stderr
