"""``POST /webhooks/nango/<namespace>``: signature, idempotency, and what a refresh failure does to the connection."""

from __future__ import annotations

import json
import smtplib
import subprocess
from pathlib import Path

import pytest
from django.test import Client

from audit.models import AuditEvent
from cases import services as case_services
from cases.models import CaseState, CredentialGeneration, RecoveryCase, Runtime
from lab.nango_standin import sign
from reauth.brokers import nango
from reauth.models import BrokerSignal, ReconnectRequest

from .conftest import DEAD, SIGNING_KEY, TRANSIENT, auth_event

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def counts() -> tuple[int, int, int]:
    return BrokerSignal.objects.count(), RecoveryCase.objects.count(), AuditEvent.objects.count()


def generation_state(conn) -> str:
    conn.refresh_from_db()
    return CredentialGeneration.objects.get(connection=conn, number=conn.current_generation).state


def test_a_signed_refresh_failure_opens_one_case_and_rejects_the_generation(deliver, nango_connection, mailoutbox):
    conn = nango_connection()
    response = deliver(auth_event(conn, "refresh", success=False, error=DEAD))
    assert response.status_code == 200, response.content
    assert response.json()["outcome"] == "case_opened"
    case = RecoveryCase.objects.get(connection=conn)
    assert (case.state, case.failure_class, case.rejected_generation, case.run_id) == (
        CaseState.AWAITING_OWNER,
        "dead_grant",
        1,
        None,
    )  # the owner was notified on commit (eager Celery)
    assert generation_state(conn) == CredentialGeneration.State.REJECTED
    assert ReconnectRequest.objects.filter(case=case, state=ReconnectRequest.State.ACTIVE).count() == 1
    assert len(mailoutbox) == 1 and case.reference in mailoutbox[0].extra_headers["X-Revive-Case"]
    opened = AuditEvent.objects.get(action="case.opened", case_reference=case.reference)
    assert opened.actor == "broker:nango" and opened.arguments["signal"]["source"] == "nango"


def test_the_same_delivery_twice_has_one_effect(deliver, nango_connection, mailoutbox):
    conn = nango_connection()
    event = auth_event(conn, "refresh", success=False, error=DEAD)
    first, second = deliver(event), deliver(event)
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.json()["duplicate"], second.json()["duplicate"]) == (False, True)
    assert RecoveryCase.objects.filter(connection=conn).count() == 1
    assert BrokerSignal.objects.filter(connection=conn).count() == 1
    assert AuditEvent.objects.filter(action="broker.signal", connection_id=conn.pk).count() == 1
    assert len(mailoutbox) == 1


@pytest.mark.parametrize(
    "signature, reason",
    [
        ("", "missing"),
        ("0" * 64, "mismatch"),
        (sign("another-environments-key", b"{}"), "mismatch"),
        ("not hex at all", "mismatch"),
    ],
)
def test_a_bad_or_missing_signature_is_401_and_records_nothing(deliver, nango_connection, signature, reason):
    conn = nango_connection()
    before = counts()
    response = deliver(auth_event(conn, "refresh", success=False, error=DEAD), signature=signature)
    assert response.status_code == 401
    body = response.json()
    assert (body["code"], body["data"]["reason"]) == ("WEBHOOK_SIGNATURE_INVALID", reason)
    assert counts() == before
    assert generation_state(conn) == CredentialGeneration.State.ISSUED


def test_a_body_changed_after_signing_is_refused(deliver, nango_connection):
    conn = nango_connection()
    raw = json.dumps(auth_event(conn, "refresh", success=False, error=DEAD)).encode()
    tampered = raw.replace(b'"success": false', b'"success": true')
    before = counts()
    assert deliver(None, raw=tampered, signature=sign(SIGNING_KEY, raw)).status_code == 401
    assert counts() == before


def test_no_signing_key_configured_refuses_everything(deliver, nango_connection, settings):
    conn = nango_connection()
    settings.REVIVE_NANGO_WEBHOOK_SIGNING_KEY = ""
    response = deliver(auth_event(conn, "refresh", success=False, error=DEAD), key="")
    assert response.status_code == 401 and response.json()["data"]["reason"] == "no_signing_key"


def test_a_namespace_that_does_not_exist_is_404(deliver, nango_connection):
    conn = nango_connection()
    response = deliver(auth_event(conn, "refresh", success=False, error=DEAD), namespace="acme")
    assert response.status_code == 404 and response.json()["code"] == "NAMESPACE_NOT_FOUND"
    assert BrokerSignal.objects.count() == 0


