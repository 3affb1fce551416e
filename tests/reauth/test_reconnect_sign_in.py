"""Sign-in through django-allauth against the real lab identity provider (a separate process), with Revive in this
process (Django's test client, so its logs and on-commit work are visible here).

The same identity consumes the request, advances the generation by exactly one and hands the grant to custody;
another identity is refused, audited with both identities, and leaves nothing behind; five refusals lock the link.
No token value reaches the database (outside custody), the audit log, the logs or a page.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import pytest
from allauth.account.models import EmailAddress
from allauth.socialaccount.models import SocialAccount, SocialToken
from django.contrib.auth import get_user_model

from audit.models import AuditEvent
from cases.models import CaseState, Connection, CredentialGeneration, OutboxItem
from classifier import FailureClass, classify
from reauth.custody import get_custody
from reauth.models import CustodyGrant, ReconnectRequest

from .conftest import ADA_OID, CONTOSO_TID, FABRIKAM_TID, tables_containing

pytestmark = pytest.mark.django_db


class Owner:
    """The owner's browser against Revive (test client) and the lab provider (its own HTTP client)."""

    def __init__(self, client, idp_browser, link: str):
        self.client = client
        self.idp = idp_browser
        self.pages: list[str] = []
        response = client.get(urlsplit(link).path)
        assert response.status_code == 302
        self.landing = response["Location"]
        self.public_id = self.landing.split("/")[3]
        self.pages.append(client.get(self.landing).content.decode())

    def reconnect_as(self, username: str):
        start = self.client.post(f"/reconnect/r/{self.public_id}/start")
        assert start.status_code == 302, start.content[:300]
        callback = urlsplit(self.idp.authorize(start["Location"], username))
        assert callback.netloc == "testserver" and callback.path == "/accounts/oidc/lab-idp/login/callback/"
        response = self.client.get(f"{callback.path}?{callback.query}")
        assert response.status_code in (302, 400, 403, 410, 423), response.content[:500]
        if response.status_code == 302:
            response = self.client.get(response["Location"])
        self.pages.append(response.content.decode())
        return response


def assert_nothing_about_owners_kept():
    assert get_user_model().objects.count() == 0
    assert SocialAccount.objects.count() == 0
    assert SocialToken.objects.count() == 0
    assert EmailAddress.objects.count() == 0


def test_the_right_account_reconnects(
    client,
    owner_case,
    issue_link,
    lab_sign_in,
    idp_browser,
    caplog,
    capfd,
    monkeypatch,
    django_capture_on_commit_callbacks,
):
    caplog.set_level(logging.DEBUG)
    oc = owner_case()
    link, link_token = issue_link(oc)
    owner = Owner(client, idp_browser, link)
    with django_capture_on_commit_callbacks() as callbacks:
        response = owner.reconnect_as("ada")

    assert response.status_code == 200
    html = response.content.decode()
    assert "reconnected" in html and 'data-generation="2"' in html and "1 → 2" in html
    conn = Connection.objects.get(pk=oc.connection_id)
    assert conn.current_generation == 2
    assert list(CredentialGeneration.objects.filter(connection=conn).values_list("number", "state")) == [
        (1, "superseded"),
        (2, "issued"),
    ]
    case = oc.refresh()
    assert case.state == CaseState.REAUTHORIZED and case.resumed_generation == 2
    req = oc.request
    assert req.state == ReconnectRequest.State.CONSUMED and req.consumed_at is not None
    # One hand-over to the pipeline, owed in the reconnect's transaction and dispatched on commit.
    owed = OutboxItem.objects.get(kind="case.reconcile")
    assert (owed.case_id, owed.payload, owed.state) == (case.pk, {"case_id": case.pk, "generation": 2}, "pending")
    assert len(callbacks) == 1
    assert_nothing_about_owners_kept()

    consumed = AuditEvent.objects.get(action="reconnect.consumed", entity_id=str(req.public_id))
    assert (
        consumed.arguments["identity"]["tenant"] == CONTOSO_TID and consumed.arguments["identity"]["subject"] == ADA_OID
    )
    assert AuditEvent.objects.filter(action="lease.advanced", connection_id=conn.pk).count() == 1
    stored = AuditEvent.objects.get(action="credential.custody_stored", connection_id=conn.pk)
    assert (
        stored.after["custody"] == "database" and stored.after["generation"] == 2 and stored.after["renewable"] is True
    )

    grant = get_custody().load(connection_id=conn.pk)
    assert grant.access_token and grant.refresh_token
    secrets_ = [grant.access_token, grant.refresh_token, link_token]
    row = CustodyGrant.objects.get(connection=conn)
    assert (
        row.generation == 2 and grant.access_token not in row.ciphertext and grant.refresh_token not in row.ciphertext
    )
    assert tables_containing(secrets_) == []
    audit_text = str(list(AuditEvent.objects.values_list("before", "after", "arguments", "actor")))
    assert not any(s in audit_text for s in secrets_)
    for page in owner.pages:
        assert not any(s in page for s in secrets_)
    captured = capfd.readouterr()
    logs = caplog.text + captured.out + captured.err
    assert not any(s in logs for s in [grant.access_token, grant.refresh_token])
    assert repr(grant).count("redacted") == 2

    from cases import outbox

    sent: list[int] = []
    monkeypatch.setattr(outbox, "_enqueue", lambda item_ids, countdown=None: sent.extend(item_ids))
    callbacks[0]()
    assert sent == [owed.pk]  # its dispatch, after commit

    # The grant is live at the provider, rotates, and once revoked answers invalid_grant -- a dead grant for Revive.
    refreshed = lab_sign_in.token(grant_type="refresh_token", refresh_token=grant.refresh_token)
    assert refreshed.status_code == 200 and refreshed.json()["refresh_token"] != grant.refresh_token
    reused = lab_sign_in.token(grant_type="refresh_token", refresh_token=grant.refresh_token)
    assert (reused.status_code, reused.json()) == (400, {"error": "invalid_grant"})
    new_refresh = refreshed.json()["refresh_token"]
    assert lab_sign_in.revoke(new_refresh).status_code == 200
    revoked = lab_sign_in.token(grant_type="refresh_token", refresh_token=new_refresh)
    assert (revoked.status_code, revoked.json()) == (400, {"error": "invalid_grant"})
    assert classify(provider="oidc", status=400, body=revoked.json()).failure_class == FailureClass.DEAD_GRANT


