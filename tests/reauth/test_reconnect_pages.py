"""The hosted pages: what they show, what they never show, and a 4xx page with a stable code for every bad input."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent
from cases import services as case_services
from reauth.models import ReconnectRequest

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sign_in_configured")]


def path_of(link: str) -> str:
    return urlsplit(link).path


def open_link(client, link: str, **extra) -> str:
    response = client.get(path_of(link), extra or None)
    assert response.status_code == 302, response.content[:300]
    match = re.fullmatch(r"/reconnect/r/([0-9a-f-]{36})/", response["Location"])
    assert match, response["Location"]
    return match.group(1)


def assert_problem(response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.content[:400])
    assert response["X-Revive-Code"] == code
    html = response.content.decode()
    assert f'<meta name="revive-code" content="{code}">' in html
    assert "<script" not in html


def test_the_link_binds_the_session_and_drops_the_token_from_the_address(client, owner_case, issue_link):
    oc = owner_case()
    link, token = issue_link(oc)
    response = client.get(path_of(link))
    assert response.status_code == 302
    assert token not in response["Location"]
    assert response["Referrer-Policy"] == "same-origin"
    assert "no-store" in response["Cache-Control"]
    assert open_link(client, link) == str(oc.request.public_id)


def test_the_landing_page_says_what_stopped_and_offers_one_button(client, owner_case, issue_link):
    oc = owner_case()
    link, token = issue_link(oc)
    public_id = open_link(client, link)
    response = client.get(f"/reconnect/r/{public_id}/")
    assert response.status_code == 200
    html = response.content.decode()
    for fact in [
        "Nightly executive briefing",
        oc.run_id,
        "05 / prepare brief",
        "send_exec_05",
        "Microsoft Entra ID",
        "AADSTS700082",
        "a•••@contoso.example",
        "3f6b1c2e-8d4a-4f1b-9c7e-2a5d0e9b1c01",
        oc.case.reference,
        "UTC",
    ]:
        assert fact in html, fact
    assert re.search(r"expires in (59|60) minutes", html.replace("\xa0", " "))
    assert "ada@contoso.example" not in html  # the expected account is masked
    forms = re.findall(r"<form[^>]*>", html)
    assert forms == [f'<form class="action" method="post" action="/reconnect/r/{public_id}/start">']
    assert html.count("<button") == 1 and 'name="csrfmiddlewaretoken"' in html
    assert token not in html and "rvr_" not in html and "<script" not in html
    assert '<html lang="en">' in html and 'name="viewport"' in html and "<main" in html and "<h1" in html
    assert "default-src 'none'" in response["Content-Security-Policy"]
    assert response["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize(
    "path", ["/reconnect/r/{public_id}/", "/reconnect/r/{public_id}/done", "/reconnect/r/{public_id}/refused"]
)
def test_pages_need_the_session_that_opened_the_link(client, owner_case, issue_link, path):
    oc = owner_case()
    issue_link(oc)
    response = client.get(path.format(public_id=oc.request.public_id))
    assert_problem(response, 403, "RECONNECT_SESSION_REQUIRED")


def test_an_expired_link_shows_the_expired_page(client, owner_case, issue_link):
    oc = owner_case()
    link, _ = issue_link(oc)
    ReconnectRequest.objects.filter(pk=oc.request.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    response = client.get(path_of(link))
    assert_problem(response, 410, "RECONNECT_LINK_EXPIRED")
    assert "This link has expired" in response.content.decode()


def test_a_link_that_expires_while_the_page_is_open_is_refused_at_the_button(client, owner_case, issue_link):
    oc = owner_case()
    link, _ = issue_link(oc)
    public_id = open_link(client, link)
    ReconnectRequest.objects.filter(pk=oc.request.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert_problem(client.post(f"/reconnect/r/{public_id}/start"), 410, "RECONNECT_LINK_EXPIRED")
    assert_problem(client.get(f"/reconnect/r/{public_id}/"), 410, "RECONNECT_LINK_EXPIRED")


def test_a_reused_link_shows_the_used_page(client, owner_case, issue_link):
    from reauth.custody import Grant
    from reauth.identity import ProviderIdentity
    from reauth.services import reconnect_request_complete

    from .conftest import ADA_OID, CONTOSO_TID

    oc = owner_case()
    link, _ = issue_link(oc)
    reconnect_request_complete(
        public_id=oc.request.public_id,
        presented=ProviderIdentity(subject=ADA_OID, tenant=CONTOSO_TID),
        grant=Grant(access_token="at-test-1"),
        actor="owner:test",
    )
    response = client.get(path_of(link))
    assert_problem(response, 410, "RECONNECT_LINK_USED")
    assert "already been used" in response.content.decode()


def test_a_revoked_link_shows_the_revoked_page(client, owner_case, issue_link):
    from reauth.services import reconnect_request_resend

    oc = owner_case()
    link, _ = issue_link(oc)
    reconnect_request_resend(public_id=oc.request.public_id, actor="operator:ops")
    response = client.get(path_of(link))
    assert_problem(response, 410, "RECONNECT_LINK_REVOKED")
    assert "newer link" in response.content.decode()


def test_a_link_whose_case_moved_on_shows_the_revoked_page(client, owner_case, issue_link):
    oc = owner_case()
    link, _ = issue_link(oc)
    case_services.case_reauthorize(case_id=oc.case.pk, actor="operator:ops")
    assert_problem(client.get(path_of(link)), 410, "RECONNECT_LINK_REVOKED")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("B" if t[-1] == "A" else "A"),
        lambda t: t[:-5],
        lambda t: t + "x",
        lambda t: "rvr_" + "A" * 43,
        lambda t: t.upper(),
    ],
)
def test_a_tampered_link_shows_the_invalid_page(client, owner_case, issue_link, mangle):
    oc = owner_case()
    _, token = issue_link(oc)
    assert_problem(client.get(f"/reconnect/l/{mangle(token)}"), 404, "RECONNECT_LINK_INVALID")
    assert oc.request.state == ReconnectRequest.State.ACTIVE


@pytest.mark.parametrize(
    "path",
    [
        "/reconnect/r/not-a-uuid/",
        "/reconnect/r/00000000-0000-0000-0000-000000000000/",
        "/reconnect/l/",
        "/reconnect/nothing-here",
    ],
)
def test_unknown_pages_are_a_404_with_a_code(client, path):
    assert_problem(client.get(path), 404, "RECONNECT_LINK_INVALID")


def test_wrong_methods_are_a_405_with_a_code(client, owner_case, issue_link):
    oc = owner_case()
    link, _ = issue_link(oc)
    response = client.post(path_of(link))
    assert_problem(response, 405, "METHOD_NOT_ALLOWED")
    assert response["Allow"] == "GET"
    public_id = open_link(client, link)
    assert_problem(client.get(f"/reconnect/r/{public_id}/start"), 405, "METHOD_NOT_ALLOWED")


def test_the_start_form_refuses_a_post_without_csrf(owner_case, issue_link):
    client = Client(enforce_csrf_checks=True)
    oc = owner_case()
    link, _ = issue_link(oc)
    public_id = open_link(client, link)
    response = client.post(f"/reconnect/r/{public_id}/start", {})
    assert_problem(response, 403, "CSRF_FAILED")
    response = client.post(f"/reconnect/r/{public_id}/start", {"csrfmiddlewaretoken": "forged" * 10})
    assert_problem(response, 403, "CSRF_FAILED")
    assert not AuditEvent.objects.filter(action="reconnect.sign_in_started").exists()


@pytest.mark.parametrize(
    "next_url",
    [
        "https://evil.example/phish",
        "//evil.example/",
        "///evil.example",
        "http:evil.example",
        "javascript:alert(1)",
        "https://testserver.evil.example/",
        "https://evil.example@testserver/",
        "/\\evil.example",
        "\\\\evil.example",
        "https://evil.example/%0d%0aSet-Cookie:x=1",
    ],
)
def test_an_open_redirect_next_on_the_link_is_refused(client, owner_case, issue_link, next_url):
    oc = owner_case()
    link, _ = issue_link(oc)
    response = client.get(path_of(link), {"next": next_url})
    assert_problem(response, 400, "RECONNECT_NEXT_NOT_ALLOWED")
    assert next_url not in response.content.decode()


def test_an_open_redirect_next_on_the_start_form_is_refused(client, owner_case, issue_link):
    oc = owner_case()
    link, _ = issue_link(oc)
    public_id = open_link(client, link)
    response = client.post(f"/reconnect/r/{public_id}/start", {"next": "https://evil.example/"})
    assert_problem(response, 400, "RECONNECT_NEXT_NOT_ALLOWED")
    assert not AuditEvent.objects.filter(action="reconnect.sign_in_started").exists()


def test_an_allowed_next_is_kept(client, owner_case, issue_link, settings):
    settings.REVIVE_RECONNECT_REDIRECT_HOSTS = ["app.example.com"]
    oc = owner_case()
    link, _ = issue_link(oc)
    open_link(client, link, next="https://app.example.com/settings/connections")
    grants = client.session["revive_reconnect"]["grants"]
    assert grants[str(oc.request.public_id)]["next"] == "https://app.example.com/settings/connections"


def test_the_done_page_needs_a_completed_reconnect(client, owner_case, issue_link):
    oc = owner_case()
    link, _ = issue_link(oc)
    public_id = open_link(client, link)
    assert_problem(client.get(f"/reconnect/r/{public_id}/done"), 409, "RECONNECT_NOT_COMPLETED")


def test_the_refused_page_without_a_refusal_goes_back_to_the_landing(client, owner_case, issue_link):
    oc = owner_case()
    link, _ = issue_link(oc)
    public_id = open_link(client, link)
    response = client.get(f"/reconnect/r/{public_id}/refused")
    assert response.status_code == 302 and response["Location"] == f"/reconnect/r/{public_id}/"


def test_a_provider_without_sign_in_configured(client, owner_case, issue_link, settings):
    settings.SOCIALACCOUNT_PROVIDERS = {}
    oc = owner_case()
    link, _ = issue_link(oc)
    public_id = open_link(client, link)
    landing = client.get(f"/reconnect/r/{public_id}/").content.decode()
    assert "not set up" in landing and "<button" not in landing
    assert_problem(client.post(f"/reconnect/r/{public_id}/start"), 503, "RECONNECT_PROVIDER_NOT_CONFIGURED")


def test_starting_redirects_to_the_provider_with_pkce_and_state(client, owner_case, issue_link, lab_sign_in):
    oc = owner_case()
    link, _ = issue_link(oc)
    public_id = open_link(client, link)
    response = client.post(f"/reconnect/r/{public_id}/start")
    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert f"{location.scheme}://{location.netloc}" == lab_sign_in.url and location.path == "/identity/o/authorize"
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["client_id"] == lab_sign_in.client_id
    assert query["redirect_uri"] == "http://testserver/accounts/oidc/lab-idp/login/callback/"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) >= 43
    assert len(query["state"]) >= 16
    assert query["login_hint"] == "ada@contoso.example"
    assert set(query["scope"].split()) >= {"openid", "email", "profile"}
    started = AuditEvent.objects.get(action="reconnect.sign_in_started", entity_id=public_id)
    assert started.arguments == {"provider_app": "lab-idp"}


def test_a_callback_with_a_forged_state_changes_nothing(client, owner_case, issue_link, lab_sign_in):
    oc = owner_case()
    link, _ = issue_link(oc)
    public_id = open_link(client, link)
    client.post(f"/reconnect/r/{public_id}/start")
    response = client.get(
        "/accounts/oidc/lab-idp/login/callback/", {"code": "stolen-code", "state": "forged-state-0001"}
    )
    assert_problem(response, 400, "RECONNECT_SIGN_IN_FAILED")
    assert oc.request.state == ReconnectRequest.State.ACTIVE
    assert oc.refresh().connection.current_generation == 1


def test_a_cancelled_sign_in_changes_nothing(client, owner_case, issue_link, lab_sign_in):
    oc = owner_case()
    link, _ = issue_link(oc)
    public_id = open_link(client, link)
    state = parse_qs(urlsplit(client.post(f"/reconnect/r/{public_id}/start")["Location"]).query)["state"][0]
    response = client.get("/accounts/oidc/lab-idp/login/callback/", {"error": "access_denied", "state": state})
    assert_problem(response, 400, "RECONNECT_SIGN_IN_CANCELLED")
    assert f"/reconnect/r/{public_id}/" in response.content.decode()  # back to the landing page
    assert oc.request.state == ReconnectRequest.State.ACTIVE


def test_a_callback_for_an_unknown_provider_app_is_a_404(client):
    response = client.get("/accounts/oidc/nope/login/callback/", {"code": "x", "state": "y"})
    assert response.status_code == 404


def test_allauth_login_and_signup_pages_do_not_exist(client):
    for path in ["/accounts/login/", "/accounts/signup/", "/accounts/oidc/lab-idp/login/", "/accounts/3rdparty/"]:
        assert client.get(path).status_code == 404, path


# --------------------------------------------------------------------------- what differed, and the locked link


def _refuse(client, oc, public_id: str, presented) -> None:
    """A sign-in that proved ``presented``, settled as the adapter does, remembered in this browser's session."""
    from reauth.custody import Grant
    from reauth.services import reconnect_request_complete
    from reauth.views import SESSION_KEY

    done = reconnect_request_complete(
        public_id=public_id, presented=presented, grant=Grant(access_token="at"), actor="owner"
    )
    assert not done.consumed
    session = client.session
    state = session[SESSION_KEY]
    state["refusals"][public_id] = done.refusal_event_id
    session[SESSION_KEY] = state
    session.save()