def test_another_namespace_has_its_own_signing_key_and_sees_only_its_connections(deliver, nango_connection, settings):
    from cases.namespaces import namespace_ensure, qualify

    namespace_ensure(name="acme", actor="test")
    settings.REVIVE_NANGO_WEBHOOK_SIGNING_KEYS = {"acme": "acme-signing-key"}
    default_conn = nango_connection()
    event = auth_event(default_conn, "refresh", success=False, error=DEAD)
    # default's key does not sign acme's webhooks
    assert deliver(event, namespace="acme").status_code == 401
    # acme's webhook naming default's Nango connection is not acme's: recorded, ignored, nothing opened
    ignored = deliver(event, namespace="acme", key="acme-signing-key")
    assert ignored.status_code == 200 and ignored.json()["outcome"] == "connection_not_registered"
    assert not RecoveryCase.objects.exists()
    acme_conn = case_services.connection_create(
        connection_id=qualify("acme", "mailbox"),
        namespace="acme",
        provider="nango",
        upstream_provider="oidc",
        owner_email="ada@acme.example",
        provider_subject="1",
        provider_issuer="http://127.0.0.1:9/idp",
        broker_integration="microsoft-lab",
        broker_connection="acme-nango-1",
        actor="test",
    )
    opened = deliver(
        auth_event(acme_conn, "refresh", success=False, error=DEAD), namespace="acme", key="acme-signing-key"
    )
    assert opened.json()["outcome"] == "case_opened"
    assert RecoveryCase.objects.get().namespace_id == "acme"


def test_an_identity_proof_the_broker_cannot_answer_is_retried_then_failed_visibly(deliver, nango_connection, settings):
    """The proof is an outbox step: Nango unreachable → retried with backoff, then the signal is ``failed`` and on
    the connection's timeline, the row ``failed`` in the admin's outbox list; the generation stays rejected."""
    from cases.models import OutboxItem

    settings.REVIVE_NANGO_URL = "http://127.0.0.1:9"  # nothing listens
    settings.REVIVE_BROKER_TIMEOUT = 2.0
    settings.REVIVE_BROKER_MAX_ATTEMPTS = 2
    conn = nango_connection()
    deliver(auth_event(conn, "refresh", success=False, error=DEAD))
    override = deliver(auth_event(conn, "override", success=True))
    assert override.json()["outcome"] == "identity_proof_pending"
    signal = BrokerSignal.objects.get(connection=conn, kind="auth.override")
    assert (signal.state, signal.outcome) == (BrokerSignal.State.FAILED, "proof_unavailable")
    item = OutboxItem.objects.get(kind="reauth.broker_signal")
    assert (item.state, item.attempts) == (OutboxItem.State.FAILED, 2) and "proof unavailable" in item.last_error
    assert (
        AuditEvent.objects.filter(
            action="broker.signal", connection_id=conn.pk, arguments__outcome="proof_unavailable", outcome="error"
        ).count()
        == 1
    )
    assert generation_state(conn) == CredentialGeneration.State.REJECTED
    assert ReconnectRequest.objects.get(connection=conn).state == ReconnectRequest.State.ACTIVE


def test_bad_bodies_and_methods_get_a_clear_4xx(deliver, client):
    assert deliver(None, raw=b"not json").json()["code"] == "WEBHOOK_BODY_INVALID"
    assert deliver(None, raw=b"[1, 2]").status_code == 400
    response = client.get("/webhooks/nango/default")
    assert (response.status_code, response.json()["code"], response["Allow"]) == (405, "METHOD_NOT_ALLOWED", "POST")


def test_unknown_types_and_unregistered_connections_are_accepted_and_ignored(deliver, nango_connection):
    conn = nango_connection()
    sync = deliver({"from": "nango", "type": "sync", "connectionId": conn.broker_connection, "syncName": "emails"})
    assert (sync.status_code, sync.json()["outcome"]) == (200, "type_not_handled")
    stranger = auth_event(conn, "refresh", success=False, error=DEAD) | {"connectionId": "someone-else"}
    assert deliver(stranger).json()["outcome"] == "connection_not_registered"
    assert RecoveryCase.objects.count() == 0
    assert generation_state(conn) == CredentialGeneration.State.ISSUED


def test_a_transient_refresh_failure_is_on_the_timeline_and_opens_nothing(deliver, nango_connection):
    conn = nango_connection()
    response = deliver(auth_event(conn, "refresh", success=False, error=TRANSIENT))
    assert response.json()["outcome"] == "recorded"
    assert RecoveryCase.objects.filter(connection=conn).count() == 0
    assert generation_state(conn) == CredentialGeneration.State.ISSUED
    event = AuditEvent.objects.get(action="broker.signal", connection_id=conn.pk)
    assert (event.arguments["failure_class"], event.arguments["outcome"]) == ("transient", "recorded")