@pytest.mark.parametrize(
    "username, mismatched, tenant",
    [
        ("mallory", ["subject"], CONTOSO_TID),
        ("ada-fabrikam", ["tenant"], FABRIKAM_TID),
    ],
)
def test_another_account_is_refused_and_the_link_stays_usable(
    client, owner_case, issue_link, lab_sign_in, idp_browser, caplog, username, mismatched, tenant
):
    oc = owner_case()
    link, link_token = issue_link(oc)
    owner = Owner(client, idp_browser, link)
    response = owner.reconnect_as(username)

    assert response.status_code == 403 and response["X-Revive-Code"] == "RECONNECT_IDENTITY_MISMATCH"
    html = response.content.decode()
    user = lab_sign_in.users["wrong" if username == "mallory" else "other_tenant"]
    if mismatched == ["subject"]:  # another account: the page names it
        assert f"You signed in as <strong>{user['email']}</strong>" in html
        assert f'in tenant <span class="mono">{tenant}</span>' in html
    else:  # the same person in another tenant: the page names the tenant
        assert f'You signed in to tenant <span class="mono">{tenant}</span>' in html
    assert "This connection belongs to <strong>a•••@contoso.example</strong>" in html
    assert "4 attempts left" in html
    assert Connection.objects.get(pk=oc.connection_id).current_generation == 1
    assert oc.refresh().state in (CaseState.OPENED, CaseState.AWAITING_OWNER)
    req = oc.request
    assert (req.state, req.refusals) == (ReconnectRequest.State.ACTIVE, 1)
    assert CustodyGrant.objects.count() == 0
    assert_nothing_about_owners_kept()
    event = AuditEvent.objects.get(action="reconnect.identity_mismatch", entity_id=str(req.public_id))
    assert event.outcome == "refused" and event.arguments["mismatched"] == mismatched
    assert event.arguments["expected"] == {"subject": ADA_OID, "tenant": CONTOSO_TID, "label": "ada@contoso.example"}
    assert event.arguments["presented"]["tenant"] == tenant and event.arguments["presented"]["label"] == user["email"]
    assert not any(k in str(event.arguments).lower() for k in ("access_token", "refresh_token", "id_token"))
    assert link_token not in caplog.text

    # The link is still usable: the right account now succeeds.
    assert owner.reconnect_as("ada").status_code == 200
    assert Connection.objects.get(pk=oc.connection_id).current_generation == 2


