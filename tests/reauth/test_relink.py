"""The owner's re-link of an Auth0 Token Vault connected account (``reauth.relink``), against the local stand-in
of Token Vault and the My Account API's Connected Accounts, with its upstream ("Google") behind it.

Revive proves which upstream account was linked (a Token Vault exchange, then the upstream's userinfo), advances
the generation only for the recorded account, deletes a wrongly linked account at Auth0, and stores no upstream
token anywhere. In Chromium (JavaScript off) as the owner does it, and through the test client for the edges.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from audit.models import AuditEvent
from cases import services as case_services
from cases.models import CaseState, Connection, Runtime
from lab.token_vault_standin import UPSTREAM_ACCOUNTS
from lab.world import token_vault_settings
from reauth.custody import Grant, get_custody
from reauth.models import ReconnectRequest

from .conftest import OwnerCase, link_in, tables_containing

USER, CONNECTION = "auth0|ada", "google-oauth2"


@pytest.fixture
def vault(token_vault_standin):
    return token_vault_standin


@pytest.fixture
def vault_case(settings, vault):
    """A Token Vault connection whose upstream grant is gone: the exchange fails and the run parks."""
    settings.REVIVE_AUTH0_TOKEN_VAULT = token_vault_settings(vault)
    n = len(vault.sessions)
    conn_id, run_id = f"conn_vault_{n}", f"run_vault_{n}"
    case_services.connection_create(
        connection_id=conn_id,
        provider="auth0_token_vault",
        owner_email="ada@contoso.example",
        provider_subject=UPSTREAM_ACCOUNTS["ada"]["sub"],
        provider_tenant=CONNECTION,
        provider_issuer=vault.upstream_issuer,
        display_name="Ops mailbox",
        actor="test",
    )
    session = vault.sign_in(USER, connection=CONNECTION, upstream="ada")
    get_custody().store(connection_id=conn_id, generation=1, grant=Grant(access_token="", refresh_token=session))
    vault.revoke_upstream(USER, CONNECTION)
    case_services.run_register(
        run_id=run_id,
        runtime=Runtime.LANGGRAPH,
        runtime_ref={"thread_id": run_id},
        workflow_name="Nightly executive briefing",
        actor="test",
    )
    case_services.action_begin(
        run_id=run_id, checkpoint_id="05", connection_id=conn_id, action_key="send_exec_05", generation=1, actor="test"
    )
    refused = httpx.post(
        f"{vault.url}/oauth/token",
        data={
            "grant_type": "urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token",
            "client_id": vault.client_id,
            "client_secret": vault.client_secret,
            "subject_token": session,
            "subject_token_type": "urn:ietf:params:oauth:token-type:refresh_token",
            "requested_token_type": "http://auth0.com/oauth/token-type/federated-connection-access-token",
            "connection": CONNECTION,
        },
    )
    answer = case_services.action_fail(
        run_id=run_id,
        action_key="send_exec_05",
        generation=1,
        actor="test",
        provider_error={"status": refused.status_code, "body": refused.json()},
    )
    assert answer.outcome == "parked" and answer.failure_class == "relink_required"
    from cases.models import RecoveryCase

    return OwnerCase(
        case=RecoveryCase.objects.get(reference=answer.case_reference), connection_id=conn_id, run_id=run_id
    )


def upstream_tokens(vault) -> list[str]:
    with vault._lock:
        return list(vault.upstream_tokens)


# --------------------------------------------------------------------------- through the test client


def relink_until_return(client, link: str, vault, account: str):
    """Open the link, press the button, pick ``account`` at the upstream; return where it sends the browser back
    (and the landing page's HTML)."""
    landing = client.get(urlsplit(link).path)["Location"]
    page = client.get(landing).content.decode()
    start = client.post(f"{landing}start")
    connect = urlsplit(start["Location"])
    assert start.status_code == 302 and f"{connect.scheme}://{connect.netloc}" == vault.url
    ticket = parse_qs(connect.query)["ticket"][0]
    back = httpx.post(f"{vault.url}/upstream/authorize", data={"ticket": ticket, "account": account})
    return urlsplit(back.headers["location"]), page


@pytest.mark.django_db
def test_relink_with_the_recorded_account_advances_the_generation_and_keeps_no_upstream_token(
    client, vault_case, issue_link, vault
):
    link, link_token = issue_link(vault_case)
    callback, page = relink_until_return(client, link, vault, "ada")
    assert "Re-link the connected account" in page and "no longer holds a working grant" in page
    assert callback.path.endswith("/relinked") and "connect_code" in callback.query
    done = client.get(f"{callback.path}?{callback.query}")

    assert done.status_code == 302 and done["Location"].endswith("/done")
    assert Connection.objects.get(pk=vault_case.connection_id).current_generation == 2
    assert vault_case.refresh().state not in (CaseState.OPENED, CaseState.AWAITING_OWNER)
    linked = vault.connected(USER, CONNECTION)
    assert linked.alive and linked.upstream == "ada"
    consumed = AuditEvent.objects.get(action="reconnect.consumed", entity_id=str(vault_case.request.public_id))
    assert consumed.arguments["identity"] == {
        "issuer": vault.upstream_issuer,
        "subject": UPSTREAM_ACCOUNTS["ada"]["sub"],
        "label": "ada@contoso.example",
    }
    tokens = upstream_tokens(vault)
    assert tokens  # the proof used the exchange...
    assert (
        tables_containing(tokens + [link_token], exclude=()) == []
    )  # ...and no upstream token was kept, custody included
    audit_text = str(list(AuditEvent.objects.values_list("before", "after", "arguments")))
    assert not any(t in audit_text for t in tokens)


@pytest.mark.django_db
def test_relink_with_another_account_is_refused_and_the_wrong_link_removed(client, vault_case, issue_link, vault):
    back, _ = relink_until_return(client, issue_link(vault_case)[0], vault, "mallory")

    refused = client.get(f"{back.path}?{back.query}")

    assert refused.status_code == 302 and refused["Location"].endswith("/refused")
    page = client.get(refused["Location"])
    assert page.status_code == 403 and page["X-Revive-Code"] == "RECONNECT_IDENTITY_MISMATCH"
    assert "mallory@contoso.example" in page.content.decode()
    assert Connection.objects.get(pk=vault_case.connection_id).current_generation == 1
    assert vault.connected(USER, CONNECTION) is None  # Revive deleted the wrongly linked account at Auth0
    event = AuditEvent.objects.get(action="reconnect.identity_mismatch", entity_id=str(vault_case.request.public_id))
    assert event.arguments["presented"]["subject"] == UPSTREAM_ACCOUNTS["mallory"]["sub"]
    assert vault_case.request.state == ReconnectRequest.State.ACTIVE  # the link stays usable


@pytest.mark.django_db
@pytest.mark.parametrize("tamper", ["state", "missing_code", "replay", "provider_error"])
def test_a_tampered_or_replayed_return_changes_nothing(client, vault_case, issue_link, vault, tamper):
    back, _ = relink_until_return(client, issue_link(vault_case)[0], vault, "ada")
    params = {k: v[0] for k, v in parse_qs(back.query).items()}
    if tamper == "state":
        params["state"] = "forged"
    elif tamper == "missing_code":
        params.pop("connect_code")
    elif tamper == "provider_error":
        params = {"error": "access_denied", "state": params["state"]}
    elif tamper == "replay":
        assert client.get(back.path, params).status_code == 302  # the real return, consumed

    response = client.get(back.path, params)

    assert response.status_code in (400, 410), response.content[:300]
    assert response["X-Revive-Code"] in (
        "RECONNECT_SIGN_IN_FAILED",
        "RECONNECT_SIGN_IN_CANCELLED",
        "RECONNECT_LINK_USED",
    )
    expected_generation = 2 if tamper == "replay" else 1
    assert Connection.objects.get(pk=vault_case.connection_id).current_generation == expected_generation


@pytest.mark.django_db
def test_relink_needs_token_vault_configured(client, vault_case, issue_link, settings):
    settings.REVIVE_AUTH0_TOKEN_VAULT = {}
    link, _ = issue_link(vault_case)
    landing = client.get(urlsplit(link).path)["Location"]
    client.get(landing)

    response = client.post(f"{landing}start")

    assert response.status_code == 503 and response["X-Revive-Code"] == "RECONNECT_PROVIDER_NOT_CONFIGURED"


# --------------------------------------------------------------------------- in Chromium


@pytest.fixture
def owner_page(chromium):
    context = chromium.new_context(java_script_enabled=False, viewport={"width": 390, "height": 844})
    page = context.new_page()
    yield page
    context.close()


def browser_link(live_server, mailoutbox, settings) -> tuple[str, str]:
    """The e-mailed link (sent on commit, as the case opened), pointed at the live server."""
    settings.PUBLIC_BASE_URL = live_server.url
    link, token = link_in(mailoutbox[-1])
    return live_server.url + urlsplit(link).path, token


def relink_in_browser(page, link: str, account_email: str) -> None:
    page.goto(link)
    assert page.get_by_role("heading", level=1).inner_text().startswith("Reconnect your Auth0 Token Vault account")
    page.get_by_role("button", name="Re-link the connected account").click()
    page.get_by_role("button", name=account_email).click()


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_owner_relinks_the_right_account_in_a_browser(
    owner_page, live_server, settings, vault_case, mailoutbox, vault, tmp_path
):
    link, _ = browser_link(live_server, mailoutbox, settings)

    relink_in_browser(owner_page, link, "ada@contoso.example")

    owner_page.wait_for_url(re.compile(r".*/reconnect/r/[0-9a-f-]{36}/done$"))
    owner_page.screenshot(path=str(tmp_path / "relink-done.png"), full_page=True)
    assert owner_page.get_by_role("heading", level=1).inner_text() == "You're reconnected — thank you"
    assert Connection.objects.get(pk=vault_case.connection_id).current_generation == 2
    assert vault.connected(USER, CONNECTION).upstream == "ada"


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_wrong_upstream_account_is_refused_in_a_browser_then_the_right_one_relinks(
    owner_page, live_server, settings, vault_case, mailoutbox, vault
):
    link, _ = browser_link(live_server, mailoutbox, settings)

    relink_in_browser(owner_page, link, "mallory@contoso.example")

    owner_page.wait_for_url(re.compile(r".*/reconnect/r/[0-9a-f-]{36}/refused$"))
    assert owner_page.get_by_role("heading", level=1).inner_text() == "That account does not own this connection"
    assert "mallory@contoso.example" in owner_page.content()
    assert Connection.objects.get(pk=vault_case.connection_id).current_generation == 1
    assert vault.connected(USER, CONNECTION) is None

    owner_page.get_by_role("button").first.click()  # "Sign in as …": starts the re-link again
    owner_page.get_by_role("button", name="ada@contoso.example").click()

    owner_page.wait_for_url(re.compile(r".*/reconnect/r/[0-9a-f-]{36}/done$"))
    assert Connection.objects.get(pk=vault_case.connection_id).current_generation == 2