def test_the_webhook_needs_no_csrf_token_but_the_owner_forms_still_do(nango_connection, nango_settings):
    conn = nango_connection()
    strict = Client(enforce_csrf_checks=True)
    raw = json.dumps(auth_event(conn, "refresh", success=False, error=TRANSIENT)).encode()
    ok = strict.post(
        "/webhooks/nango/default",
        data=raw,
        content_type="application/json",
        HTTP_X_NANGO_HMAC_SHA256=sign(SIGNING_KEY, raw),
    )
    assert ok.status_code == 200
    refused = strict.post("/reconnect/r/00000000-0000-0000-0000-000000000000/start", data={})
    assert refused.status_code == 403 and refused["X-Revive-Code"] == "CSRF_FAILED"


def _parked_run(conn, n: str) -> str:
    run_id = f"run_nango_{conn.pk}_{n}"
    case_services.run_register(
        run_id=run_id,
        runtime=Runtime.LANGGRAPH,
        runtime_ref={"thread_id": run_id},
        workflow_name="Nightly executive briefing",
        actor="test",
    )
    return run_id


def test_a_worker_parks_at_its_next_begin_and_joins_the_proactive_case(deliver, nango_connection):
    conn = nango_connection()
    deliver(auth_event(conn, "refresh", success=False, error=DEAD))
    case = RecoveryCase.objects.get(connection=conn)
    run_id = _parked_run(conn, "a")
    begun = case_services.action_begin(
        run_id=run_id, checkpoint_id="05", connection_id=conn.pk, action_key="send_exec_05", generation=1, actor="test"
    )
    assert (begun.decision, begun.case_reference) == ("parked", case.reference)
    case.refresh_from_db()
    assert case.run_id == run_id and case.checkpoint.checkpoint_id == "05" and case.action.action_key == "send_exec_05"


def test_the_owner_notice_of_a_case_no_run_has_joined_fails_visibly(deliver, nango_connection, monkeypatch):
    """The owner's e-mail keeps failing for a case a broker opened: its exhaustion is audited, with no run."""
    from cases import outbox
    from cases.models import OutboxItem
    from reauth import notifications
    from reauth import services as reauth_services

    def broken(message, *, link):
        raise smtplib.SMTPServerDisconnected("gone")

    monkeypatch.setattr(notifications, "send_email", broken)
    conn = nango_connection()
    assert deliver(auth_event(conn, "refresh", success=False, error=DEAD)).status_code == 200
    case = RecoveryCase.objects.get(connection=conn)
    item = OutboxItem.objects.get(kind=reauth_services.NOTIFY_OWNER, case=case)
    for _ in range(item.max_attempts):  # the first attempt may have run on commit: the spare one finds it failed
        outbox.outbox_dispatch(item.pk)
    assert OutboxItem.objects.get(pk=item.pk).state == OutboxItem.State.FAILED
    exhausted = AuditEvent.objects.get(action="reconnect.notify_exhausted", case_id=case.pk)
    assert case.run_id is None and (exhausted.run_id, exhausted.connection_id) == ("", conn.pk)


def test_a_later_success_for_the_same_generation_closes_the_case_as_recovered(deliver, nango_connection):
    conn = nango_connection()
    deliver(auth_event(conn, "refresh", success=False, error=DEAD))
    case = RecoveryCase.objects.get(connection=conn)
    response = deliver(auth_event(conn, "refresh", success=True))
    assert response.json()["outcome"] == "case_recovered"
    case.refresh_from_db()
    assert case.state == CaseState.CLOSED
    assert generation_state(conn) == CredentialGeneration.State.ISSUED and conn.current_generation == 1
    closed = AuditEvent.objects.get(action="case.closed", case_reference=case.reference)
    assert closed.actor == "broker:nango" and closed.arguments["recovered_by"] == "provider"
    assert not ReconnectRequest.objects.filter(case=case, state=ReconnectRequest.State.ACTIVE).exists()
    begun = case_services.action_begin(
        run_id=_parked_run(conn, "b"),
        checkpoint_id="05",
        connection_id=conn.pk,
        action_key="send_exec_05",
        generation=1,
        actor="test",
    )
    assert begun.decision == "execute"
    # The same failure body again, after the recovery, is a new event: a new case.
    assert deliver(auth_event(conn, "refresh", success=False, error=DEAD)).json()["outcome"] == "case_opened"
    assert RecoveryCase.objects.filter(connection=conn).count() == 2


