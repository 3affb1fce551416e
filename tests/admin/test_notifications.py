"""Operator notifications: a case awaiting approval, a failed resume and a stale case are e-mailed and POSTed to a
signed, Slack-compatible webhook (a real loopback receiver), each once, through the outbox, per namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.core import mail
from django.db import transaction
from django.utils import timezone

from audit.models import AuditEvent
from cases import outbox, services, webhooks
from cases.models import CaseState, OutboxItem, RecoveryCase
from cases.namespaces import namespace_ensure, qualify
from console.services import namespace_notifications_set
from operations import notifications
from tests.reauth.test_reconnect_notifications import Receiver

SECRET = "whsec-operator-test-not-a-real-secret"
OPS = ["ops@revive.example", "oncall@revive.example"]


@pytest.fixture
def hook(settings):
    r = Receiver()
    settings.REVIVE_OPERATOR_EMAILS = OPS
    settings.REVIVE_OPERATOR_WEBHOOK_URL = r.url
    settings.REVIVE_OPERATOR_WEBHOOK_SECRET = SECRET
    settings.REVIVE_OPERATOR_NOTIFY_MAX_ATTEMPTS = 3
    yield r
    r.close()


def owed(case, event=None) -> list[OutboxItem]:
    items = OutboxItem.objects.filter(case=case, kind__in=(notifications.EMAIL, notifications.WEBHOOK)).order_by("kind")
    return [i for i in items if event is None or i.payload["event"] == event]


def dispatch_all(items) -> list[str]:
    return [outbox.outbox_dispatch(item.pk).outcome for item in items]


def to_ops(messages):
    return [m for m in messages if m.to == OPS]


def _move(case, to):
    with transaction.atomic():
        return services.case_transition(services.case_lock(case.pk), to=to, actor="test")


def test_a_case_awaiting_approval_is_emailed_and_posted_signed(hook, make_case):
    case = make_case(CaseState.AWAITING_APPROVAL)
    items = owed(case)
    assert [(i.kind, i.key) for i in items] == [
        (notifications.EMAIL, f"operator.email:{case.pk}:case.awaiting_approval"),
        (notifications.WEBHOOK, f"operator.webhook:{case.pk}:case.awaiting_approval"),
    ]
    assert dispatch_all(items) == ["done", "done"]

    [message] = to_ops(mail.outbox)
    assert case.reference in message.subject and "approval" in message.subject
    assert f"/admin/cases/recoverycase/{case.pk}/change/" in message.body

    [(headers, body)] = hook.requests
    assert webhooks.verify(SECRET, body, headers["X-Revive-Signature"])
    assert not webhooks.verify("another-secret", body, headers["X-Revive-Signature"])
    assert not webhooks.verify(SECRET, body + b" ", headers["X-Revive-Signature"])
    assert headers["X-Revive-Signature"].startswith(f"t={headers['X-Revive-Timestamp']},v1=")
    payload = json.loads(body)
    assert case.reference in payload["text"] and payload["url"] in payload["text"]  # Slack renders <url|label>
    assert payload["event"] == "case.awaiting_approval" and payload["case"] == case.reference
    assert payload["state"] == CaseState.AWAITING_APPROVAL and payload["namespace"] == "default"
    assert payload["connection"] == case.connection_id
    assert payload["url"].endswith(f"/admin/cases/recoverycase/{case.pk}/change/")
    assert SECRET not in body.decode() and SECRET not in json.dumps(headers).replace(headers["X-Revive-Signature"], "")

    sent = AuditEvent.objects.filter(case_id=case.pk, action="case.notified").order_by("pk")
    assert [(e.after["channel"], e.after["event"]) for e in sent] == [
        ("email", "case.awaiting_approval"),
        ("webhook", "case.awaiting_approval"),
    ]
    assert sent[1].after["host"] == "127.0.0.1"
    every_row = json.dumps(list(AuditEvent.objects.values("before", "after", "arguments")))
    assert SECRET not in every_row and "/hooks/revive" not in every_row


def test_each_case_and_event_is_notified_once(hook, make_case):
    case = make_case(CaseState.AWAITING_APPROVAL)
    _move(case, CaseState.RESUMING)
    _move(case, CaseState.AWAITING_APPROVAL)  # held again by the policy: already notified
    assert len(owed(case)) == 2
    _move(case, CaseState.RESUMING)
    _move(case, CaseState.RESUME_FAILED)
    assert [i.payload["event"] for i in owed(case, "case.resume_failed")] == ["case.resume_failed"] * 2


def test_a_failed_resume_is_notified(hook, make_case):
    case = make_case(CaseState.RESUME_FAILED)
    items = owed(case)
    assert {i.payload["event"] for i in items} == {"case.resume_failed"}
    assert dispatch_all(items) == ["done", "done"]
    assert "failed to resume" in to_ops(mail.outbox)[0].subject
    assert json.loads(hook.requests[0][1])["event"] == "case.resume_failed"


def test_other_states_and_no_configuration_owe_nothing(settings, make_case):
    settings.REVIVE_OPERATOR_EMAILS, settings.REVIVE_OPERATOR_WEBHOOK_URL = [], ""
    assert owed(make_case(CaseState.RESUME_FAILED)) == []
    settings.REVIVE_OPERATOR_EMAILS = OPS
    assert owed(make_case(CaseState.RESUMING)) == [] and owed(make_case(CaseState.AWAITING_OWNER)) == []


def test_a_failing_webhook_is_retried_then_failed_and_visible(hook, make_case):
    hook.statuses = [500, 503, 500]
    case = make_case(CaseState.AWAITING_APPROVAL)
    [item] = owed(case)[1:]
    assert [outbox.outbox_dispatch(item.pk).outcome for _ in range(3)] == ["retry", "retry", "failed"]
    assert len(hook.requests) == 3
    item.refresh_from_db()
    assert item.state == OutboxItem.State.FAILED and item.attempts == 3
    assert item.last_error == "webhook to 127.0.0.1 not delivered: http_500"  # the host, never the URL's path
    failed = AuditEvent.objects.get(case_id=case.pk, action="case.notify_failed")
    assert failed.outcome == "failed" and failed.arguments["channel"] == notifications.WEBHOOK
    assert not AuditEvent.objects.filter(case_id=case.pk, action="case.notified", after__channel="webhook").exists()

    # The receiver is back; an operator retries the row from the outbox list.
    outbox.outbox_retry(item_id=item.pk, actor="operator:ann")
    assert outbox.outbox_dispatch(item.pk).outcome == "done"
    assert AuditEvent.objects.filter(case_id=case.pk, action="case.notified", after__channel="webhook").count() == 1


def test_an_operator_retries_a_failed_row_owed_for_no_run(db):
    """A row no run is named on (a case a broker opened before any run joined it) gets its attempts again."""
    item = OutboxItem.objects.create(
        kind=notifications.EMAIL,
        key="operator.email:no-run:case.stale",
        run_id="",
        state=OutboxItem.State.FAILED,
        attempts=3,
        due_at=timezone.now(),
        last_error="email not sent: SMTPServerDisconnected",
    )
    retried = outbox.outbox_retry(item_id=item.pk, actor="operator:ann")
    assert (retried.state, retried.attempts) == (OutboxItem.State.PENDING, 0)
    event = AuditEvent.objects.get(action="outbox.retried", entity_id=item.key)
    assert (event.actor, event.run_id, event.before) == ("operator:ann", "", {"state": OutboxItem.State.FAILED})


def test_a_webhook_answering_500_once_is_delivered_on_the_next_attempt(hook, make_case):
    hook.statuses = [500]
    [item] = owed(make_case(CaseState.RESUME_FAILED))[1:]
    assert [outbox.outbox_dispatch(item.pk).outcome for _ in range(2)] == ["retry", "done"]
    assert len(hook.requests) == 2
    # The same delivery id both times: a receiver drops repeats.
    assert {h["X-Revive-Delivery"] for h, _ in hook.requests} == {item.key}


def test_a_case_open_too_long_is_notified_once(hook, settings, make_case):
    settings.REVIVE_CASE_STALE_MINUTES = 60
    now = timezone.now()
    waiting = make_case(CaseState.AWAITING_OWNER)
    young = make_case(CaseState.AWAITING_OWNER)
    finished = make_case(CaseState.ABANDONED)
    RecoveryCase.objects.filter(pk__in=[waiting.pk, finished.pk]).update(opened_at=now - timedelta(minutes=61))
    RecoveryCase.objects.filter(pk=young.pk).update(opened_at=now - timedelta(minutes=59))

    assert notifications.stale_cases_notify(now=now) == [waiting.pk]
    assert owed(young) == [] and owed(finished) == []
    assert dispatch_all(owed(waiting, "case.stale")) == ["done", "done"]
    assert "open for more than 60 minutes" in to_ops(mail.outbox)[0].subject
    assert json.loads(hook.requests[0][1])["event"] == "case.stale"

    assert notifications.stale_cases_notify(now=now + timedelta(hours=5)) == [young.pk]  # waiting: already notified
    settings.REVIVE_CASE_STALE_MINUTES = 0
    assert notifications.stale_cases_notify(now=now + timedelta(days=5)) == []


def test_the_stale_scan_runs_from_beat(settings):
    from revive_site.celery import app

    entry = next(e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "cases.notify_stale_cases")
    assert entry["schedule"] > 0 and "cases.notify_stale_cases" in app.tasks


def test_a_namespace_overrides_recipients_and_webhook(hook, settings, make_case):
    team_hook = Receiver()
    try:
        namespace_ensure(name="team-a", actor="test")
        namespace_notifications_set(
            name="team-a",
            operator_emails="a1@team-a.example, a2@team-a.example",
            operator_webhook_url=team_hook.url,
            actor="operator:root",
        )
        conn = services.connection_create(
            connection_id=qualify("team-a", "conn_mail"),
            namespace="team-a",
            provider="entra",
            owner_email="o@team-a.example",
            provider_subject="s-a",
            provider_tenant="tid-a",
        )
        run = services.run_register(
            run_id=qualify("team-a", "run_a"),
            namespace="team-a",
            runtime="langgraph",
            runtime_ref={"thread_id": "a"},
            workflow_name="Brief",
            actor="test",
        )
        theirs = make_case(CaseState.AWAITING_APPROVAL, connection=conn, run=run)
        ours = make_case(CaseState.AWAITING_APPROVAL)
        assert dispatch_all(owed(theirs) + owed(ours)) == ["done"] * 4

        recipients = sorted(
            (tuple(m.to), m.extra_headers["X-Revive-Case"]) for m in mail.outbox if "X-Revive-Event" in m.extra_headers
        )
        assert recipients == sorted(
            [(("a1@team-a.example", "a2@team-a.example"), theirs.reference), (tuple(OPS), ours.reference)]
        )
        [(_, team_body)] = team_hook.requests
        [(_, our_body)] = hook.requests
        assert json.loads(team_body)["case"] == theirs.reference and json.loads(team_body)["namespace"] == "team-a"
        assert json.loads(team_body)["connection"] == "conn_mail"  # the worker-facing id, not the stored one
        assert json.loads(our_body)["case"] == ours.reference
    finally:
        team_hook.close()


def test_a_namespace_change_is_audited_without_the_webhook_url(db):
    namespace_ensure(name="team-b", actor="test")
    namespace_notifications_set(
        name="team-b",
        operator_emails=" b@team-b.example ,",
        operator_webhook_url="https://hooks.slack.example/services/T000/B000/XXXXSECRETXXXX",
        actor="operator:root",
    )
    event = AuditEvent.objects.get(action="namespace.notifications_changed", entity_id="team-b")
    assert event.after == {"operator_emails": "b@team-b.example", "webhook_host": "hooks.slack.example"}
    assert "XXXXSECRETXXXX" not in json.dumps([event.before, event.after, event.arguments])


def test_the_namespace_form_refuses_a_bad_address(client, superuser):
    client.force_login(superuser)
    namespace_ensure(name="team-c", actor="test")
    answer = client.post(
        "/admin/cases/namespace/team-c/change/",
        {
            "description": "",
            "operator_emails": "ops@team-c.example, not-an-address",
            "operator_webhook_url": "ftp://hooks.example/x",
        },
    )
    assert answer.status_code == 200  # the form again, with its errors
    errors = answer.context["adminform"].form.errors
    assert "operator_emails" in errors and "operator_webhook_url" in errors


def test_a_webhook_url_without_a_secret_is_refused_at_startup(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "revive_site.settings",
        "REVIVE_VAR_DIR": str(tmp_path),
        "REVIVE_OPERATOR_WEBHOOK_URL": "https://hooks.example/revive",
        "REVIVE_OPERATOR_WEBHOOK_SECRET": "",
    }
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "REVIVE_OPERATOR_WEBHOOK_SECRET" in done.stderr


@pytest.mark.django_db(transaction=True)
def test_the_notification_is_sent_once_the_transition_commits(hook, make_case):
    """No test hand-dispatches here: the commit enqueues the outbox rows and the (eager) worker sends them."""
    case = make_case(CaseState.AWAITING_APPROVAL)
    assert [i.state for i in owed(case)] == [OutboxItem.State.DONE] * 2
    assert [m.extra_headers["X-Revive-Case"] for m in to_ops(mail.outbox)] == [case.reference]
    assert [json.loads(body)["case"] for _, body in hook.requests] == [case.reference]