@pytest.mark.parametrize(
    "provider, expected, presented, differs, says",
    [
        (
            "entra",
            dict(subject="oid-ada", tenant="tid-contoso"),
            dict(subject="oid-mallory", tenant="tid-contoso"),
            "account",
            "That account does not own this connection",
        ),
        (
            "entra",
            dict(subject="oid-ada", tenant="tid-contoso"),
            dict(subject="oid-ada", tenant="tid-fabrikam"),
            "tenant",
            'You signed in to tenant <span class="mono">tid-fabrikam</span>',
        ),
        (
            "auth0",
            dict(subject="auth0|ada", issuer="https://t.example/", org="org_acme"),
            dict(subject="auth0|ada", issuer="https://t.example/", org="org_other"),
            "organization",
            'you signed in to organization <span class="mono">org_other</span>',
        ),
    ],
)
def test_the_refusal_names_what_differed(client, owner_case, issue_link, provider, expected, presented, differs, says):
    from reauth.identity import ProviderIdentity

    oc = owner_case(
        provider=provider,
        subject=expected["subject"],
        tenant=expected.get("tenant", ""),
        issuer=expected.get("issuer", ""),
        org=expected.get("org", ""),
    )
    link, _ = issue_link(oc)
    public_id = open_link(client, link)
    _refuse(client, oc, public_id, ProviderIdentity(label="someone@example.com", **presented))
    response = client.get(f"/reconnect/r/{public_id}/refused")
    assert_problem(response, 403, "RECONNECT_IDENTITY_MISMATCH")
    html = response.content.decode()
    assert f'data-differs="{differs}"' in html and says in html
    if differs == "organization":
        assert "org_acme" in html and "Sign in to organization org_acme" in html
        assert "Sign in with that account" not in html
    assert "Back to the reconnect page" in html  # the landing still works while the link is active


def test_the_locked_page_says_ask_the_operator_and_offers_no_dead_back_link(client, owner_case, issue_link, settings):
    from reauth.identity import ProviderIdentity

    oc = owner_case()
    link, _ = issue_link(oc)
    public_id = open_link(client, link)
    for _ in range(settings.REVIVE_RECONNECT_MAX_REFUSALS):
        _refuse(
            client,
            oc,
            public_id,
            ProviderIdentity(subject="oid-mallory", tenant="3f6b1c2e-8d4a-4f1b-9c7e-2a5d0e9b1c01"),
        )
    for response, status in [
        (client.get(f"/reconnect/r/{public_id}/refused"), 423),
        (client.get(f"/reconnect/r/{public_id}/"), 423),
        (client.get(path_of(link)), 423),
    ]:
        assert_problem(response, status, "RECONNECT_LINK_LOCKED")
        html = response.content.decode()
        assert "Ask the operator for a new link" in html
        assert "Back to the reconnect page" not in html and "<button" not in html