def test_a_success_with_runs_parked_releases_them_at_the_same_generation(deliver, nango_connection):
    conn = nango_connection()
    deliver(auth_event(conn, "refresh", success=False, error=DEAD))
    run_id = _parked_run(conn, "c")
    assert (
        case_services.action_begin(
            run_id=run_id,
            checkpoint_id="05",
            connection_id=conn.pk,
            action_key="send_exec_05",
            generation=1,
            actor="test",
        ).decision
        == "parked"
    )
    deliver(auth_event(conn, "refresh", success=True))
    case = RecoveryCase.objects.get(connection=conn)
    assert case.resumed_generation == 1 and case.state not in (CaseState.OPENED, CaseState.AWAITING_OWNER)
    # handed to the pipeline like any reauthorized case: its reconcile-and-release step is owed, then done
    from cases.models import OutboxItem

    assert OutboxItem.objects.get(kind=case_services.RECONCILE_CASE, case=case).state == OutboxItem.State.DONE
    # ... which released the parked run and owed it a resume delivery (this test's runtime has no endpoint, so
    # that delivery's outcome is the pipeline's own business)
    assert OutboxItem.objects.filter(kind=case_services.RESUME_RUN, case=case, run_id=run_id).exists()
    conn.refresh_from_db()
    assert conn.current_generation == 1


def test_revives_signature_is_the_one_nangos_node_sdk_verifies(tmp_path):
    """``@nangohq/node``'s own ``verifyIncomingWebhookRequest`` from npm checks what Revive and the stand-in sign."""
    raw = json.dumps(
        {
            "from": "nango",
            "type": "auth",
            "operation": "refresh",
            "connectionId": "c-1",
            "providerConfigKey": "microsoft",
            "success": False,
            "error": DEAD,
        }
    ).encode()
    assert nango.signature(SIGNING_KEY, raw) == sign(SIGNING_KEY, raw)
    script = """
const { Nango } = require('@nangohq/node');
const [key, body, signature] = process.argv.slice(1);
const nango = new Nango({ secretKey: 'unused-api-key', webhookSigningKey: key });
const good = nango.verifyIncomingWebhookRequest(body, { 'X-Nango-Hmac-Sha256': signature });
const tampered = nango.verifyIncomingWebhookRequest(body + ' ', { 'X-Nango-Hmac-Sha256': signature });
const otherKey = new Nango({ secretKey: 'x', webhookSigningKey: key + 'x' }).verifyIncomingWebhookRequest(body, { 'x-nango-hmac-sha256': signature });
console.log(JSON.stringify({ good, tampered, otherKey }));
"""
    proc = subprocess.run(
        ["node", "-e", script, SIGNING_KEY, raw.decode(), nango.signature(SIGNING_KEY, raw)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"good": True, "tampered": False, "otherKey": False}
    assert nango.signature_valid(SIGNING_KEY, raw, nango.signature(SIGNING_KEY, raw))
    assert not nango.signature_valid(SIGNING_KEY, raw + b" ", nango.signature(SIGNING_KEY, raw))


def test_without_an_id_token_the_identity_comes_from_the_issuers_userinfo(
    lab_idp, idp_browser, nango_port, nango_connection
):
    """The fallback: the provider gave no ID token, so the new access token asks the recorded issuer's userinfo."""
    import base64
    import hashlib
    import secrets
    from urllib.parse import parse_qs, urlencode, urlsplit

    import httpx

    from reauth.brokers import identity

    issuer = httpx.get(f"{lab_idp.url}/.well-known/openid-configuration", timeout=10).json()["issuer"]
    conn = nango_connection(subject=lab_idp.users["right"]["sub"], issuer=issuer)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    redirect_uri = f"http://127.0.0.1:{nango_port}/oauth/callback"
    callback = idp_browser.authorize(
        f"{lab_idp.url}/identity/o/authorize?"
        + urlencode(
            {
                "response_type": "code",
                "client_id": lab_idp.client_id,
                "redirect_uri": redirect_uri,
                "state": "s",
                "scope": "openid profile email",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        ),
        "ada",
    )
    code = parse_qs(urlsplit(callback).query)["code"][0]
    access = lab_idp.token(
        grant_type="authorization_code", code=code, redirect_uri=redirect_uri, code_verifier=verifier
    ).json()["access_token"]
    presented, how = identity.identity_from_credentials(conn, {"type": "OAUTH2", "access_token": access, "raw": {}})
    assert how == "userinfo" and presented.subject == lab_idp.users["right"]["sub"]
    assert identity.identity_from_credentials(conn, {"access_token": "not-a-token", "raw": {}}) == (
        identity.ProviderIdentity(),
        "none",
    )


def test_the_console_shows_a_case_no_run_has_joined_yet(deliver, nango_connection, admin_client):
    conn = nango_connection()
    deliver(auth_event(conn, "refresh", success=False, error=DEAD))
    case = RecoveryCase.objects.get(connection=conn)
    page = admin_client.get(f"/admin/cases/recoverycase/{case.pk}/change/")
    assert page.status_code == 200
    assert "no run blocked yet" in page.content.decode() and case.reference in page.content.decode()
    assert admin_client.get("/admin/cases/recoverycase/").status_code == 200