def test_five_refusals_lock_the_link(client, owner_case, issue_link, lab_sign_in, idp_browser, settings):
    assert settings.REVIVE_RECONNECT_MAX_REFUSALS == 5
    oc = owner_case()
    link, _ = issue_link(oc)
    owner = Owner(client, idp_browser, link)
    for attempt in range(1, 5):
        response = owner.reconnect_as("mallory")
        assert response["X-Revive-Code"] == "RECONNECT_IDENTITY_MISMATCH"
        assert f"{5 - attempt} attempt" in response.content.decode()
    response = owner.reconnect_as("ada-fabrikam")
    assert response.status_code == 423 and response["X-Revive-Code"] == "RECONNECT_LINK_LOCKED"
    assert "now locked" in response.content.decode() and "<button" not in response.content.decode()
    req = oc.request
    assert (req.state, req.refusals) == (ReconnectRequest.State.LOCKED, 5)
    assert AuditEvent.objects.filter(action="reconnect.locked", entity_id=str(req.public_id)).count() == 1

    # Locked means locked: the right account, the button and the link are all refused now.
    assert client.post(f"/reconnect/r/{owner.public_id}/start")["X-Revive-Code"] == "RECONNECT_LINK_LOCKED"
    assert client.get(urlsplit(link).path)["X-Revive-Code"] == "RECONNECT_LINK_LOCKED"
    assert Connection.objects.get(pk=oc.connection_id).current_generation == 1


def test_an_oidc_connection_matches_issuer_and_subject(client, owner_case, issue_link, lab_sign_in, idp_browser):
    ada = lab_sign_in.users["right"]
    oc = owner_case(provider="oidc", subject=ada["sub"], tenant="", issuer=lab_sign_in.url + "/")
    link, _ = issue_link(oc)
    owner = Owner(client, idp_browser, link)
    refused = owner.reconnect_as("mallory")
    assert refused["X-Revive-Code"] == "RECONNECT_IDENTITY_MISMATCH"
    event = AuditEvent.objects.get(action="reconnect.identity_mismatch", entity_id=owner.public_id)
    assert event.arguments["mismatched"] == ["subject"]
    assert event.arguments["presented"]["issuer"] == lab_sign_in.url
    assert owner.reconnect_as("ada").status_code == 200
    assert Connection.objects.get(pk=oc.connection_id).current_generation == 2


def test_a_replayed_callback_changes_nothing(client, owner_case, issue_link, lab_sign_in, idp_browser):
    oc = owner_case()
    link, _ = issue_link(oc)
    owner = Owner(client, idp_browser, link)
    start = client.post(f"/reconnect/r/{owner.public_id}/start")
    callback = urlsplit(idp_browser.authorize(start["Location"], "ada"))
    assert client.get(f"{callback.path}?{callback.query}").status_code == 302
    replay = client.get(f"{callback.path}?{callback.query}")
    assert replay.status_code == 400 and replay["X-Revive-Code"] == "RECONNECT_SIGN_IN_FAILED"
    assert Connection.objects.get(pk=oc.connection_id).current_generation == 2


def test_a_callback_in_another_browser_is_refused(client, owner_case, issue_link, lab_sign_in, idp_browser):
    from django.test import Client

    oc = owner_case()
    link, _ = issue_link(oc)
    owner = Owner(client, idp_browser, link)
    start = client.post(f"/reconnect/r/{owner.public_id}/start")
    callback = urlsplit(idp_browser.authorize(start["Location"], "ada"))
    attacker = Client()
    response = attacker.get(f"{callback.path}?{callback.query}")
    assert (
        response.status_code == 400 and response["X-Revive-Code"] == "RECONNECT_SIGN_IN_FAILED"
    )  # the state lives in the owner's session
    assert Connection.objects.get(pk=oc.connection_id).current_generation == 1
    assert oc.request.state == ReconnectRequest.State.ACTIVE


def test_the_sign_in_token_never_reaches_allauths_tables(settings):
    assert settings.SOCIALACCOUNT_STORE_TOKENS is False
    assert settings.SOCIALACCOUNT_ADAPTER == "reauth.adapter.ReconnectSocialAccountAdapter"
    for app in settings.SOCIALACCOUNT_PROVIDERS["openid_connect"]["APPS"]:
        assert app["settings"]["oauth_pkce_enabled"] is True
    assert settings.SOCIALACCOUNT_PROVIDERS["openid_connect"]["OAUTH_PKCE_ENABLED"] is True


def test_seeding_the_lab_provider_again_changes_nobody(lab_idp):
    import json
    import os
    import subprocess
    import sys

    from .conftest import LAB_PASSWORD, REPO_ROOT

    home = lab_idp.log.parent
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "lab.idp.settings",
        "REVIVE_VAR_DIR": str(home),
        "REVIVE_IDP_DATABASE_URL": f"sqlite:///{home / 'idp.sqlite3'}",
        "REVIVE_IDP_FAST_PASSWORDS": "1",
    }
    again = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "manage.py"),
            "idp_seed",
            "--client-id",
            lab_idp.client_id,
            "--client-secret",
            lab_idp.client_secret,
            "--password",
            LAB_PASSWORD,
            "--redirect-uri",
            f"http://127.0.0.1:{lab_idp.revive_port}/accounts/oidc/lab-idp/login/callback/",
            "--redirect-uri",
            "http://testserver/accounts/oidc/lab-idp/login/callback/",
        ],
        env=env,
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(again.stdout)["users"] == lab_idp.users
