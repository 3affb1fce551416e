"""The allauth adapters without a provider: what a sign-in proves, and every sign-in that is not a reconnect ending on
our page with nothing stored. Plus the operator's resend and the log redaction."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.socialaccount.providers.base.constants import AuthError
from django.contrib.sessions.middleware import SessionMiddleware
from requests import ConnectionError as RequestsConnectionError

from reauth.adapter import NoSignupAccountAdapter, ReconnectSocialAccountAdapter, grant_from, presented_identity
from reauth.identity import ENTRA, ISSUER_SUBJECT
from reauth.logging import RedactCredentialsFilter, redact_line
from reauth.models import ReconnectRequest
from reauth.providers import SignInApp

pytestmark = pytest.mark.django_db


def sociallogin(provider_id="openid_connect", sub_id="lab-idp", extra=None, state=None, token=None):
    return SimpleNamespace(
        provider=SimpleNamespace(id=provider_id, sub_id=sub_id),
        account=SimpleNamespace(extra_data=extra or {}),
        state=state or {},
        token=token,
    )


def with_session(rf):
    request = rf.get("/accounts/oidc/lab-idp/login/callback/")
    SessionMiddleware(lambda r: None).process_request(request)
    return request


def test_the_verified_id_token_wins_over_userinfo():
    app = SignInApp(provider_id="lab-idp", name="Lab", rule=ENTRA, issuer="", exact=False)
    login = sociallogin(
        extra={
            "userinfo": {"tid": "forged", "oid": "forged", "email": "a@x"},
            "id_token": {"iss": "https://idp", "tid": "T", "oid": "O"},
        }
    )
    identity = presented_identity(login, app)
    assert (identity.tenant, identity.subject, identity.issuer, identity.label) == ("T", "O", "https://idp", "a@x")


def test_auth0_userinfo_gets_the_configured_issuer():
    app = SignInApp(
        provider_id="auth0", name="Auth0", rule=ISSUER_SUBJECT, issuer="https://t.eu.auth0.com/", exact=True
    )
    identity = presented_identity(sociallogin("auth0", "auth0", extra={"sub": "auth0|42", "org_id": "org_1"}), app)
    assert (identity.issuer, identity.subject, identity.org) == ("https://t.eu.auth0.com/", "auth0|42", "org_1")


def test_the_grant_comes_from_allauths_token():
    token = SimpleNamespace(token="at", token_secret="rt", expires_at=None)
    grant = grant_from(sociallogin(token=token))
    assert (grant.access_token, grant.refresh_token) == ("at", "rt")
    assert grant_from(sociallogin()).access_token == ""


@pytest.mark.parametrize(
    "state, code",
    [
        ({}, "RECONNECT_SIGN_IN_FAILED"),
        ({"data": "x"}, "RECONNECT_SIGN_IN_FAILED"),
        ({"data": {"reauth_request": "00000000-0000-0000-0000-000000000000"}}, "RECONNECT_LINK_INVALID"),
        ({"data": {"reauth_request": "not-a-uuid"}}, "RECONNECT_LINK_INVALID"),
    ],
)
def test_a_sign_in_that_is_not_a_reconnect_ends_on_our_page(rf, state, code):
    with pytest.raises(ImmediateHttpResponse) as stopped:
        ReconnectSocialAccountAdapter().pre_social_login(with_session(rf), sociallogin(state=state))
    assert stopped.value.response["X-Revive-Code"] == code


def test_a_sign_in_from_a_session_that_never_opened_the_link(rf, owner_case):
    oc = owner_case()
    state = {"data": {"reauth_request": str(oc.request.public_id), "app": "lab-idp"}}
    with pytest.raises(ImmediateHttpResponse) as stopped:
        ReconnectSocialAccountAdapter().pre_social_login(with_session(rf), sociallogin(state=state))
    assert stopped.value.response["X-Revive-Code"] == "RECONNECT_SESSION_REQUIRED"
    assert oc.request.state == ReconnectRequest.State.ACTIVE


@pytest.mark.parametrize(
    "error, exception, state, code, status",
    [
        (AuthError.CANCELLED, None, {"data": {}}, "RECONNECT_SIGN_IN_CANCELLED", 400),
        (AuthError.UNKNOWN, RequestsConnectionError("refused"), {"data": {}}, "RECONNECT_PROVIDER_UNREACHABLE", 502),
        (AuthError.UNKNOWN, None, None, "RECONNECT_SIGN_IN_FAILED", 400),
        (AuthError.UNKNOWN, ValueError("bad id token"), {"data": {}}, "RECONNECT_SIGN_IN_FAILED", 400),
    ],
)
def test_authentication_errors_end_on_our_page(rf, error, exception, state, code, status):
    with pytest.raises(ImmediateHttpResponse) as stopped:
        ReconnectSocialAccountAdapter().on_authentication_error(
            with_session(rf),
            provider=None,
            error=error,
            exception=exception,
            extra_context={"state": state} if state is not None else {},
        )
    assert (stopped.value.response.status_code, stopped.value.response["X-Revive-Code"]) == (status, code)


def test_nobody_signs_up(rf):
    assert ReconnectSocialAccountAdapter().is_open_for_signup(rf.get("/"), sociallogin()) is False
    assert NoSignupAccountAdapter().is_open_for_signup(rf.get("/")) is False


def test_the_operator_resends_from_the_admin(
    admin_client, owner_case, issue_link, mailoutbox, django_capture_on_commit_callbacks
):
    oc = owner_case()
    issue_link(oc)
    old = oc.request
    page = admin_client.get("/admin/reauth/reconnectrequest/")
    assert page.status_code == 200 and oc.case.reference in page.content.decode()
    detail = admin_client.get(f"/admin/reauth/reconnectrequest/{old.pk}/change/").content.decode()
    assert old.token_hash not in detail
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/reauth/reconnectrequest/", {"action": "resend_link", "_selected_action": [old.pk]}
        )
    assert response.status_code == 302
    old.refresh_from_db()
    assert old.state == ReconnectRequest.State.REVOKED and old.replaced_by is not None
    assert len(mailoutbox) == 2 and mailoutbox[-1].to == ["ada@contoso.example"]
    assert admin_client.get("/admin/reauth/custodygrant/").status_code == 404


@pytest.mark.parametrize(
    "line, expected",
    [
        (
            '"GET /reconnect/l/rvr_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG HTTP/1.1" 302 0',
            '"GET /reconnect/l/[redacted] HTTP/1.1" 302 0',
        ),
        (
            "GET /accounts/oidc/lab-idp/login/callback/?code=abc123&state=xyz HTTP/1.1",
            "GET /accounts/oidc/lab-idp/login/callback/?code=[redacted]&state=[redacted] HTTP/1.1",
        ),
        ("/cb?token=secret1&refresh_token=secret2", "/cb?token=[redacted]&refresh_token=[redacted]"),
        ("link rvr_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG sent", "link rvr_[redacted] sent"),
        ("nothing to hide", "nothing to hide"),
    ],
)
def test_log_lines_lose_link_tokens_and_codes(line, expected):
    assert redact_line(line) == expected


def test_the_filter_rewrites_records():
    record = logging.LogRecord(
        "django.server", logging.INFO, __file__, 1, '"%s" %s', ("GET /reconnect/l/rvr_secret HTTP/1.1", 302), None
    )
    RedactCredentialsFilter().filter(record)
    assert record.getMessage() == '"GET /reconnect/l/[redacted] HTTP/1.1" 302'
